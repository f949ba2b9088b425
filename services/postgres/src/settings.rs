//! Where the read model lives.

use clap::{ArgAction, Args};
use std::time::Duration;
use threadline_ports::secret::SecretUrl;
use threadline_ports::settings::parse_duration;

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
