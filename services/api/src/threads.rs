//! `POST /chat/thread/` and `GET /chat/thread/:id/`.

use crate::error::{ApiError, FieldErrors};
use crate::idempotency::Key;
use crate::{fields, request, AppState};
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use proto_events::{new_id, Event, ThreadCreated, ThreadView, Timestamp};
use serde_json::Value;
use std::time::{Duration, Instant};
use threadline_ports::{report, StoreError, ThreadRead};
use threadline_runtime::client::Client;
use threadline_runtime::metrics::names;
use uuid::Uuid;

/// Opens a thread: appends `ThreadCreated` and answers once the log has stored it.
#[tracing::instrument(skip_all)]
pub async fn create_thread(
    State(state): State<AppState>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Before the body is read: a client over its rate costs no more than this.
    state
        .throttles
        .thread_created(client.as_ref().map(|c| &c.0))?;
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
    let in_log = match from_memory(&state, id).await {
        FromMemory::Hit(body) => {
            metrics::counter!(names::THREAD_READS, "from" => "memory").increment(1);
            return Ok(json(body));
        }
        FromMemory::Miss(in_log) => in_log,
    };
    let through = read_your_writes(&state, id, in_log).await?;
    from_read_model(&state, id, through, epoch).await
}

/// What the event log holds of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThreadInLog {
    /// No creation: the thread does not exist.
    NotCreated,
    /// The later of its creation and its latest message is at this stream sequence: once the
    /// read model has applied it, it holds the whole thread as the log held it.
    LastAt(u64),
}

impl From<Option<u64>> for ThreadInLog {
    /// The answer of the log's `thread_last_sequence`.
    fn from(last: Option<u64>) -> Self {
        last.map_or(ThreadInLog::NotCreated, ThreadInLog::LastAt)
    }
}

/// What the threads kept in memory have for a GET.
enum FromMemory {
    /// The body kept: the log holds no event of the thread newer than it.
    Hit(Bytes),
    /// Not kept, or kept but the log holds newer events of it; with what the log holds of the
    /// thread, if it was asked and answered.
    Miss(Option<ThreadInLog>),
}

/// Threads kept in memory: a kept thread is served if the log, asked now, holds no newer
/// event of it.
async fn from_memory(state: &AppState, id: Uuid) -> FromMemory {
    let Some(kept) = state.hot.get(id) else {
        return FromMemory::Miss(None);
    };
    let in_log = state.log.thread_last_sequence(id).await;
    match in_log.map(ThreadInLog::from) {
        Ok(ThreadInLog::LastAt(sequence)) if sequence <= kept.through => FromMemory::Hit(kept.body),
        Ok(in_log) => FromMemory::Miss(Some(in_log)),
        Err(e) => {
            tracing::warn!("cannot ask the event log ({})", report(&e));
            FromMemory::Miss(None)
        }
    }
}

/// Read your writes: waits until the read model holds every event of the thread that the log
/// held when the GET came, and says through which sequence it does; `None` if that is not
/// known (the log does not answer, or the projector is behind past the bound): then the read
/// model is asked as it is. Skips the question about the thread when the projector has
/// applied everything the log holds; a thread the log never created is not found.
async fn read_your_writes(
    state: &AppState,
    id: Uuid,
    in_log: Option<ThreadInLog>,
) -> Result<Option<u64>, ApiError> {
    let in_log = match in_log {
        Some(in_log) => in_log,
        None => match state.log.applied_everything().await {
            Ok(Some(head)) => return Ok(Some(head)),
            Ok(None) => {
                let in_log = state.log.thread_last_sequence(id).await;
                match in_log.map(ThreadInLog::from) {
                    Ok(in_log) => in_log,
                    Err(e) => return Ok(as_it_is(e)),
                }
            }
            Err(e) => return Ok(as_it_is(e)),
        },
    };
    match in_log {
        ThreadInLog::NotCreated => Err(ApiError::NotFound),
        ThreadInLog::LastAt(sequence) => Ok(wait_until_applied(state, sequence).await),
    }
}

/// The log did not answer: the read model is asked as it is.
fn as_it_is(error: StoreError) -> Option<u64> {
    tracing::warn!(
        "cannot ask the event log ({}); answering from the read model as it is",
        report(&error)
    );
    None
}

/// Answers from the read model: a whole thread (kept in memory if the read model is known to
/// hold it `through` a sequence), or a long one streamed. A thread the read model lacks is not
/// found if it is known to be up to date, and otherwise behind (503).
async fn from_read_model(
    state: &AppState,
    id: Uuid,
    through: Option<u64>,
    epoch: u64,
) -> Result<Response, ApiError> {
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
