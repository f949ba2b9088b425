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
use threadline_ports::{report, ThreadRead};
use threadline_runtime::metrics::names;
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
/// the thread; a long thread is streamed. A thread read before is answered from memory while
/// the log holds no newer event of it (see [`hot`](crate::hot)).
#[tracing::instrument(skip(state))]
pub async fn get_thread(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::NotFound)?;
    // Before any read: a body read in an epoch that has ended since is not kept.
    let epoch = state.hot.epoch();
    let mut last = None;
    if let Some(kept) = state.hot.get(id) {
        match state.log.thread_last_sequence(id).await {
            Ok(Some(sequence)) if sequence <= kept.through => {
                metrics::counter!(names::THREAD_READS, "from" => "memory").increment(1);
                return Ok(json(kept.body));
            }
            Ok(found) => last = Some(found),
            Err(e) => tracing::warn!("cannot ask the event log ({})", report(&e)),
        }
    }
    // The sequence through which the read model holds the thread's events, once it does.
    let through = match last {
        Some(None) => return Err(ApiError::NotFound),
        Some(Some(sequence)) => wait_until_applied(&state, sequence).await,
        None => match state.log.applied_everything().await {
            Ok(Some(head)) => Some(head),
            Ok(None) => match state.log.thread_last_sequence(id).await {
                Ok(None) => return Err(ApiError::NotFound),
                Ok(Some(sequence)) => wait_until_applied(&state, sequence).await,
                Err(e) => {
                    tracing::warn!(
                        "cannot ask the event log ({}); answering from the read model as it is",
                        report(&e)
                    );
                    None
                }
            },
            Err(e) => {
                tracing::warn!(
                    "cannot ask the event log ({}); answering from the read model as it is",
                    report(&e)
                );
                None
            }
        },
    };
    let read = state.read.thread(id).await?;
    metrics::counter!(names::THREAD_READS, "from" => "read_model").increment(1);
    match read {
        Some(ThreadRead::Whole(thread)) => {
            if let Some(through) = through {
                state.hot.keep(id, through, epoch, &thread);
            }
            Ok(json(thread))
        }
        Some(ThreadRead::Streamed(pages)) => Ok((
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(pages),
        )
            .into_response()),
        None if through.is_some() => Err(ApiError::NotFound),
        None => Err(ApiError::ReadModelBehind),
    }
}

fn json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Waits, up to the configured bound, until the projector has applied `sequence`; `sequence`
/// if it has.
async fn wait_until_applied(state: &AppState, sequence: u64) -> Option<u64> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match state.log.applied_through(sequence).await {
            Ok(applied) if applied >= sequence => return Some(sequence),
            Ok(_) => {}
            Err(e) => tracing::debug!("projector progress unknown: {}", report(&e)),
        }
        if started.elapsed() >= state.settings.read_your_writes_timeout {
            tracing::warn!(
                sequence,
                "the read model has not applied this thread's events within {:?}",
                state.settings.read_your_writes_timeout
            );
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}
