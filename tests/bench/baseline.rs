//! The baselines of the HTTP benchmark (`scripts/bench`): the least a server can do for each
//! of the API's paths, on the same stack as the API (axum, async-nats, sqlx, tokio's default
//! runtime: one worker per CPU, as `threadline api` has). No validation, no middleware, no
//! caching.
//!
//! - `publish`: `POST /chat/message/` is one JetStream publish-with-ack of the request body,
//!   with a fresh `Nats-Msg-Id` (as every event of the API carries), on one thread's message
//!   subject of a stream set up as the API's own (`JetStreamLog::connect` with this
//!   process's `STREAM_NAME` and `SUBJECT_PREFIX`); 201 with the stream sequence.
//! - `query`: `GET /chat/thread/:id/` is one PostgreSQL query that reads the thread and its
//!   messages from threadline's read model (the tables the API reads); 200 with the rows as
//!   JSON, 404 when the thread has no row.
//!
//! Both answer `GET /readyz` with 200 once connected.

use async_nats::HeaderMap;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_postgres::{DatabaseSettings, PgReadModel};
use uuid::Uuid;

/// A baseline server for the HTTP benchmark: one JetStream publish or one PostgreSQL query
/// per request.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8100")]
    listen_addr: SocketAddr,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// POST /chat/message/: one JetStream publish-with-ack of the body.
    Publish(Box<NatsSettings>),
    /// GET /chat/thread/:id/: one PostgreSQL query for the thread and its messages.
    Query(Box<DatabaseSettings>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = match args.mode {
        Mode::Publish(settings) => {
            let log = JetStreamLog::connect(&settings).await?;
            let subject = log.subjects().message_posted(Uuid::new_v4());
            Router::new()
                .route("/chat/message/", post(publish))
                .with_state(Arc::new(Publisher { log, subject }))
        }
        Mode::Query(settings) => {
            let read = PgReadModel::connect(&settings).await?;
            Router::new()
                .route("/chat/thread/{id}/", get(query))
                .with_state(read.pool().clone())
        }
    };
    let app = app.route("/readyz", get(|| async { "ready" }));
    let listener = tokio::net::TcpListener::bind(args.listen_addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

struct Publisher {
    log: JetStreamLog,
    subject: String,
}

async fn publish(State(publisher): State<Arc<Publisher>>, body: Bytes) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        proto_events::headers::MSG_ID,
        Uuid::new_v4().to_string().as_str(),
    );
    let stored = match publisher
        .log
        .jetstream()
        .publish_with_headers(publisher.subject.clone(), headers, body)
        .await
    {
        Ok(ack) => ack.await,
        Err(e) => return unavailable(e),
    };
    match stored {
        Ok(ack) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "sequence": ack.sequence })),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

#[derive(Serialize)]
struct Thread {
    id: Uuid,
    user: Box<RawValue>,
    timestamp: String,
    messages: Vec<Message>,
}

#[derive(Serialize)]
struct Message {
    id: Uuid,
    user: Box<RawValue>,
    timestamp: String,
    body: String,
    send_by_user: bool,
}

type Row = (
    String,
    DateTime<Utc>,
    Option<Uuid>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<bool>,
);

async fn query(State(pool): State<PgPool>, Path(id): Path<Uuid>) -> Response {
    let rows: Vec<Row> = match sqlx::query_as(
        "SELECT t.user_json, t.created_at, m.id, m.user_json, m.created_at, m.body, \
         m.send_by_user \
         FROM threads t LEFT JOIN messages m ON m.thread_id = t.id \
         WHERE t.id = $1 ORDER BY m.stream_seq",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) => return unavailable(e),
    };
    match thread_of(id, rows) {
        Ok(Some(thread)) => Json(thread).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => unavailable(e),
    }
}

/// The thread of the joined rows (one per message, or one with no message), if any.
fn thread_of(id: Uuid, rows: Vec<Row>) -> Result<Option<Thread>, serde_json::Error> {
    let mut rows = rows.into_iter().peekable();
    let Some((user, created_at, ..)) = rows.peek() else {
        return Ok(None);
    };
    let mut thread = Thread {
        id,
        user: RawValue::from_string(user.clone())?,
        timestamp: rfc3339(created_at),
        messages: Vec::with_capacity(rows.len()),
    };
    for (.., id, user, at, body, send_by_user) in rows {
        if let (Some(id), Some(user), Some(at), Some(body), Some(send_by_user)) =
            (id, user, at, body, send_by_user)
        {
            thread.messages.push(Message {
                id,
                user: RawValue::from_string(user)?,
                timestamp: rfc3339(&at),
                body,
                send_by_user,
            });
        }
    }
    Ok(Some(thread))
}

fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    eprintln!("baseline: {e}");
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}
