//! Settings that hold credentials: they never show in logs, errors, `--help` or debug output.
//!
//! [`Secret`] is a credential of its own (a password, a token, an NKey seed): it formats as
//! `***`. [`SecretUrl`] is a URL that may carry one (`postgres://user:password@host/db`,
//! `nats://token@host`): it formats with every password, token and `password=` parameter
//! replaced by `***`, whether or not the URL parses (a password holding `@`, `#` or `/` is
//! what most often makes it fail to). Code that needs the credential itself calls `expose()`,
//! so that every use of one is a visible, greppable choice.

use std::fmt;

/// A setting that must not show up in logs or debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// A URL setting that may carry credentials; it formats (`{}` and `{:?}`) without them.
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL as given, credentials included.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The passwords and tokens the URL carries, percent-decoded.
    pub fn credentials(&self) -> Vec<String> {
        scan(&self.0).1
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&scan(&self.0).0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", scan(&self.0).0)
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretUrl(s.to_owned()))
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        SecretUrl(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        SecretUrl(url.to_owned())
    }
}

/// What shows in place of a credential.
const REDACTED: &str = "***";

/// `text` (one URL, or a comma-separated list of them) with its credentials
/// redacted, and those credentials. Read without a URL parser, so that a URL which does not
/// parse is redacted too: after each `scheme://`, everything up to the *last* `@` before the
/// next URL is the user part (a password may hold `@`, `#`, `/` or `:`); a user name is kept
/// when a `:` follows it, and in PostgreSQL URLs, where it cannot be a token; and a query
/// parameter whose name holds `password` or `token` has its value redacted.
fn scan(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let scheme = &rest[..start];
        out.push_str(&rest[..start + 3]);
        rest = &rest[start + 3..];
        // This URL ends where the next one's scheme begins (after the comma before it).
        let end = match rest.find("://") {
            Some(next) => rest[..next]
                .rfind(',')
                .map_or(rest.len(), |comma| comma + 1),
            None => rest.len(),
        };
        let (url, after) = rest.split_at(end);
        let (userinfo, location) = match url.rfind('@') {
            Some(at) => (Some(&url[..at]), &url[at..]),
            None => (None, url),
        };
        if let Some(userinfo) = userinfo {
            let keeps_user = scheme.to_ascii_lowercase().starts_with("postgres");
            match userinfo.split_once(':') {
                Some((user, password)) => {
                    found.push(percent_decoded(password));
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None if keeps_user => out.push_str(userinfo),
                None => {
                    found.push(percent_decoded(userinfo));
                    out.push_str(REDACTED);
                }
            }
        }
        match location.split_once('?') {
            Some((path, query)) => {
                out.push_str(path);
                out.push('?');
                out.push_str(&redact_query(query, &mut found));
            }
            None => out.push_str(location),
        }
        rest = after;
    }
    out.push_str(rest);
    (out, found)
}

/// A query string with the values of its credential parameters redacted.
fn redact_query(query: &str, found: &mut Vec<String>) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => {
                let name_lower = name.to_ascii_lowercase();
                if name_lower.contains("password") || name_lower.contains("token") {
                    found.push(percent_decoded(value));
                    format!("{name}={REDACTED}")
                } else {
                    pair.to_owned()
                }
            }
            None => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `%XX` sequences decoded (a malformed one is kept as it is).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(url: &str) -> String {
        SecretUrl::from(url).to_string()
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let secret: Secret = "hunter2".parse().unwrap_or_else(|e| match e {});
        assert_eq!(format!("{secret:?}"), "\"***\"");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn urls_show_without_their_passwords() {
        assert_eq!(
            shown("postgres://api:hunter2@db:5432/threadline"),
            "postgres://api:***@db:5432/threadline"
        );
        assert_eq!(
            shown("postgres://postgres@127.0.0.1:5432/threadline"),
            "postgres://postgres@127.0.0.1:5432/threadline"
        );
        assert_eq!(
            shown("nats://user:hunter2@127.0.0.1:4222"),
            "nats://user:***@127.0.0.1:4222"
        );
        // A NATS user part without a password is a token.
        assert_eq!(shown("nats://s3cret@nats:4222"), "nats://***@nats:4222");
        assert_eq!(shown("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            shown("postgres://db/threadline?user=api&password=hunter2&sslmode=verify-full"),
            "postgres://db/threadline?user=api&password=***&sslmode=verify-full"
        );
        let url = SecretUrl::from("postgres://db/x?password=hunter2");
        assert_eq!(format!("{url:?}"), "\"postgres://db/x?password=***\"");
        assert_eq!(url.expose(), "postgres://db/x?password=hunter2");
    }

    #[test]
    fn passwords_that_break_the_url_are_redacted_too() {
        for password in ["pa/ss", "pa#ss", "pa@ss", "p@s:s/w#rd", "pa,ss", "pa?ss=x"] {
            let url = format!("postgres://api:{password}@db:5432/threadline");
            let text = shown(&url);
            assert!(!text.contains(password), "{url} shows as {text}");
            assert_eq!(text, "postgres://api:***@db:5432/threadline");
            assert_eq!(SecretUrl::from(url).credentials(), [password]);
        }
    }

    #[test]
    fn every_url_of_a_list_is_redacted() {
        let url = "nats://a:one@n1:4222,nats://b:two@n2:4222, tls://three@n3:4222";
        assert_eq!(
            shown(url),
            "nats://a:***@n1:4222,nats://b:***@n2:4222, tls://***@n3:4222"
        );
        assert_eq!(SecretUrl::from(url).credentials(), ["one", "two", "three"]);
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let url = SecretUrl::from("postgres://api:api%2Dchange%2dme@db/threadline");
        assert_eq!(url.credentials(), ["api-change-me"]);
        assert_eq!(
            SecretUrl::from("postgres://api:100%@db/x").credentials(),
            ["100%"]
        );
    }
}
