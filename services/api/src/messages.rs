//! `POST /chat/message/`.

use crate::error::{ApiError, FieldErrors};
use crate::idempotency::Key;
use crate::{fields, request, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use proto_events::{new_id, Event, MessagePosted, Timestamp};
use serde_json::Value;

/// Posts a message: checks every field (and that the thread exists, from the log), appends
/// `MessagePosted` and answers with its payload once the log has stored it.
#[tracing::instrument(skip_all)]
pub async fn post_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = Key::from_headers(&headers, "message")?;
    let request = request::json_object(&headers, body, state.settings.max_body_bytes).await?;
    let data = &request.object;
    let user = fields::user(data);
    let body = fields::body(data);
    let send_by_user = fields::send_by_user(data);
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
