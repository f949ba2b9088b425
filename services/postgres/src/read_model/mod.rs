//! The read model in PostgreSQL: the pool and its settings, the migrations, and the channel
//! that says when the serving tables were replaced; reads in [`reads`], writes in [`writes`].

mod reads;
mod writes;

pub use reads::{WHOLE_READ_BYTES, WHOLE_READ_MESSAGES};
pub use writes::{apply_rows, erase_rows, SWITCH_LOCK};

use crate::settings::DatabaseSettings;
use async_trait::async_trait;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use std::str::FromStr;
use std::sync::Arc;
use threadline_ports::{
    AppliedMessage, AppliedThread, Cause, Changes, Dependency, ReadModel, StoreError, ThreadRead,
    ThreadRows,
};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// The PostgreSQL channel told (`NOTIFY`) when the serving read model changes by any other
/// way than the projector applying events: a rebuild's switch-over. A process that keeps
/// reads in memory drops them when told.
pub const CHANGED_CHANNEL: &str = "threadline_read_model_changed";

/// How often the connection that listens for read model changes is asked whether it is
/// alive, and how long it may take to answer: a connection lost without a reset (a failover,
/// a partition) is noticed within both.
const LISTENER_PING_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const LISTENER_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn listen(pool: &PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(CHANGED_CHANNEL).await?;
    Ok(listener)
}

/// The read model in PostgreSQL.
#[derive(Clone)]
pub struct PgReadModel {
    pool: PgPool,
    /// Turns among long reads: at most half the pool, so that they cannot take every
    /// connection from short reads and writes.
    long_reads: Arc<Semaphore>,
    long_reads_waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// How long a long read may take in all.
    long_read_timeout: std::time::Duration,
}

