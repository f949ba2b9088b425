//! The read model: an interface for the domain, and its PostgreSQL implementation.

use crate::settings::DatabaseSettings;
use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use proto_events::{MessageBody, MessageView, ThreadView, Timestamp, UserJson};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::HashMap;
use std::str::FromStr;
use uuid::Uuid;

/// The advisory lock that orders the projector's writes against a rebuild's switch-over:
/// every apply transaction holds it shared, the switch-over holds it exclusively.
pub const SWITCH_LOCK: i64 = 0x7468_7265_6164_6c6e; // "threadln"

/// A thread row as the projector writes it.
#[derive(Debug, Clone)]
pub struct AppliedThread {
    pub id: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
    pub stream_seq: u64,
}

/// A message row as the projector writes it.
#[derive(Debug, Clone)]
pub struct AppliedMessage {
    pub id: Uuid,
    pub thread: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
    pub body: MessageBody,
    pub send_by_user: bool,
    pub stream_seq: u64,
}

/// What the domain needs from the read model.
#[async_trait]
pub trait ReadModel: Send + Sync + 'static {
    /// A thread with its messages in stream order, if the read model has it.
    async fn thread(&self, id: Uuid) -> Result<Option<ThreadView>, StoreError>;

    /// Writes a batch of rows in one transaction. Safe to repeat and to apply out of order:
    /// for each id, the row from the lowest stream sequence wins. Rows PostgreSQL refuses
    /// fail the whole batch with [`StoreError::Refused`].
    async fn apply(
        &self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> Result<(), StoreError>;
}

/// The read model in PostgreSQL.
#[derive(Clone)]
pub struct PgReadModel {
    pool: PgPool,
}

