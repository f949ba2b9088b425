//! Settings shared by the roles, read from flags and the environment.

use clap::{Args, ValueEnum};
use std::time::Duration;
use threadline_ports::settings::parse_duration;

/// How the HTTP server behaves.
#[derive(Debug, Clone, Args)]
pub struct HttpSettings {
    /// How long in-flight requests and open websockets get to finish on shutdown.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Origins whose browsers may call the HTTP API (CORS), comma-separated, e.g.
    /// `https://www.example.com`; `*` for any. Empty (the default): no CORS headers.
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_allowed_origins: Vec<String>,

    /// Proxies (addresses or CIDR blocks, comma-separated) that are believed: their
    /// forwarding header names the client's address (for every per-client limit) and their
    /// `x-request-id` is kept. From anyone else both are ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', num_args = 0..)]
    pub trusted_proxies: Vec<crate::server::TrustedProxy>,

    /// The header in which a trusted proxy forwards the client's address (the last address
    /// in it that is not itself a trusted proxy is the client's).
    #[arg(long, env = "FORWARDED_HEADER", default_value = "x-forwarded-for")]
    pub forwarded_header: axum::http::HeaderName,

    /// Address of a listener of its own for `/metrics` and `/readyz` (and `/healthz`), e.g.
    /// `0.0.0.0:9090`; then LISTEN_ADDR answers those two with 404. Unset: all on LISTEN_ADDR.
    #[arg(long, env = "ADMIN_LISTEN_ADDR")]
    pub admin_listen_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub connections: ConnectionSettings,
}

/// How long a connection may take and how many may be open: what keeps one machine that
/// opens connections and sends little or nothing from taking a role off the air (see
/// [`crate::limits`]).
#[derive(Debug, Clone, Args)]
pub struct ConnectionSettings {
    /// How long a client may take to send a request's headers: from the connection's
    /// opening for its first request, from the request's first byte for a later one. Then
    /// the connection is closed without an answer.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub http_header_timeout: Duration,

    /// How long a kept-alive connection may wait, with no request in flight, for the first
    /// byte of its next one; then it is closed. Keep it above the upstream keep-alive of a
    /// proxy in front (nginx: 60s), so that the proxy, not this server, closes first.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value = "75s", value_parser = positive_duration)]
    pub http_idle_timeout: Duration,

    /// How long a request with a body (a POST) may take, the body's arrival included, before
    /// its response begins; then it is answered 408 `{"detail": "Request timed out."}` and
    /// its connection closed. Requests without a body (GETs, websocket upgrades) and
    /// responses' bodies are not bounded by it.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub http_request_timeout: Duration,

    /// Most connections open at once in this process (websockets included); past it a new
    /// connection is closed at once. Unset: what the open-file limit leaves once files are
    /// kept for NATS, PostgreSQL, the logs and the admin listener; a larger value is lowered
    /// to that, with a warning.
    #[arg(long, env = "MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Most connections open at once from one client (an IPv4 address or an IPv6 /64), `0`
    /// for no limit; past it a new connection is closed at once. A proxy of
    /// TRUSTED_PROXIES is not limited so, but each client it forwards may have at most this
    /// many requests in flight (then 429).
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            http_header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(75),
            http_request_timeout: Duration::from_secs(30),
            max_connections: None,
            max_connections_per_ip: 1_000,
        }
    }
}

/// A duration above zero (a zero timeout would close every connection at once).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} is not above 0")),
        d => Ok(d),
    }
}

impl HttpSettings {
    /// How the role tells its clients apart.
    pub fn clients(&self) -> crate::client::Clients {
        crate::client::Clients::new(self.trusted_proxies.clone(), self.forwarded_header.clone())
    }

    /// The allowed origins, without blanks; a malformed one is a configuration error.
    pub fn cors_origins(&self) -> Result<Vec<axum::http::HeaderValue>, String> {
        self.cors_allowed_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| {
                let valid = o == "*"
                    || ((o.starts_with("http://") || o.starts_with("https://"))
                        && !o
                            .trim_end_matches('/')
                            .contains(|c: char| c.is_whitespace()));
                if !valid {
                    return Err(format!(
                        "CORS_ALLOWED_ORIGINS: {o:?} is not an origin like https://www.example.com"
                    ));
                }
                axum::http::HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|e| format!("CORS_ALLOWED_ORIGINS: {o:?}: {e}"))
            })
            .collect()
    }
}

/// How the process logs.
#[derive(Debug, Clone, Args)]
pub struct LogSettings {
    /// Log format on standard error: `text` (human) or `json` (one object per line, with the
    /// fields of every span, e.g. request_id). RUST_LOG sets the level (default: info).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,
}

/// The log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings as their defaults and the environment give them, without a command line: for
/// tools and benchmarks that start from the services' own settings and change a few.
pub fn from_environment<T: clap::FromArgMatches + Args>() -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("threadline"));
    let matches = command.try_get_matches_from(["threadline"])?;
    T::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(origins: &[&str]) -> HttpSettings {
        HttpSettings {
            shutdown_timeout: Duration::from_secs(1),
            cors_allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            trusted_proxies: Vec::new(),
            forwarded_header: axum::http::HeaderName::from_static("x-forwarded-for"),
            admin_listen_addr: None,
            connections: ConnectionSettings::default(),
        }
    }

    #[test]
    fn cors_origins_are_checked() {
        assert_eq!(http(&[""]).cors_origins(), Ok(vec![]));
        assert_eq!(
            http(&["https://www.example.com/", " http://localhost:3000"])
                .cors_origins()
                .map(|v| v.len()),
            Ok(2)
        );
        assert!(http(&["www.example.com"]).cors_origins().is_err());
    }

    #[test]
    fn connection_defaults_are_the_documented_ones() {
        let parsed: HttpSettings = from_environment().expect("the defaults parse");
        let documented = ConnectionSettings::default();
        let c = parsed.connections;
        assert_eq!(c.http_header_timeout, documented.http_header_timeout);
        assert_eq!(c.http_idle_timeout, documented.http_idle_timeout);
        assert_eq!(c.http_request_timeout, documented.http_request_timeout);
        assert_eq!(c.max_connections, documented.max_connections);
        assert_eq!(c.max_connections_per_ip, documented.max_connections_per_ip);
        assert!(positive_duration("0s").is_err());
        assert_eq!(positive_duration("2s"), Ok(Duration::from_secs(2)));
    }
}
