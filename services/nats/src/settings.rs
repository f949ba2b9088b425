//! Where the event log lives, how it is named, and how to reach it.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use threadline_ports::secret::{Secret, SecretUrl};
use threadline_ports::settings::{parse_bytes, parse_duration, ByteSize};

/// Where the event log lives and how it is named.
#[derive(Debug, Clone, Args)]
pub struct NatsSettings {
    /// URL of the NATS server (JetStream enabled), or of several members of a cluster as a
    /// comma-separated seed list (`nats://n1:4222,nats://n2:4222,nats://n3:4222`). The client
    /// connects to any one that answers, learns the others the cluster announces, and moves to
    /// another when its server goes away.
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
    /// bucket (3 on a 3-node JetStream cluster); the projector's consumer follows its stream.
    /// Those that exist are updated to it on start.
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
        self.nats_servers()?;
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

    /// The servers of NATS_URL, each checked: one URL, or a comma-separated seed list.
    pub fn nats_servers(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        let servers: Vec<&str> = self.nats_url.expose().split(',').map(str::trim).collect();
        if servers.iter().any(|s| s.is_empty()) {
            return Err(format!(
                "NATS_URL {} names an empty server: give one URL, or URLs separated by commas",
                self.nats_url
            ));
        }
        servers
            .iter()
            .map(|server| {
                server.parse::<async_nats::ServerAddr>().map_err(|e| {
                    // Shown redacted, as the setting is: a server of the list may carry a password.
                    let shown = threadline_ports::secret::SecretUrl::from(*server);
                    if servers.len() == 1 {
                        format!("NATS_URL {shown} is not a NATS URL: {e}")
                    } else {
                        format!("NATS_URL: {shown} (of the list) is not a NATS URL: {e}")
                    }
                })
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        nats: NatsSettings,
    }

    fn with_url(url: &str) -> NatsSettings {
        Command::parse_from(["threadline", "--nats-url", url]).nats
    }

    #[test]
    fn nats_url_takes_one_server_or_a_seed_list() {
        assert_eq!(
            with_url("nats://127.0.0.1:4222")
                .nats_servers()
                .map(|s| s.len()),
            Ok(1)
        );
        let list = with_url("nats://n1:4222, nats://u:pw@n2:4222,tls://n3:4222");
        let servers = list.nats_servers().expect("a seed list");
        assert_eq!(servers.len(), 3);
        assert!(servers[2].tls_required());
        assert_eq!(list.validate(), Ok(()));
    }

    #[test]
    fn a_bad_server_of_a_list_is_named_without_its_password() {
        let error = with_url("nats://n1:4222,nats://u:hunter2@n2:notaport")
            .validate()
            .expect_err("a bad port");
        assert!(error.contains("nats://u:***@n2:notaport"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let error = with_url("nats://n1:4222,,nats://n2:4222")
            .validate()
            .expect_err("an empty server");
        assert!(error.contains("empty server"), "{error}");
        let error = with_url("nats://u:hunter2@n1:notaport")
            .validate()
            .expect_err("a bad port");
        assert!(
            error.starts_with("NATS_URL nats://u:***@n1:notaport is not"),
            "{error}"
        );
    }
}
