//! `POST /chat/thread/` and `GET /chat/thread/:id/`.

use crate::error::{ApiError, FieldErrors};
use crate::idempotency::Key;
use crate::{fields, request, AppState};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use proto_events::{new_id, Event, ThreadCreated, ThreadView, Timestamp};
use serde_json::Value;
use std::time::{Duration, Instant};
use threadline_infra::read_model::ThreadRead;
use uuid::Uuid;

/// Opens a thread: appends `ThreadCreated` and answers once the log has stored it.
#[tracing::instrument(skip_all)]
pub async fn create_thread(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = Key::from_headers(&headers, "thread")?;
    let request = request::json_object(&headers, body, state.settings.max_body_bytes).await?;
    let user = fields::user(&request.object).map_err(|message| {
        let mut errors = FieldErrors::new();
        errors.insert("user".into(), Value::from(vec![message]));
        ApiError::Fields(errors)
    })?;
    let created = ThreadCreated {
        id: new_id(),
        user,
        timestamp: Timestamp::now(),
    };
    let view = ThreadView {
        id: created.id,
        user: created.user.clone(),
        timestamp: created.timestamp,
        messages: Vec::new(),
    };
    let encoded = Event::ThreadCreated(created).encode();
    let mut response = Bytes::from(serde_json::to_vec(&view).map_err(ApiError::internal)?);
    let (encoded, sequence) =
        crate::idempotency::append_once(&state, key.as_ref(), &request.raw, encoded, &mut response)
            .await?;
    tracing::info!(thread_id = %encoded.event().thread(), sequence, "thread created");
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        response,
    )
        .into_response())
}

/// Answers a thread with its messages from the read model, once the read model has applied
/// every event of that thread that the log held when the request came (read-your-writes).
/// When the projector has applied everything the log held, that is known without asking about
/// the thread; a long thread is streamed.
#[tracing::instrument(skip(state))]
pub async fn get_thread(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::NotFound)?;
    let caught_up = match state.log.applied_everything().await {
        Ok(true) => true,
        Ok(false) => match state.log.thread_last_sequence(id).await {
            Ok(None) => return Err(ApiError::NotFound),
            Ok(Some(sequence)) => wait_until_applied(&state, sequence).await,
            Err(e) => {
                tracing::warn!(
                    "cannot ask the event log ({e}); answering from the read model as it is"
                );
                false
            }
        },
        Err(e) => {
            tracing::warn!(
                "cannot ask the event log ({e}); answering from the read model as it is"
            );
            false
        }
    };
    match state.read.thread(id).await? {
        Some(ThreadRead::Whole(thread)) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], thread).into_response())
        }
        Some(ThreadRead::Streamed(pages)) => Ok((
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(pages),
        )
            .into_response()),
        None if caught_up => Err(ApiError::NotFound),
        None => Err(ApiError::ReadModelBehind),
    }
}

/// Waits, up to the configured bound, until the projector has applied `sequence`.
async fn wait_until_applied(state: &AppState, sequence: u64) -> bool {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match state.log.applied_through(sequence).await {
            Ok(applied) if applied >= sequence => return true,
            Ok(_) => {}
            Err(e) => tracing::debug!("projector progress unknown: {e}"),
        }
        if started.elapsed() >= state.settings.read_your_writes_timeout {
            tracing::warn!(
                sequence,
                "the read model has not applied this thread's events within {:?}",
                state.settings.read_your_writes_timeout
            );
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}
