//! Settings shared by the roles, read from flags and the environment.

use clap::{ArgAction, Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::secret::{Secret, SecretUrl};

/// Where the event log lives and how it is named.
#[derive(Debug, Clone, Args)]
pub struct NatsSettings {
    /// URL of the NATS server (JetStream enabled).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: SecretUrl,

    /// Name of the JetStream stream that holds the events.
    #[arg(long, env = "STREAM_NAME", default_value = "THREADLINE")]
    pub stream_name: String,

    /// First token(s) of every subject: events live on `<prefix>.thread.<id>.created|message`.
    #[arg(long, env = "SUBJECT_PREFIX", default_value = "chat")]
    pub subject_prefix: String,

    /// Name of the JetStream stream where invalid events are set aside.
    #[arg(
        long,
        env = "DEAD_LETTER_STREAM",
        default_value = "THREADLINE_DEAD_LETTERS"
    )]
    pub dead_letter_stream: String,

    /// Name of the JetStream key-value bucket where the API keeps requests answered under an
    /// `Idempotency-Key`.
    #[arg(
        long,
        env = "IDEMPOTENCY_BUCKET",
        default_value = "THREADLINE_IDEMPOTENCY"
    )]
    pub idempotency_bucket: String,

    /// Durable name of the projector's consumer (the api reads its progress for
    /// read-your-writes).
    #[arg(
        long,
        env = "PROJECTOR_CONSUMER",
        default_value = "threadline-projector"
    )]
    pub projector_consumer: String,

    /// How long the event stream remembers an event id (`Nats-Msg-Id`) to store a repeat once.
    /// Slack redelivers an unacknowledged event after 1 and 5 minutes: keep it above that.
    /// Every role applies it to the stream when it starts, so give all the same value.
    #[arg(long, env = "DUPLICATE_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub duplicate_window: Duration,

    /// How long to wait for the broker to answer a request or acknowledge an append.
    #[arg(long, env = "NATS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub nats_timeout: Duration,

    /// Replicas of the event stream, of the dead-letter stream and of the api's idempotency
    /// bucket (3 on a 3-node JetStream cluster). Those that exist are updated to it on start.
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,

    /// Oldest event the event stream keeps (0: forever). The stream is the source of truth,
    /// from which the read model can be rebuilt: limit it only if that is not needed.
    #[arg(long, env = "STREAM_MAX_AGE", default_value = "0", value_parser = parse_duration)]
    pub stream_max_age: Duration,

    /// Most bytes the event stream keeps, e.g. 50GB (0: no limit). When it is full, new
    /// events are refused (the API answers 503) rather than old ones deleted.
    #[arg(long, env = "STREAM_MAX_BYTES", default_value = "0", value_parser = parse_bytes)]
    pub stream_max_bytes: ByteSize,

    /// Oldest event the dead-letter stream keeps (0: forever).
    #[arg(long, env = "DEAD_LETTER_MAX_AGE", default_value = "30d", value_parser = parse_duration)]
    pub dead_letter_max_age: Duration,

    /// Most bytes the dead-letter stream keeps (0: no limit); when full, the oldest are
    /// deleted. Outside publishers can fill it with invalid events, so it is bounded.
    #[arg(long, env = "DEAD_LETTER_MAX_BYTES", default_value = "1GB", value_parser = parse_bytes)]
    pub dead_letter_max_bytes: ByteSize,

    /// NATS credentials file (user JWT and NKey seed, as `nsc` writes it).
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,

    /// NATS NKey seed (`SU…`) to authenticate with.
    #[arg(long, env = "NATS_NKEY_SEED", hide_env_values = true)]
    pub nats_nkey_seed: Option<Secret>,

    /// NATS user name (with NATS_PASSWORD).
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,

    /// NATS password (with NATS_USER).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<Secret>,

    /// NATS authentication token.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<Secret>,

    /// First token of the subjects this process receives replies on (its requests to the
    /// JetStream API, its publish acknowledgements). Give each NATS user its own
    /// (`_INBOX_api`, …) and allow it to subscribe to that prefix only, so that no user
    /// reads another's replies (deploy/nats/auth.conf).
    #[arg(long, env = "NATS_INBOX_PREFIX", default_value = "_INBOX")]
    pub nats_inbox_prefix: String,

    /// CA certificate (PEM) that the NATS server's certificate is checked against; setting
    /// it requires TLS, as a `tls://` NATS_URL does.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for servers that verify clients (with NATS_TLS_KEY).
    #[arg(long, env = "NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of NATS_TLS_CERT.
    #[arg(long, env = "NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsSettings {
    /// Checks what can be checked without a server: a wrong setting is not worth retrying.
    pub fn validate(&self) -> Result<(), String> {
        self.nats_url
            .expose()
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("NATS_URL {} is not a NATS URL: {e}", self.nats_url))?;
        proto_events::Subjects::new(&self.subject_prefix)
            .map_err(|e| format!("SUBJECT_PREFIX: {e}"))?;
        let valid_name = |n: &str| {
            !n.is_empty() && !n.contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c))
        };
        for (setting, name) in [
            ("STREAM_NAME", &self.stream_name),
            ("DEAD_LETTER_STREAM", &self.dead_letter_stream),
            ("PROJECTOR_CONSUMER", &self.projector_consumer),
            ("IDEMPOTENCY_BUCKET", &self.idempotency_bucket),
        ] {
            if !valid_name(name) {
                return Err(format!(
                    "{setting} {name:?} is not a valid JetStream name (no spaces, '.', '*', '>', '/', '\\')"
                ));
            }
        }
        let inbox = &self.nats_inbox_prefix;
        if inbox.is_empty()
            || inbox.contains(|c: char| c.is_whitespace() || "*>".contains(c))
            || inbox.starts_with('.')
            || inbox.ends_with('.')
            || inbox.contains("..")
        {
            return Err(format!(
                "NATS_INBOX_PREFIX {inbox:?} is not a subject prefix (tokens separated by '.', no spaces, '*' or '>')"
            ));
        }
        if self.stream_name == self.dead_letter_stream {
            return Err("STREAM_NAME and DEAD_LETTER_STREAM must differ".into());
        }
        let ways = [
            ("NATS_CREDS_FILE", self.nats_creds_file.is_some()),
            ("NATS_NKEY_SEED", self.nats_nkey_seed.is_some()),
            ("NATS_USER", self.nats_user.is_some()),
            ("NATS_TOKEN", self.nats_token.is_some()),
        ];
        let chosen: Vec<&str> = ways.iter().filter(|w| w.1).map(|w| w.0).collect();
        if chosen.len() > 1 {
            return Err(format!(
                "{} are set: choose one way to authenticate to NATS",
                chosen.join(" and ")
            ));
        }
        if self.nats_password.is_some() != self.nats_user.is_some() {
            return Err("NATS_USER and NATS_PASSWORD go together".into());
        }
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            return Err("NATS_TLS_CERT and NATS_TLS_KEY go together".into());
        }
        for (setting, path) in [
            ("NATS_CREDS_FILE", &self.nats_creds_file),
            ("NATS_TLS_CA", &self.nats_tls_ca),
            ("NATS_TLS_CERT", &self.nats_tls_cert),
            ("NATS_TLS_KEY", &self.nats_tls_key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(format!(
                        "{setting} {} is not a readable file",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// How to connect: name, timeouts, credentials and TLS as set.
    pub async fn connect_options(&self) -> Result<async_nats::ConnectOptions, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name("threadline")
            .connection_timeout(self.nats_timeout)
            .request_timeout(Some(self.nats_timeout))
            .custom_inbox_prefix(&self.nats_inbox_prefix);
        if let Some(path) = &self.nats_creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| format!("NATS_CREDS_FILE {}: {e}", path.display()))?;
        }
        if let Some(seed) = &self.nats_nkey_seed {
            options = options.nkey(seed.expose().to_owned());
        }
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(token) = &self.nats_token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(ca) = &self.nats_tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// Where the read model lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseSettings {
    /// PostgreSQL URL of the read model (user, password, and TLS by `?sslmode=require`, or
    /// `?sslmode=verify-full&sslrootcert=<CA file>`); with MIGRATE_ON_START the database is
    /// created if it is missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/threadline",
        hide_env_values = true
    )]
    pub database_url: SecretUrl,

    /// Most connections this process opens to PostgreSQL.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// How long a query may wait for a connection or run before it fails with 503.
    #[arg(long, env = "DATABASE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub database_timeout: Duration,

    /// How long a streamed GET of a long thread may take in all: a client reading slower
    /// than that gets a body cut short, and the read's snapshot in PostgreSQL is released.
    #[arg(long, env = "LONG_READ_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub long_read_timeout: Duration,

    /// Create the database if missing and run the migrations on start. With least-privileged
    /// roles, set it to false and run `threadline migrate` as the tables' owner instead.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = ArgAction::Set)]
    pub migrate_on_start: bool,
}

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

    /// Proxies (addresses or CIDR blocks, comma-separated) whose `x-request-id` is kept; from
    /// anyone else, or longer than 128 bytes, the role makes a new id.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', num_args = 0..)]
    pub trusted_proxies: Vec<crate::server::TrustedProxy>,

    /// Address of a listener of its own for `/metrics` and `/readyz` (and `/healthz`), e.g.
    /// `0.0.0.0:9090`; then LISTEN_ADDR answers those two with 404. Unset: all on LISTEN_ADDR.
    #[arg(long, env = "ADMIN_LISTEN_ADDR")]
    pub admin_listen_addr: Option<std::net::SocketAddr>,
}

