//! A process refuses to start on a password that the deployment examples publish.

use clap::{ArgAction, ArgMatches, Args};
use threadline_ports::secret::{Secret, SecretUrl};

/// The passwords that threadline's deployment examples publish (deploy/postgres/roles.sql,
/// docker-compose.yml, deploy/k8s, deploy/nats): one list, so that whatever the examples
/// say, a process started with one of them refuses to run outside a trial. Any password that
/// ends in `change-me` counts too, as the examples name theirs.
pub const EXAMPLE_PASSWORDS: &[&str] = &[
    "change-me",
    "owner-change-me",
    "api-change-me",
    "projector-change-me",
    "postgres-change-me",
    "nats-api-change-me",
    "nats-projector-change-me",
    "nats-gateway-change-me",
    "nats-operator-change-me",
    "nats-integration-change-me",
];

/// Whether `password` is one the deployment examples publish.
pub fn is_example_password(password: &str) -> bool {
    let password = password.trim();
    EXAMPLE_PASSWORDS.contains(&password) || password.to_ascii_lowercase().ends_with("change-me")
}

/// Whether this process may start with a password the deployment examples publish.
#[derive(Debug, Clone, Args)]
pub struct ExamplePasswordSettings {
    /// Start even with a password that threadline's deployment examples publish (`change-me`,
    /// `api-change-me`, `nats-api-change-me`, …): for a trial only. Without it, a role or
    /// command given one stops at once with one line naming the setting.
    #[arg(
        long,
        env = "ALLOW_EXAMPLE_PASSWORDS",
        default_value_t = false,
        action = ArgAction::Set,
        global = true
    )]
    pub allow_example_passwords: bool,
}

/// The credential-bearing settings, by clap's id, and the names an operator knows them by.
const URL_SETTINGS: [(&str, &str); 2] =
    [("database_url", "DATABASE_URL"), ("nats_url", "NATS_URL")];
const SECRET_SETTINGS: [(&str, &str); 4] = [
    ("nats_password", "NATS_PASSWORD"),
    ("nats_token", "NATS_TOKEN"),
    ("agent_token", "AGENT_TOKEN"),
    ("agent_token_file", "AGENT_TOKEN_FILE"),
];

/// Refuses a command line (any role or command: its settings as clap read them, however deep
/// the subcommand) whose credentials include a password the deployment examples publish.
pub fn refuse_example_passwords(matches: &ArgMatches) -> Result<(), String> {
    let mut credentials: Vec<(&str, Vec<String>)> = Vec::new();
    for (id, name) in URL_SETTINGS {
        if let Ok(Some(url)) = matches.try_get_one::<SecretUrl>(id) {
            credentials.push((name, url.credentials()));
        }
    }
    for (id, name) in SECRET_SETTINGS {
        if let Ok(Some(secret)) = matches.try_get_one::<Secret>(id) {
            credentials.push((name, vec![secret.expose().to_owned()]));
        }
    }
    if let Some((name, _)) = credentials
        .iter()
        .find(|(_, found)| found.iter().any(|p| is_example_password(p)))
    {
        return Err(format!(
            "{name} holds a password that threadline's deployment examples publish: give the \
             role a password of your own, or set ALLOW_EXAMPLE_PASSWORDS=true for a trial"
        ));
    }
    match matches.subcommand() {
        Some((_, inner)) => refuse_example_passwords(inner),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        role: Role,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Role {
        Api(Box<threadline_nats::NatsSettings>),
        Migrate(threadline_postgres::DatabaseSettings),
    }

    fn refused(args: &[&str]) -> Result<(), String> {
        use clap::CommandFactory;
        let matches = Cli::command()
            .try_get_matches_from(args)
            .map_err(|e| e.to_string())?;
        refuse_example_passwords(&matches)
    }

    #[test]
    fn an_example_password_in_any_credential_setting_is_refused() {
        let ours = "postgres://api:k3GvT9qZx1@db/threadline";
        assert_eq!(refused(&["t", "migrate", "--database-url", ours]), Ok(()));
        let theirs = "postgres://api:api-change-me@db/threadline";
        let error = refused(&["t", "migrate", "--database-url", theirs]).unwrap_err();
        assert!(error.starts_with("DATABASE_URL holds"), "{error}");
        assert!(!error.contains("api-change-me"), "{error}");
        let error = refused(&[
            "t",
            "api",
            "--nats-user",
            "api",
            "--nats-password",
            "nats-api-change-me",
        ]);
        assert!(error.is_err_and(|e| e.starts_with("NATS_PASSWORD")));
        let error = refused(&["t", "api", "--nats-token", "change-me"]);
        assert!(error.is_err_and(|e| e.starts_with("NATS_TOKEN")));
        let error = refused(&[
            "t",
            "api",
            "--nats-url",
            "nats://u:nats-api-change-me@n:4222",
        ]);
        assert!(error.is_err_and(|e| e.starts_with("NATS_URL")));
        assert_eq!(refused(&["t", "api"]), Ok(()));
    }

    #[test]
    fn the_examples_passwords_are_known() {
        for password in EXAMPLE_PASSWORDS {
            assert!(is_example_password(password), "{password}");
        }
        assert!(is_example_password("nats-new-role-change-me"));
        assert!(!is_example_password("k3GvT9qZx1"));
        assert!(!is_example_password(""));
    }
}
