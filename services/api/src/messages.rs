//! `POST /chat/message/`.

use crate::error::{ApiError, FieldErrors};
use crate::idempotency::Key;
use crate::{agent, fields, request, AppState};
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use proto_events::{new_id, Event, MessagePosted, Timestamp};
use serde_json::Value;
use threadline_runtime::client::Client;
use uuid::Uuid;

/// Posts a message: checks every field (and that the thread exists, from the log), appends
/// `MessagePosted` and answers with its payload once the log has stored it.
///
/// The checks, in order (docs/behaviour.md, "Protecting the API"): the client's rate (429),
/// before the body is read; the `Idempotency-Key` header; the body (413, 415, 400); the agent
/// token for an agent's message (403); every field (400); the thread's most messages (400).
#[tracing::instrument(skip_all)]
pub async fn post_message(
    State(state): State<AppState>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state
        .throttles
        .message_posted(client.as_ref().map(|c| &c.0))?;
    let key = Key::from_headers(&headers, "message")?;
    let request = request::json_object(&headers, body, state.settings.max_body_bytes).await?;
    let data = &request.object;
    let send_by_user = fields::send_by_user(data);
    if let (Ok(false), Some(token)) = (&send_by_user, state.settings.agent_token()) {
        if !agent::is_authorized(token, &headers) {
            return Err(ApiError::PermissionDenied);
        }
    }
    let user = fields::user(data);
    let body = fields::body(data);
    let thread = match fields::thread(data) {
        Ok(thread) if state.log.thread_exists(thread.id).await? => Ok(thread.id),
        Ok(thread) => Err(thread.does_not_exist()),
        Err(message) => Err(message),
    };
    let (user, body, send_by_user, thread) = match (user, body, send_by_user, thread) {
        (Ok(user), Ok(body), Ok(send_by_user), Ok(thread)) => (user, body, send_by_user, thread),
        (user, body, send_by_user, thread) => {
            let mut errors = FieldErrors::new();
            let mut report = |field: &str, error: Option<String>| {
                if let Some(message) = error {
                    errors.insert(field.into(), Value::from(vec![message]));
                }
            };
            report("user", user.err().map(str::to_owned));
            report("body", body.err().map(str::to_owned));
            report("send_by_user", send_by_user.err().map(str::to_owned));
            report("thread", thread.err());
            return Err(ApiError::Fields(errors));
        }
    };
    within_most_messages(&state, thread, key.as_ref()).await?;
    let message = MessagePosted {
        id: new_id(),
        user,
        timestamp: Timestamp::now(),
        body,
        send_by_user,
        thread,
    };
    let encoded = Event::MessagePosted(message).encode();
    // The 201's body is the event's payload.
    let mut response = encoded.payload().clone();
    let (encoded, sequence) =
        crate::idempotency::append_once(&state, key.as_ref(), &request.raw, encoded, &mut response)
            .await?;
    tracing::info!(message_id = %encoded.event().id(), thread_id = %thread, sequence, "message posted");
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        response,
    )
        .into_response())
}

/// `THREAD_MAX_MESSAGES`: refuses a message to a thread whose messages in the log number the
/// bound already, as a serializer's `validate()` would, keyed on `thread`. A request under an
/// `Idempotency-Key` that holds a record is not refused: it is the retry of a request that
/// passed this check before it was recorded, and it gets the same answer as that one (or
/// DRF's 422 for a key reused with another body, as without the bound). The log is asked
/// nothing when the bound is 0.
async fn within_most_messages(
    state: &AppState,
    thread: Uuid,
    key: Option<&Key>,
) -> Result<(), ApiError> {
    let most = state.settings.thread_max_messages;
    if most == 0 || state.log.thread_message_count(thread).await? < most {
        return Ok(());
    }
    if let Some(key) = key {
        if state.idempotency.recorded(key).await? {
            return Ok(());
        }
    }
    let mut errors = FieldErrors::new();
    errors.insert(
        "thread".into(),
        Value::from(vec![fields::thread_full(most)]),
    );
    Err(ApiError::Fields(errors))
}
