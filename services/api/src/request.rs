//! Reading a request body as DRF's JSON parser does: content type, size limit, JSON, and
//! "must be an object".

use crate::error::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Map, Value};

/// A request body read as a JSON object, with the bytes it was read from.
pub struct JsonRequest {
    pub raw: Bytes,
    pub object: Map<String, Value>,
}

/// The request body as a JSON object. An empty body reads as `{}` whatever its content type
/// (as DRF does), so that every required field is reported missing.
pub async fn json_object(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<JsonRequest, ApiError> {
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = read_within(body, limit, declared_length).await?;
    if bytes.is_empty() {
        return Ok(JsonRequest {
            raw: bytes,
            object: Map::new(),
        });
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if !is_json(&content_type) {
        return Err(ApiError::UnsupportedMediaType(content_type));
    }
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::JsonParse(e.to_string()))?;
    match value {
        Value::Object(object) => Ok(JsonRequest { raw: bytes, object }),
        Value::Null => Err(ApiError::NonField("No data provided".into())),
        other => Err(ApiError::NonField(format!(
            "Invalid data. Expected a dictionary, but got {}.",
            python_type_name(&other)
        ))),
    }
}

/// How much of an oversized body is read and thrown away so that the client, still sending,
/// receives the 413 instead of a broken pipe. Past this, the connection is closed instead.
const DISCARD_AT_MOST: u64 = 16 * 1024 * 1024;

/// Reads the body if it fits in `limit` bytes. An oversized body is read to its end (up to
/// [`DISCARD_AT_MOST`]) and dropped, then refused with 413.
async fn read_within(
    body: Body,
    limit: usize,
    declared_length: Option<u64>,
) -> Result<Bytes, ApiError> {
    let too_large = ApiError::BodyTooLarge { limit };
    if declared_length.is_some_and(|n| n > DISCARD_AT_MOST) {
        return Err(too_large);
    }
    let mut oversized = declared_length.is_some_and(|n| n > limit as u64);
    let mut kept = BytesMut::new();
    let mut seen: u64 = 0;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::JsonParse(format!("could not read the request body: {e}")))?;
        seen += chunk.len() as u64;
        if seen > DISCARD_AT_MOST {
            break;
        }
        if !oversized && kept.len() + chunk.len() > limit {
            oversized = true;
            kept = BytesMut::new();
        }
        if !oversized {
            kept.extend_from_slice(&chunk);
        }
    }
    if oversized || seen > limit as u64 {
        Err(too_large)
    } else {
        Ok(kept.freeze())
    }
}

/// `application/json`, with or without parameters, in any case.
fn is_json(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    media_type.eq_ignore_ascii_case("application/json")
}

/// The name Python gives the type of what `json.loads` made of this value.
pub fn python_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if is_python_int(n) => "int",
        Value::Number(_) => "float",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Whether Python's JSON parser reads this number as an `int` (no fraction, no exponent).
pub fn is_python_int(n: &serde_json::Number) -> bool {
    !n.to_string().contains(['.', 'e', 'E'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    async fn read(content_type: Option<&str>, body: &str) -> Result<Map<String, Value>, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        json_object(&headers, Body::from(body.to_owned()), 64)
            .await
            .map(|request| request.object)
    }

    #[tokio::test]
    async fn objects_are_read() {
        let map = read(Some("application/json"), r#"{"a": 1}"#).await.unwrap();
        assert_eq!(Value::Object(map), json!({"a": 1}));
        assert!(read(Some("Application/JSON; charset=utf-8"), "{}")
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn an_empty_body_reads_as_an_empty_object() {
        assert!(read(None, "").await.unwrap().is_empty());
        assert!(read(Some("text/plain"), "").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn other_media_types_are_refused() {
        match read(Some("text/plain"), "{}").await {
            Err(ApiError::UnsupportedMediaType(t)) => assert_eq!(t, "text/plain"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(read(None, "{}").await, Err(ApiError::UnsupportedMediaType(t)) if t.is_empty())
        );
    }

    #[tokio::test]
    async fn non_objects_name_their_python_type() {
        for (body, want) in [
            ("[]", "Invalid data. Expected a dictionary, but got list."),
            ("\"x\"", "Invalid data. Expected a dictionary, but got str."),
            ("5", "Invalid data. Expected a dictionary, but got int."),
            ("5.0", "Invalid data. Expected a dictionary, but got float."),
            ("true", "Invalid data. Expected a dictionary, but got bool."),
            ("null", "No data provided"),
        ] {
            match read(Some("application/json"), body).await {
                Err(ApiError::NonField(m)) => assert_eq!(m, want),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn malformed_json_and_large_bodies_are_refused() {
        assert!(matches!(
            read(Some("application/json"), "{").await,
            Err(ApiError::JsonParse(_))
        ));
        let big = format!("{{\"a\": \"{}\"}}", "x".repeat(100));
        assert!(matches!(
            read(Some("application/json"), &big).await,
            Err(ApiError::BodyTooLarge { limit: 64 })
        ));
    }
}
