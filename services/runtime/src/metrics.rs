//! Prometheus metrics: the recorder every role installs once, `GET /metrics` that renders it,
//! one tower layer that counts and times HTTP requests by route and status, and the names of
//! the domain's metrics, so that every crate records under the one name the dashboard reads.
//!
//! The services record through the `metrics` facade (`metrics::counter!(names::X)`), which
//! costs nothing where no recorder is installed (unit tests).
//!
//! Every label takes a small fixed set of values, never one a client chooses (a made-up HTTP
//! method is `other`), so that no request adds a series. Each role registers its series at
//! start ([`register`]) with zero values, so that a scrape of a fresh process lists every
//! family the dashboard reads, and `absent()` alerts and panels see the role from the start.

use axum::extract::{MatchedPath, Request};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The names of threadline's metrics (Prometheus adds `_bucket`, `_sum`, `_count` to
/// histograms).
pub mod names {
    /// Counter: HTTP requests answered, by `method`, `route` and `status`.
    pub const HTTP_REQUESTS: &str = "threadline_http_requests_total";
    /// Histogram: seconds from request to response head, by `method`, `route` and `status`.
    pub const HTTP_DURATION: &str = "threadline_http_request_duration_seconds";
    /// Gauge: client connections open in this process (websockets included), on every
    /// listener.
    pub const CONNECTIONS_OPEN: &str = "threadline_http_connections_open";
    /// Counter: connections closed as soon as they were accepted, by `reason`:
    /// `max_connections` (`MAX_CONNECTIONS`) or `max_connections_per_ip`.
    pub const CONNECTIONS_REFUSED: &str = "threadline_http_connections_refused_total";
    /// Counter: connections closed by a timeout, by `timeout`: `header`
    /// (`HTTP_HEADER_TIMEOUT`), `idle` (`HTTP_IDLE_TIMEOUT`) or `request`
    /// (`HTTP_REQUEST_TIMEOUT`, answered 408).
    pub const CONNECTIONS_TIMED_OUT: &str = "threadline_http_connections_timed_out_total";
    /// Counter: threads answered by `GET /chat/thread/:id/`, by where the body came `from`:
    /// `memory` (kept by the API, see `HOT_THREADS_BYTES`) or `read_model`.
    pub const THREAD_READS: &str = "threadline_api_thread_reads_total";
    /// Histogram: seconds an append to JetStream took until stored, by `event` and `outcome`
    /// (recorded where the append is, in the NATS adapter).
    pub use threadline_nats::event_log::APPEND_DURATION;
    /// Gauge: events in the stream the projector has not yet been handed.
    pub const PROJECTOR_LAG_EVENTS: &str = "threadline_projector_lag_events";
    /// Gauge: age in seconds of the newest event of the last applied batch, when applied.
    pub const PROJECTOR_LAG_SECONDS: &str = "threadline_projector_lag_seconds";
    /// Histogram: events per applied batch.
    pub const PROJECTOR_BATCH_SIZE: &str = "threadline_projector_batch_size";
    /// Counter: events applied to the read model.
    pub const PROJECTOR_EVENTS: &str = "threadline_projector_events_total";
    /// Counter: invalid events set aside on the dead-letter stream, by `reason`.
    pub const SET_ASIDE: &str = "threadline_events_set_aside_total";
    /// Gauge: websockets open on this gateway.
    pub const SOCKETS_OPEN: &str = "threadline_gateway_sockets_open";
    /// Gauge: threads this gateway is subscribed to.
    pub const THREADS_WATCHED: &str = "threadline_gateway_threads_watched";
    /// Counter: message frames sent to websockets.
    pub const FRAMES_SENT: &str = "threadline_gateway_frames_sent_total";
    /// Counter: websockets closed because their client fell behind or stalled (1013).
    pub const SLOW_CLIENT_CLOSES: &str = "threadline_gateway_slow_client_closes_total";
}