impl HttpSettings {
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

/// A size in bytes; `None` is no limit.
pub type ByteSize = Option<u64>;

/// Parses `0` (no limit), `1048576`, `512MB`, `50GB`, `1GiB`, `10KiB`.
pub fn parse_bytes(text: &str) -> Result<ByteSize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let wrong = || format!("{text:?} is not a size like 0, 512MB, 50GB or 1GiB");
    let number: u64 = number.parse().map_err(|_| wrong())?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return Err(wrong()),
    };
    let bytes = number.checked_mul(factor).ok_or_else(wrong)?;
    Ok((bytes > 0).then_some(bytes))
}

/// Settings as their defaults and the environment give them, without a command line: for
/// tools and benchmarks that start from the services' own settings and change a few.
pub fn from_environment<T: clap::FromArgMatches + Args>() -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("threadline"));
    let matches = command.try_get_matches_from(["threadline"])?;
    T::from_arg_matches(&matches)
}

/// Parses `250ms`, `5s`, `2m`, `12h`, `30d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        _ => return Err(format!("{text:?} is not a duration like 250ms, 5s or 2m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn sizes_parse_with_units_and_zero_is_no_limit() {
        assert_eq!(parse_bytes("0"), Ok(None));
        assert_eq!(parse_bytes("1048576"), Ok(Some(1_048_576)));
        assert_eq!(parse_bytes("512MB"), Ok(Some(512_000_000)));
        assert_eq!(parse_bytes("1GiB"), Ok(Some(1 << 30)));
        assert_eq!(parse_bytes("10 kib"), Ok(Some(10_240)));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5PB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999999999GB").is_err());
    }

    fn http(origins: &[&str]) -> HttpSettings {
        HttpSettings {
            shutdown_timeout: Duration::from_secs(1),
            cors_allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            trusted_proxies: Vec::new(),
            admin_listen_addr: None,
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
}
