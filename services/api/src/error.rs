//! The API's errors and their answers: DRF-style JSON bodies, one place for every status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use threadline_ports::{report, StoreError};

/// Errors per field, in the order DRF reports them: `{"<field>": ["<message>", ...]}`.
pub type FieldErrors = Map<String, Value>;

/// What an overloaded API asks clients to wait before they retry.
const RETRY_AFTER_SECONDS: &str = "1";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid fields")]
    Fields(FieldErrors),
    #[error("{0}")]
    NonField(String),
    #[error("JSON parse error - {0}")]
    JsonParse(String),
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the read model has not caught up with the event log")]
    ReadModelBehind,
    #[error("the Idempotency-Key header is empty, too long or not text")]
    BadIdempotencyKey,
    #[error("the Idempotency-Key was used for a request with another body")]
    IdempotencyKeyReused,
    /// Over a rate limit (`RATE_LIMIT_THREADS`, `RATE_LIMIT_MESSAGES`): 429, told to wait
    /// this long.
    #[error("throttled: expected available in {0:?}")]
    Throttled(std::time::Duration),
    /// An agent's message without the agent token (`AGENT_TOKEN`): 403.
    #[error("an agent's message without the agent token")]
    PermissionDenied,
    /// A fault of this service's own (a record it cannot read back): 500, logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::Fields(errors) => (StatusCode::BAD_REQUEST, Value::Object(errors.clone())),
            ApiError::NonField(message) => (
                StatusCode::BAD_REQUEST,
                json!({"non_field_errors": [message]}),
            ),
            ApiError::JsonParse(_) => {
                (StatusCode::BAD_REQUEST, json!({"detail": self.to_string()}))
            }
            ApiError::UnsupportedMediaType(media_type) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"detail": format!("Unsupported media type \"{media_type}\" in request.")}),
            ),
            ApiError::BodyTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"detail": format!("Request body exceeded the limit of {limit} bytes.")}),
            ),
            ApiError::Store(StoreError::TooLarge { max, .. }) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"detail": format!("Request body exceeded the event log's limit of {max} bytes per event.")}),
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                json!({"detail": threadline_runtime::server::NOT_FOUND_DETAIL}),
            ),
            ApiError::Store(StoreError::Overloaded { .. }) => {
                tracing::warn!("answering 503 (overloaded): {}", report(&self));
                let body = json!({"detail": "Service temporarily unavailable, try again later."});
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECONDS)],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Store(cause) => {
                tracing::error!("answering 503: {}", report(cause));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"detail": "Service temporarily unavailable, try again later."}),
                )
            }
            ApiError::BadIdempotencyKey => (
                StatusCode::BAD_REQUEST,
                json!({"detail": "The Idempotency-Key header must be 1 to 255 characters of text."}),
            ),
            ApiError::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"detail": "This Idempotency-Key was already used for a request with a different body."}),
            ),
            ApiError::Throttled(wait) => {
                // DRF's `Throttled`: the wait rounded up to whole seconds, in the detail and
                // in Retry-After (which DRF leaves out for a wait of 0).
                let seconds = crate::throttle::whole_seconds(*wait);
                let body = json!({"detail": crate::throttle::throttled_detail(seconds)});
                if seconds == 0 {
                    return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                }
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, seconds.to_string())],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::PermissionDenied => (
                StatusCode::FORBIDDEN,
                json!({"detail": "You do not have permission to perform this action."}),
            ),
            ApiError::Internal(cause) => {
                tracing::error!("answering 500: {cause}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"detail": "A server error occurred."}),
                )
            }
            ApiError::ReadModelBehind => {
                tracing::warn!("answering 503: {self}");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"detail": "Service temporarily unavailable, try again later."}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
