//! The public JSON shapes of the HTTP API: a thread with its messages. The message object of
//! `POST /chat/message/` and of websocket frames is [`crate::MessagePosted`] itself.

use crate::{MessageBody, Timestamp, UserJson};
use serde::Serialize;
use uuid::Uuid;

/// A thread as `POST /chat/thread/` and `GET /chat/thread/:id/` answer it.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadView {
    pub id: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
    pub messages: Vec<MessageView>,
}

/// A message inside a [`ThreadView`]: the public message without its `thread`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
    pub body: MessageBody,
    pub send_by_user: bool,
}
