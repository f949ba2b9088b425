//! Settings shared by the roles, read from flags and the environment.

use clap::Args;
use std::time::Duration;

/// Where the event log lives and how it is named.
#[derive(Debug, Clone, Args)]
pub struct NatsSettings {
    /// URL of the NATS server (JetStream enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

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

    /// How long to wait for the broker to answer a request or acknowledge an append.
    #[arg(long, env = "NATS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub nats_timeout: Duration,
}

impl NatsSettings {
    /// Checks what can be checked without a server: a wrong setting is not worth retrying.
    pub fn validate(&self) -> Result<(), String> {
        self.nats_url
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("NATS_URL {:?} is not a NATS URL: {e}", self.nats_url))?;
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
        if self.stream_name == self.dead_letter_stream {
            return Err("STREAM_NAME and DEAD_LETTER_STREAM must differ".into());
        }
        Ok(())
    }
}

/// Where the read model lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseSettings {
    /// PostgreSQL URL of the read model; the database is created if it is missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/threadline"
    )]
    pub database_url: String,

    /// Most connections this process opens to PostgreSQL.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// How long a query may wait for a connection or run before it fails with 503.
    #[arg(long, env = "DATABASE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub database_timeout: Duration,
}

/// How the HTTP server behaves.
#[derive(Debug, Clone, Args)]
pub struct HttpSettings {
    /// How long in-flight requests and open websockets get to finish on shutdown.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Parses `250ms`, `5s`, `2m`, `24h` or a bare number of seconds.
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
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