impl PgReadModel {
    /// Checks the URL; a malformed one is a configuration error, not worth retrying.
    pub fn options(settings: &DatabaseSettings) -> Result<PgConnectOptions, String> {
        let url = &settings.database_url;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "DATABASE_URL {url:?} is not a PostgreSQL URL (postgres://user@host:port/database)"
            ));
        }
        let statement_timeout = format!("{}", settings.database_timeout.as_millis());
        PgConnectOptions::from_str(url)
            .map(|o| o.options([("statement_timeout", statement_timeout.as_str())]))
            .map_err(|e| {
                format!(
                    "DATABASE_URL {:?} is not a PostgreSQL URL: {e}",
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
        Ok(Self { pool })
    }

    /// Creates the database if it is missing and brings its tables up to date: what
    /// `threadline migrate` does, as the role that owns the tables. TLS and credentials come
    /// from DATABASE_URL (`sslmode`, `sslrootcert`, user and password).
    pub async fn migrate(settings: &DatabaseSettings) -> Result<(), StoreError> {
        let url = &settings.database_url;
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
}

fn seq(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Keeps, for each id, the row with the lowest stream sequence: one INSERT may not touch a
/// row twice.
fn lowest_per_id<T: Clone>(rows: &[T], id: impl Fn(&T) -> Uuid, seq: impl Fn(&T) -> u64) -> Vec<T> {
    let mut best: HashMap<Uuid, &T> = HashMap::with_capacity(rows.len());
    for row in rows {
        best.entry(id(row))
            .and_modify(|b| {
                if seq(row) < seq(b) {
                    *b = row;
                }
            })
            .or_insert(row);
    }
    best.into_values().cloned().collect()
}

#[async_trait]
impl ReadModel for PgReadModel {
    async fn thread(&self, id: Uuid) -> Result<Option<ThreadView>, StoreError> {
        let thread: Option<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT user_json, created_at FROM threads WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::database)?;
        let Some((user, created_at)) = thread else {
            return Ok(None);
        };
        let rows: Vec<(Uuid, String, DateTime<Utc>, String, bool)> = sqlx::query_as(
            "SELECT id, user_json, created_at, body, send_by_user FROM messages \
             WHERE thread_id = $1 ORDER BY stream_seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::database)?;
        let messages = rows
            .into_iter()
            .map(|(id, user, created_at, body, send_by_user)| {
                Ok(MessageView {
                    id,
                    user: UserJson::from_stored(user).map_err(StoreError::database)?,
                    timestamp: created_at.into(),
                    body: MessageBody::from_stored(body),
                    send_by_user,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(ThreadView {
            id,
            user: UserJson::from_stored(user).map_err(StoreError::database)?,
            timestamp: created_at.into(),
            messages,
        }))
    }

    async fn apply(
        &self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::sql)?;
        // First, so that the statements after it name the serving tables as they are once
        // a rebuild's switch-over (which holds this lock exclusively) has committed.
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(SWITCH_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sql)?;
        apply_rows(&mut tx, threads, messages).await?;
        tx.commit().await.map_err(StoreError::sql)
    }
}

/// Writes rows into the `threads` and `messages` tables that the connection's search path
/// names (the serving ones, or a rebuild's), lowest stream sequence winning per id. The
/// caller owns the transaction.
pub async fn apply_rows(
    conn: &mut PgConnection,
    threads: &[AppliedThread],
    messages: &[AppliedMessage],
) -> Result<(), StoreError> {
    let threads = lowest_per_id(threads, |t| t.id, |t| t.stream_seq);
    let messages = lowest_per_id(messages, |m| m.id, |m| m.stream_seq);
    if !threads.is_empty() {
        sqlx::query(
            "INSERT INTO threads (id, user_json, created_at, stream_seq) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::bigint[]) \
             ON CONFLICT (id) DO UPDATE SET user_json = EXCLUDED.user_json, \
             created_at = EXCLUDED.created_at, stream_seq = EXCLUDED.stream_seq \
             WHERE threads.stream_seq > EXCLUDED.stream_seq",
        )
        .bind(threads.iter().map(|t| t.id).collect::<Vec<_>>())
        .bind(
            threads
                .iter()
                .map(|t| t.user.get().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(
            threads
                .iter()
                .map(|t| t.timestamp.as_datetime())
                .collect::<Vec<_>>(),
        )
        .bind(
            threads
                .iter()
                .map(|t| seq(t.stream_seq))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await
        .map_err(StoreError::sql)?;
    }
    if !messages.is_empty() {
        sqlx::query(
            "INSERT INTO messages (id, thread_id, user_json, body, send_by_user, created_at, stream_seq) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bool[], \
             $6::timestamptz[], $7::bigint[]) \
             ON CONFLICT (id) DO UPDATE SET thread_id = EXCLUDED.thread_id, \
             user_json = EXCLUDED.user_json, body = EXCLUDED.body, \
             send_by_user = EXCLUDED.send_by_user, created_at = EXCLUDED.created_at, \
             stream_seq = EXCLUDED.stream_seq \
             WHERE messages.stream_seq > EXCLUDED.stream_seq",
        )
        .bind(messages.iter().map(|m| m.id).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.thread).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.user.get().to_owned()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.body.as_str().to_owned()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.send_by_user).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.timestamp.as_datetime()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| seq(m.stream_seq)).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await
        .map_err(StoreError::sql)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_of_another_kind_is_refused() {
        let settings = |url: &str| DatabaseSettings {
            database_url: url.to_owned(),
            database_max_connections: 1,
            database_timeout: std::time::Duration::from_secs(1),
            migrate_on_start: true,
        };
        assert!(PgReadModel::options(&settings("mysql://localhost/x")).is_err());
        assert!(PgReadModel::options(&settings("postgres://u@localhost:5432/x")).is_ok());
        assert!(PgReadModel::options(&settings("postgresql://localhost/x")).is_ok());
    }

    #[test]
    fn lowest_sequence_wins_within_a_batch() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let rows = vec![(a, 7u64), (b, 3), (a, 5), (a, 9)];
        let mut kept = lowest_per_id(&rows, |r| r.0, |r| r.1);
        kept.sort();
        assert_eq!(kept, vec![(a, 5), (b, 3)]);
    }
}
