//! `Idempotency-Key` on both POSTs, as the IETF httpapi draft describes it: a client that
//! retries a request under the same key gets the original 201 response, byte for byte,
//! through any api replica, and the event is stored once; the same key with another body is
//! answered 422.
//!
//! How it maps onto the event log: the first request under a key records, in a key-value
//! bucket shared by the replicas, a fingerprint of its body and the event it built (subject
//! and payload bytes, which hold the event's id and timestamp) before appending it. A retry
//! finds that record and appends the *same* event again: its id is its `Nats-Msg-Id`, so
//! JetStream stores it once within the stream's duplicate window, and past that window the
//! read model and the gateway keep the first copy of a message id. Records expire after
//! `IDEMPOTENCY_WINDOW`; a key reused after that starts a new request.

use crate::error::ApiError;
use crate::AppState;
use axum::http::HeaderMap;
use bytes::Bytes;
use proto_events::{EncodedEvent, Subjects};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use threadline_infra::{IdempotencyStore, StoreError};
use uuid::Uuid;

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// The longest key accepted.
const MAX_KEY_LENGTH: usize = 255;

/// Names the keys and fingerprints of this service (UUID v5 namespace).
const NAMESPACE: Uuid = Uuid::from_u128(0x5c8e_2a4e_8f3b_4d6c_9a1e_7b2d_3c4f_5a6b);

/// A client's key for one request to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// The key of this request, if it has one; a malformed one is refused with 400.
    pub fn from_headers(headers: &HeaderMap, endpoint: &str) -> Result<Option<Key>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let text = value
            .to_str()
            .ok()
            .map(|t| t.trim())
            // The draft writes the key as a structured-field string: "...".
            .map(|t| {
                t.strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .unwrap_or(t)
            })
            .filter(|t| !t.is_empty() && t.len() <= MAX_KEY_LENGTH)
            .ok_or(ApiError::BadIdempotencyKey)?;
        let name = Uuid::new_v5(&NAMESPACE, format!("{endpoint}\n{text}").as_bytes());
        Ok(Some(Key(name.simple().to_string())))
    }
}

/// What was recorded for a key.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// Of the request body's bytes.
    fingerprint: String,
    subject: String,
    /// The event's payload, exactly as appended.
    event: String,
    /// The 201 response body, exactly as answered.
    response: String,
}

/// What to do with a request under a key.
enum Outcome {
    /// The first request under this key: append `event`, answer `response`.
    First,
    /// A retry: append this event again (stored once) and answer this response.
    Repeat {
        event: EncodedEvent,
        response: Bytes,
    },
}

/// The API's side of the idempotency store.
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    subjects: Subjects,
}

impl Idempotency {
    pub fn new(store: Arc<dyn IdempotencyStore>, subjects: Subjects) -> Self {
        Self { store, subjects }
    }

    /// Records the request (its body `raw`, the event built for it and the response it will
    /// get) under `key`, or finds the earlier request recorded there.
    async fn claim(
        &self,
        key: &Key,
        raw: &[u8],
        event: &EncodedEvent,
        response: &Bytes,
    ) -> Result<Outcome, ApiError> {
        let fingerprint = Uuid::new_v5(&NAMESPACE, raw).simple().to_string();
        let record = Record {
            fingerprint: fingerprint.clone(),
            subject: self
                .subjects
                .event(event.event().thread(), event.event().kind()),
            event: String::from_utf8_lossy(event.payload()).into_owned(),
            response: String::from_utf8_lossy(response).into_owned(),
        };
        let bytes = serde_json::to_vec(&record).map_err(ApiError::internal)?;
        let Some(existing) = self.store.claim(&key.0, bytes.into()).await? else {
            return Ok(Outcome::First);
        };
        let earlier: Record = serde_json::from_slice(&existing).map_err(ApiError::internal)?;
        if earlier.fingerprint != fingerprint {
            return Err(ApiError::IdempotencyKeyReused);
        }
        let event = EncodedEvent::from_payload(
            &self.subjects,
            &earlier.subject,
            Bytes::from(earlier.event),
        )
        .map_err(ApiError::internal)?;
        Ok(Outcome::Repeat {
            event,
            response: Bytes::from(earlier.response),
        })
    }
}

/// Records the request under its key, if it has one, then appends its event (or, on a retry,
/// the earlier request's event), all within the append timeout. On a retry `response` becomes
/// the earlier request's response. The event appended and its stream sequence.
pub async fn append_once(
    state: &AppState,
    key: Option<&Key>,
    raw: &[u8],
    encoded: EncodedEvent,
    response: &mut Bytes,
) -> Result<(EncodedEvent, u64), ApiError> {
    let work = async {
        let encoded = match key {
            None => encoded,
            Some(key) => match state
                .idempotency
                .claim(key, raw, &encoded, response)
                .await?
            {
                Outcome::First => encoded,
                Outcome::Repeat {
                    event,
                    response: earlier,
                } => {
                    *response = earlier;
                    event
                }
            },
        };
        let sequence = state.log.append(&encoded).await?;
        Ok((encoded, sequence))
    };
    tokio::time::timeout(state.append_timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::nats(format!(
                "the event log did not store the event within {:?}",
                state.append_timeout
            ))
            .into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(value: &str, endpoint: &str) -> Result<Option<Key>, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_str(value).unwrap());
        Key::from_headers(&headers, endpoint)
    }

    #[test]
    fn keys_are_scoped_by_endpoint_and_may_be_quoted() {
        let plain = key("8e03978e-40d5-43e8-bc93-6894a57f9324", "message").unwrap();
        let quoted = key("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"", "message").unwrap();
        let other = key("8e03978e-40d5-43e8-bc93-6894a57f9324", "thread").unwrap();
        assert!(plain.is_some());
        assert_eq!(plain, quoted);
        assert_ne!(plain, other);
        assert_eq!(
            Key::from_headers(&HeaderMap::new(), "message").unwrap(),
            None
        );
    }

    #[test]
    fn empty_or_overlong_keys_are_refused() {
        assert!(matches!(
            key("", "message"),
            Err(ApiError::BadIdempotencyKey)
        ));
        assert!(matches!(
            key("\"\"", "message"),
            Err(ApiError::BadIdempotencyKey)
        ));
        let long = "k".repeat(MAX_KEY_LENGTH + 1);
        assert!(matches!(
            key(&long, "message"),
            Err(ApiError::BadIdempotencyKey)
        ));
    }
}