impl PgReadModel {
    /// Checks the URL; a malformed one is a configuration error, not worth retrying.
    pub fn options(settings: &DatabaseSettings) -> Result<PgConnectOptions, String> {
        let url = settings.database_url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "DATABASE_URL {} is not a PostgreSQL URL (postgres://user@host:port/database)",
                settings.database_url
            ));
        }
        let statement_timeout = format!("{}", settings.database_timeout.as_millis());
        PgConnectOptions::from_str(url)
            .map(|o| o.options([("statement_timeout", statement_timeout.as_str())]))
            .map_err(|e| {
                format!(
                    "DATABASE_URL {} is not a PostgreSQL URL: {e}",
                    settings.database_url
                )
            })
    }

    /// Connects; with MIGRATE_ON_START (the default) it first creates the database if it is
    /// missing and runs the migrations, as [`PgReadModel::migrate`] does.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        if settings.migrate_on_start {
            Self::migrate(settings).await?;
        }
        let pool = Self::pool_of(settings).await?;
        let long_reads = (settings.database_max_connections / 2).max(1) as usize;
        Ok(Self {
            pool,
            long_reads: Arc::new(Semaphore::new(long_reads)),
            long_reads_waiting: Arc::default(),
            long_read_timeout: settings.long_read_timeout,
        })
    }

    /// Creates the database if it is missing and brings its tables up to date: what
    /// `threadline migrate` does, as the role that owns the tables. TLS and credentials come
    /// from DATABASE_URL (`sslmode`, `sslrootcert`, user and password).
    pub async fn migrate(settings: &DatabaseSettings) -> Result<(), StoreError> {
        let url = settings.database_url.expose();
        let options = Self::options(settings).map_err(StoreError::database)?;
        let exists = Postgres::database_exists(url)
            .await
            .map_err(StoreError::database)?;
        if !exists {
            // Another process may create it at the same moment; only a database that is
            // still missing afterwards is an error.
            if let Err(e) = Postgres::create_database(url).await {
                if !Postgres::database_exists(url).await.unwrap_or(false) {
                    return Err(StoreError::database(e));
                }
            } else {
                tracing::info!(database = options.get_database(), "created the database");
            }
        }
        let pool = Self::pool_of(settings).await?;
        let migrated = sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::database(format!("migrations failed: {e}")));
        pool.close().await;
        migrated
    }

    async fn pool_of(settings: &DatabaseSettings) -> Result<PgPool, StoreError> {
        let options = Self::options(settings).map_err(StoreError::database)?;
        PgPoolOptions::new()
            .max_connections(settings.database_max_connections)
            .acquire_timeout(settings.database_timeout)
            .connect_with(options)
            .await
            .map_err(StoreError::database)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Listens on [`CHANGED_CHANNEL`] on a connection of its own until `shutdown`, and counts
    /// what it hears in the returned [`Changes`]: see there.
    pub fn watch_changes(&self, shutdown: tokio_util::sync::CancellationToken) -> Changes {
        let changes = Changes::default();
        let options = (*self.pool.connect_options()).clone();
        let epoch = changes.clone();
        tokio::spawn(async move {
            // One connection, apart from the pool that serves reads.
            // A connection given up is tested before it is used again, within the bound.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(LISTENER_PING_EVERY + LISTENER_PING_TIMEOUT)
                .connect_lazy_with(options);
            let mut next = 1;
            while !shutdown.is_cancelled() {
                epoch.set(0);
                let mut listener = match listen(&pool).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::debug!("cannot listen for read model changes: {e}");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        }
                    }
                };
                // Everything heard of before is forgotten: notices may have been missed.
                epoch.set(next);
                next += 1;
                let mut ping = tokio::time::interval(LISTENER_PING_EVERY);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        // A connection that hears nothing may be gone without a reset: it
                        // must answer, or it is given up (and nothing kept is served until
                        // another one listens).
                        _ = ping.tick() => {
                            let alive = tokio::time::timeout(
                                LISTENER_PING_TIMEOUT,
                                sqlx::query("SELECT 1").execute(&mut listener),
                            )
                            .await;
                            if !matches!(alive, Ok(Ok(_))) {
                                epoch.set(0);
                                tracing::warn!(
                                    "the connection listening for read model changes does not \
                                     answer; threads kept in memory are not served until it does"
                                );
                                break;
                            }
                        }
                        heard = listener.try_recv() => match heard {
                            Ok(Some(_)) => {
                                tracing::info!("the serving read model was replaced");
                                epoch.set(next);
                                next += 1;
                            }
                            // The connection was lost: notices may be missed until the next.
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            epoch.set(0);
            pool.close().await;
        });
        changes
    }
}

#[async_trait]
impl ReadModel for PgReadModel {
    async fn thread(&self, id: Uuid) -> Result<Option<ThreadRead>, StoreError> {
        self.read_thread(id).await
    }

    async fn apply(
        &self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> Result<(), StoreError> {
        self.apply_batch(threads, messages).await
    }

    async fn erase(&self, threads: &[Uuid]) -> Result<ThreadRows, StoreError> {
        self.erase_threads(threads).await
    }

    async fn rows_of(&self, thread: Uuid) -> Result<ThreadRows, StoreError> {
        let (threads, messages): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM threads WHERE id = $1), \
                    (SELECT count(*) FROM messages WHERE thread_id = $1)",
        )
        .bind(thread)
        .fetch_one(&self.pool)
        .await
        .map_err(crate::sql_error)?;
        Ok(ThreadRows {
            threads: threads as u64,
            messages: messages as u64,
        })
    }
}

#[async_trait]
impl Dependency for PgReadModel {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> Result<(), Cause> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map(|_| ())
            .map_err(|e| StoreError::database(e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_of_another_kind_is_refused() {
        let settings = |url: &str| DatabaseSettings {
            database_url: url.into(),
            database_max_connections: 1,
            database_timeout: std::time::Duration::from_secs(1),
            long_read_timeout: std::time::Duration::from_secs(1),
            migrate_on_start: true,
        };
        assert!(PgReadModel::options(&settings("mysql://localhost/x")).is_err());
        assert!(PgReadModel::options(&settings("postgres://u@localhost:5432/x")).is_ok());
        assert!(PgReadModel::options(&settings("postgresql://localhost/x")).is_ok());
    }
}
