//! `threadline migrate`: creates the database if it is missing and brings the read model's
//! tables up to date, then exits. A deployment runs it as the tables' owner before the roles
//! start (with `MIGRATE_ON_START=false`, the roles then need no right to change tables); run
//! twice, it changes nothing the second time. The work is threadline-postgres's.

use super::{CommandError, Outcome};
use threadline_postgres::{DatabaseSettings, PgReadModel};

/// Migrates the read model and says so.
pub async fn run(settings: &DatabaseSettings) -> Outcome {
    PgReadModel::options(settings).map_err(CommandError::Invalid)?;
    PgReadModel::migrate(settings).await?;
    println!("the read model's tables are up to date");
    Ok(true)
}
