//! The public JSON shapes of the HTTP API: a thread with its messages. The message object of
//! `POST /chat/message/` and of websocket frames is [`crate::MessagePosted`] itself.

use crate::{MessageBody, Timestamp, UserJson};
use serde::{Serialize, Serializer};
use uuid::Uuid;

/// A thread as `POST /chat/thread/` and `GET /chat/thread/:id/` answer it.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadView {
    pub id: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
    pub messages: Vec<MessageView>,
}

/// A message inside a [`ThreadView`]: the public message without its `thread`. Its JSON is
/// [`MessageJson`]'s.
#[derive(Debug, Clone)]
pub struct MessageView {
    pub id: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
    pub body: MessageBody,
    pub send_by_user: bool,
}

impl Serialize for MessageView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MessageJson {
            id: &self.id,
            user: &self.user,
            timestamp: &self.timestamp,
            body: &self.body,
            send_by_user: self.send_by_user,
        }
        .serialize(serializer)
    }
}

/// The JSON of a message inside a thread, written from borrowed parts: the one field list of
/// that shape. The projector stores it with each message, so that a read copies it.
#[derive(Debug, Serialize)]
pub struct MessageJson<'a> {
    pub id: &'a Uuid,
    pub user: &'a UserJson,
    pub timestamp: &'a Timestamp,
    pub body: &'a MessageBody,
    pub send_by_user: bool,
}

impl MessageJson<'_> {
    /// The JSON text; `None` only if serde_json refused it, which these fields never make it
    /// do (a reader then renders the message from its columns).
    pub fn text(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}