/// Latency buckets in seconds, from a fast local append to a timed-out request.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// The process's recorder, installed on first use. `None` if another recorder was installed
/// first (then `/metrics` answers 503).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::PROJECTOR_BATCH_SIZE.into()),
                        BATCH_BUCKETS,
                    )
                })
                .map_err(|e| e.to_string())
                .and_then(|b| b.install_recorder().map_err(|e| e.to_string()));
            match installed {
                Ok(handle) => {
                    spawn_upkeep(handle.clone());
                    Some(handle)
                }
                Err(e) => {
                    tracing::error!("cannot install the metrics recorder: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Drains the histograms' samples now and then, so that they stay bounded between scrapes.
fn spawn_upkeep(handle: PrometheusHandle) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
}

/// `GET /metrics`: every metric of this process in Prometheus' text format.
pub async fn render() -> Response {
    match handle() {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The `method` label: one of a fixed few, so that a client's made-up method names (which
/// the server accepts and answers 405 or 404) add no series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: counts and times every request by method, matched route (not the raw path,
/// which holds ids) and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(names::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(names::HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// Registers each role's series with zero values, so that they are listed from the first
/// scrape. Call once the recorder is installed ([`handle`]; `startup` does it).
pub mod register {
    use super::names;
    use proto_events::{EventError, EventKind};

    /// The HTTP families: a request that every role answers (its probes and its scrapes),
    /// and the connections.
    pub fn http() {
        for route in ["/healthz", "/readyz", "/metrics"] {
            let labels = [("method", "GET"), ("route", route), ("status", "200")];
            metrics::counter!(names::HTTP_REQUESTS, &labels).increment(0);
            // Registered: listed with empty buckets until the first sample.
            let _ = metrics::histogram!(names::HTTP_DURATION, &labels);
        }
        metrics::gauge!(names::CONNECTIONS_OPEN).increment(0.0);
        for reason in crate::limits::Refusal::REASONS {
            metrics::counter!(names::CONNECTIONS_REFUSED, "reason" => reason).increment(0);
        }
        for timeout in ["header", "idle", "request"] {
            metrics::counter!(names::CONNECTIONS_TIMED_OUT, "timeout" => timeout).increment(0);
        }
    }

    /// The api's families: thread reads by source, appends by event and outcome.
    pub fn api() {
        for from in ["memory", "read_model"] {
            metrics::counter!(names::THREAD_READS, "from" => from).increment(0);
        }
        for event in [EventKind::ThreadCreated, EventKind::MessagePosted] {
            for outcome in ["stored", "failed"] {
                // Registered: listed with empty buckets until the first sample.
                let _ = metrics::histogram!(
                    names::APPEND_DURATION,
                    "event" => event.name(),
                    "outcome" => outcome
                );
            }
        }
    }

    /// The projector's families: lag, batches, events applied and set aside by reason.
    pub fn projector() {
        metrics::gauge!(names::PROJECTOR_LAG_EVENTS).increment(0.0);
        metrics::gauge!(names::PROJECTOR_LAG_SECONDS).increment(0.0);
        // Registered: listed with empty buckets until the first sample.
        let _ = metrics::histogram!(names::PROJECTOR_BATCH_SIZE);
        metrics::counter!(names::PROJECTOR_EVENTS).increment(0);
        for reason in EventError::CODES {
            metrics::counter!(names::SET_ASIDE, "reason" => reason).increment(0);
        }
    }

    /// The gateway's families: sockets, watched threads, frames and slow clients.
    pub fn gateway() {
        metrics::gauge!(names::SOCKETS_OPEN).increment(0.0);
        metrics::gauge!(names::THREADS_WATCHED).increment(0.0);
        metrics::counter!(names::FRAMES_SENT).increment(0);
        metrics::counter!(names::SLOW_CLIENT_CLOSES).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        for (method, label) in [
            (Method::GET, "GET"),
            (Method::POST, "POST"),
            (Method::HEAD, "HEAD"),
            (Method::OPTIONS, "OPTIONS"),
            (Method::PUT, "other"),
            (Method::DELETE, "other"),
        ] {
            assert_eq!(method_label(&method), label);
        }
        for name in ["M0001X", "get", "BREW"] {
            let method = Method::from_bytes(name.as_bytes()).expect("a method");
            assert_eq!(method_label(&method), "other", "{name}");
        }
    }
}
