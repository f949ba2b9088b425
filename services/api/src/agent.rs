//! The agent token (`AGENT_TOKEN` or `AGENT_TOKEN_FILE`): when it is set, an HTTP post that
//! would store an agent's message (`send_by_user` false, which is also the contract's default
//! when the field is absent) must carry `Authorization: Bearer <token>`, or it is answered 403
//! with DRF's permission body. Visitors' posts (`send_by_user` true) and thread creation
//! (which stores no message) need nothing; agent replies published straight to NATS by the
//! Slack integration never pass here.
//!
//! The token is a [`Secret`]: it shows as `***` in debug output, `--help` hides its value,
//! and it is compared in constant time (`subtle`), so a client cannot find it byte by byte
//! from how long a refusal takes (only its length may show).

use axum::http::{header, HeaderMap};
use std::path::Path;
use subtle::ConstantTimeEq;
use threadline_ports::secret::Secret;

/// Parses `AGENT_TOKEN`: white space around it is dropped; what remains must be printable
/// ASCII without spaces, so that it can be sent in a header. The error never shows the token.
pub fn parse_token(text: &str) -> Result<Secret, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err("the agent token is empty".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the agent token holds a character other than printable ASCII (no spaces)".into(),
        );
    }
    Ok(token.parse().unwrap_or_else(|never| match never {}))
}

/// clap's parser of `AGENT_TOKEN`: [`parse_token`], with an error that does not show the
/// value given (clap's own errors quote the value they refuse).
#[derive(Debug, Clone, Copy)]
pub struct TokenParser;

impl clap::builder::TypedValueParser for TokenParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        _command: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        let refuse = |reason: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("AGENT_TOKEN: {reason}\n"),
            )
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("the agent token is not UTF-8"))?;
        parse_token(text).map_err(|e| refuse(&e))
    }
}

/// Reads `AGENT_TOKEN_FILE` (a mounted secret, for example): the file's text, a final line
/// break or white space around it dropped, as [`parse_token`] takes it.
pub fn read_token_file(path: &str) -> Result<Secret, String> {
    let text = std::fs::read_to_string(Path::new(path))
        .map_err(|e| format!("cannot read the agent token from {path}: {e}"))?;
    parse_token(&text).map_err(|e| format!("{path}: {e}"))
}

/// Whether `headers` carry `Authorization: Bearer <token>` (the scheme in any case), the
/// token compared in constant time.
pub fn is_authorized(token: &Secret, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (scheme, credentials) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return false;
    }
    let credentials = credentials.trim_ascii();
    bool::from(credentials.ct_eq(token.expose().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn token() -> Secret {
        parse_token("s3cr3t-T0ken").expect("a token")
    }

    fn with_authorization(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn only_the_bearer_token_itself_is_authorized() {
        for good in [
            &b"Bearer s3cr3t-T0ken"[..],
            b"bearer s3cr3t-T0ken",
            b"BEARER  s3cr3t-T0ken ",
        ] {
            assert!(
                is_authorized(&token(), &with_authorization(good)),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &b"Bearer s3cr3t-T0ke"[..],
            b"Bearer s3cr3t-T0kenn",
            b"Bearer S3CR3T-T0KEN",
            b"Bearer ",
            b"Bearer",
            b"Basic s3cr3t-T0ken",
            b"s3cr3t-T0ken",
            b"Token s3cr3t-T0ken",
        ] {
            assert!(
                !is_authorized(&token(), &with_authorization(bad)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(!is_authorized(&token(), &HeaderMap::new()));
    }

    #[test]
    fn a_token_is_trimmed_and_must_be_sendable_in_a_header() {
        assert_eq!(parse_token("  abc\n").expect("a token").expose(), "abc");
        assert!(parse_token("").is_err());
        assert!(parse_token(" \n").is_err());
        let error = parse_token("two words").unwrap_err();
        assert!(!error.contains("two"), "{error}");
        assert!(parse_token("caf\u{e9}").is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Settings {
        #[arg(long, value_parser = TokenParser)]
        agent_token: Option<Secret>,
    }

    #[test]
    fn a_refused_token_is_not_shown() {
        use clap::Parser;
        let parsed = Settings::try_parse_from(["t", "--agent-token", " t0ken\n"]);
        let token = parsed.expect("a token").agent_token.expect("set");
        assert_eq!(token.expose(), "t0ken");
        let error = Settings::try_parse_from(["t", "--agent-token", "Pl4nted secret"])
            .expect_err("a space is refused")
            .to_string();
        assert!(error.contains("AGENT_TOKEN"), "{error}");
        assert!(!error.contains("Pl4nted"), "{error}");
    }

    #[test]
    fn a_token_file_is_read_without_its_line_break_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("agent-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("token");
        std::fs::write(&path, "fr0m-a-f1le\n").expect("the token file");
        let path = path.to_str().expect("a UTF-8 path");
        let token = read_token_file(path).expect("the token");
        assert_eq!(token.expose(), "fr0m-a-f1le");
        assert_eq!(format!("{token:?}"), "\"***\"");
        std::fs::write(path, "no good\n").expect("the token file");
        let error = read_token_file(path).unwrap_err();
        assert!(error.contains(path) && !error.contains("good"), "{error}");
        std::fs::remove_dir_all(&dir).expect("removing the directory");
        assert!(read_token_file(path).is_err());
    }
}
