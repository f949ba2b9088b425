//! A fresh read model beside the serving one, as `rebuild` and `verify` fold it: tables of the
//! same shape (columns from the serving tables, so a migration is followed without a change
//! here) loaded with `COPY`, then given the serving tables' indexes and keys and written as
//! the live projector writes ([`PgRebuild`]), or made in the session's temporary schema and
//! compared with the serving tables ([`PgVerify`]).
//!
//! A rebuild builds in schema `threadline_rebuild` and switches over in one transaction: take
//! the switch lock exclusively (every projector transaction holds it shared, so none is in
//! flight and the next ones name the new tables), lock the serving tables, give the new tables
//! the owner and the rights of the serving ones (each role keeps exactly what it may do), move
//! the serving tables out of the way and the new ones into the serving schema. Operators keep
//! querying `threads` and `messages`; the api's prepared statements are re-planned against the
//! new tables by PostgreSQL. Each lock waits at most the switch-over's wait: a lock not
//! granted by then (a reader's open transaction holds the tables, a projector transaction
//! hangs) rolls the try back, so that nobody queues behind it.

pub mod baseline;
mod compare;
pub mod copy;
pub mod tables;

use crate::read_model::CHANGED_CHANNEL;
use crate::{apply_rows, erase_rows, DatabaseSettings, PgReadModel, SWITCH_LOCK};
use copy::{copy_in, CopyChunk, MESSAGE_COLUMNS, THREAD_COLUMNS};
use sqlx::{Connection, Executor, PgConnection, Postgres, Transaction};
use std::ops::Range;
use std::time::Duration;
use tables::quote;
use threadline_ports::rebuild::{
    BulkLoad, Difference, GaveWay, RebuildError, RebuildTarget, SwitchOver, Table, VerifyTarget,
    WriteRows,
};
use threadline_ports::{AppliedMessage, AppliedThread, StoreError};
use uuid::Uuid;

/// Where the new read model is built.
pub const BUILD_SCHEMA: &str = "threadline_rebuild";
/// Where `--keep-old` keeps the replaced read model.
pub const RETIRED_SCHEMA: &str = "threadline_retired";
/// Held for the whole run, so two rebuilds never build at once.
const REBUILD_LOCK: i64 = 0x7468_7265_6164_6c72; // "threadlr"
/// SQLSTATE lock_not_available: a lock not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Tables beside the serving ones on a connection of their own, loaded with `COPY`.
struct Beside {
    conn: PgConnection,
    /// `COPY` statements into the tables, by [`Table`].
    copy: [String; 2],
    /// The schema of the serving tables.
    serving: String,
}

impl Beside {
    /// A connection for long statements, and the schema of the serving tables (created
    /// first if this is a fresh database).
    async fn connect(settings: &DatabaseSettings) -> Result<(PgConnection, String), StoreError> {
        PgReadModel::connect(settings).await?.pool().close().await;
        let mut conn = copy::bulk_connection(settings).await?;
        let serving = tables::serving_schema(&mut conn).await?;
        Ok((conn, serving))
    }

    /// Empty tables shaped like the serving ones, without indexes or keys, in `schema`.
    async fn create(
        mut conn: PgConnection,
        serving: String,
        schema: &str,
    ) -> Result<Self, RebuildError> {
        tables::create_like(&mut conn, schema, &serving).await?;
        Ok(Self {
            conn,
            copy: [
                format!("COPY {schema}.threads ({THREAD_COLUMNS}) FROM STDIN"),
                format!("COPY {schema}.messages ({MESSAGE_COLUMNS}) FROM STDIN"),
            ],
            serving,
        })
    }

    async fn load(
        &mut self,
        rows: &CopyChunk,
        table: Table,
        part: Range<usize>,
    ) -> Result<(), StoreError> {
        let statement = &self.copy[table as usize];
        copy_in(&mut self.conn, statement, rows.part(table, part)).await
    }
}

/// A rebuild's new read model: see the module's documentation. Holds the rebuild lock, so
/// that two rebuilds never build at once.
pub struct PgRebuild {
    beside: Beside,
    /// The statements that give the new tables the serving ones' keys and indexes.
    indexes: Vec<String>,
}

impl PgRebuild {
    /// Takes the rebuild lock ([`RebuildError::Busy`] if another rebuild holds it) and makes
    /// the new tables in `threadline_rebuild`, dropping what an interrupted rebuild left there.
    pub async fn open(settings: &DatabaseSettings) -> Result<Self, RebuildError> {
        let (mut conn, serving) = Beside::connect(settings).await?;
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(REBUILD_LOCK)
            .fetch_one(&mut conn)
            .await
            .map_err(StoreError::database)?;
        if !free {
            return Err(RebuildError::Busy);
        }
        let indexes = tables::index_statements(&mut conn, BUILD_SCHEMA, &serving).await?;
        execute(
            &mut conn,
            &format!("DROP SCHEMA IF EXISTS {BUILD_SCHEMA} CASCADE; CREATE SCHEMA {BUILD_SCHEMA}"),
        )
        .await?;
        let beside = Beside::create(conn, serving, BUILD_SCHEMA).await?;
        Ok(Self { beside, indexes })
    }
}

impl BulkLoad for PgRebuild {
    type Rows = CopyChunk;

    async fn load(
        &mut self,
        rows: &CopyChunk,
        table: Table,
        part: Range<usize>,
    ) -> Result<(), StoreError> {
        self.beside.load(rows, table, part).await
    }
}

impl WriteRows for PgRebuild {
    async fn write(
        &mut self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> Result<(), StoreError> {
        write_in_transaction(&mut self.beside.conn, threads, messages).await
    }

    async fn erase(&mut self, threads: &[Uuid]) -> Result<(), StoreError> {
        erase_in_transaction(&mut self.beside.conn, threads).await
    }
}

impl RebuildTarget for PgRebuild {
    type Switch<'a> = PgSwitch<'a>;

    async fn build_indexes(&mut self) -> Result<(), RebuildError> {
        let conn = &mut self.beside.conn;
        for statement in &self.indexes {
            execute(conn, statement).await?;
        }
        execute(
            conn,
            &format!("ANALYZE {BUILD_SCHEMA}.threads, {BUILD_SCHEMA}.messages"),
        )
        .await?;
        // From here on the new tables are written as the live projector writes the serving
        // ones, by `apply_rows`, which names the tables the search path finds.
        execute(conn, &format!("SET search_path = {BUILD_SCHEMA}")).await?;
        Ok(())
    }

    async fn begin_switch(
        &mut self,
        wait: Duration,
    ) -> Result<Result<PgSwitch<'_>, GaveWay>, RebuildError> {
        let Beside { conn, serving, .. } = &mut self.beside;
        let mut tx = conn.begin().await.map_err(StoreError::database)?;
        let wait = wait.as_millis().max(1);
        execute(&mut tx, &format!("SET LOCAL lock_timeout = {wait}")).await?;
        let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SWITCH_LOCK)
            .execute(&mut *tx)
            .await;
        if !granted(locked)? {
            tx.rollback().await.map_err(StoreError::database)?;
            return Ok(Err(GaveWay("a projector transaction held the switch lock")));
        }
        Ok(Ok(PgSwitch { tx, serving }))
    }

    async fn close(mut self) -> Result<(), RebuildError> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut self.beside.conn)
            .await
            .map_err(StoreError::database)?;
        let _ = self.beside.conn.close().await;
        Ok(())
    }
}

/// A try at the switch-over: its transaction, holding the switch lock.
pub struct PgSwitch<'a> {
    tx: Transaction<'a, Postgres>,
    serving: &'a str,
}

impl WriteRows for PgSwitch<'_> {
    async fn write(
        &mut self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> Result<(), StoreError> {
        write_in_transaction(&mut self.tx, threads, messages).await
    }

    async fn erase(&mut self, threads: &[Uuid]) -> Result<(), StoreError> {
        erase_in_transaction(&mut self.tx, threads).await
    }
}

impl SwitchOver for PgSwitch<'_> {
    async fn complete(mut self, keep_old: bool) -> Result<Result<(), GaveWay>, RebuildError> {
        let serving_q = quote(self.serving);
        let tables = tables::TABLES
            .map(|t| format!("{serving_q}.{t}"))
            .join(", ");
        let held =
            GaveWay("another session held the tables (a reader's open transaction, pg_dump)");
        let lock = format!("LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE");
        if !granted(self.tx.execute(lock.as_str()).await)? {
            self.tx.rollback().await.map_err(StoreError::database)?;
            return Ok(Err(held));
        }
        // Every role keeps exactly the rights it had on the tables being replaced.
        tables::copy_privileges(&mut self.tx, self.serving, BUILD_SCHEMA).await?;
        let switch = switch_statements(&serving_q, keep_old);
        if !granted(self.tx.execute(switch.as_str()).await)? {
            self.tx.rollback().await.map_err(StoreError::database)?;
            return Ok(Err(held));
        }
        self.tx.commit().await.map_err(StoreError::database)?;
        Ok(Ok(()))
    }
}

/// The statements that move the serving tables out of the way and the new ones into their
/// place, run with both locked.
fn switch_statements(serving_q: &str, keep_old: bool) -> String {
    let mut switch =
        format!("DROP SCHEMA IF EXISTS {RETIRED_SCHEMA} CASCADE; CREATE SCHEMA {RETIRED_SCHEMA};");
    for table in tables::TABLES {
        switch.push_str(&format!(
            "ALTER TABLE {serving_q}.{table} SET SCHEMA {RETIRED_SCHEMA};\
             ALTER TABLE {BUILD_SCHEMA}.{table} SET SCHEMA {serving_q};"
        ));
    }
    switch.push_str(&format!("DROP SCHEMA {BUILD_SCHEMA};"));
    // Delivered at commit: API replicas drop the reads they keep in memory.
    switch.push_str(&format!("NOTIFY {CHANGED_CHANNEL};"));
    if !keep_old {
        switch.push_str(&format!("DROP SCHEMA {RETIRED_SCHEMA} CASCADE;"));
    }
    switch
}

/// Whether a statement got its locks: `false` if one was not granted within the
/// transaction's `lock_timeout`; other errors are errors.
fn granted<T>(result: Result<T, sqlx::Error>) -> Result<bool, StoreError> {
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
            Ok(false)
        }
        Err(e) => Err(StoreError::database(e)),
    }
}

/// Writes rows with [`apply_rows`] in a transaction of their own (a savepoint within the
/// switch-over's); rolled back if PostgreSQL refuses them.
async fn write_in_transaction(
    conn: &mut PgConnection,
    threads: &[AppliedThread],
    messages: &[AppliedMessage],
) -> Result<(), StoreError> {
    let mut tx = conn.begin().await.map_err(StoreError::database)?;
    match apply_rows(&mut tx, threads, messages).await {
        Ok(()) => tx.commit().await.map_err(StoreError::database),
        Err(refused @ StoreError::Refused { .. }) => {
            tx.rollback().await.map_err(StoreError::database)?;
            Err(refused)
        }
        Err(e) => Err(e),
    }
}

/// Deletes the rows of erased threads with [`erase_rows`] in a transaction of its own (a
/// savepoint within the switch-over's).
async fn erase_in_transaction(conn: &mut PgConnection, threads: &[Uuid]) -> Result<(), StoreError> {
    let mut tx = conn.begin().await.map_err(StoreError::database)?;
    erase_rows(&mut tx, threads).await?;
    tx.commit().await.map_err(StoreError::database)
}

/// A verification's fresh fold: temporary tables of its own session, which nobody else sees.
pub struct PgVerify {
    beside: Beside,
}

impl PgVerify {
    /// Makes the temporary tables, shaped like the serving ones.
    pub async fn open(settings: &DatabaseSettings) -> Result<Self, RebuildError> {
        let (conn, serving) = Beside::connect(settings).await?;
        let beside = Beside::create(conn, serving, "pg_temp").await?;
        Ok(Self { beside })
    }
}

impl BulkLoad for PgVerify {
    type Rows = CopyChunk;

    async fn load(
        &mut self,
        rows: &CopyChunk,
        table: Table,
        part: Range<usize>,
    ) -> Result<(), StoreError> {
        self.beside.load(rows, table, part).await
    }
}

impl VerifyTarget for PgVerify {
    async fn differences(&mut self, through: u64) -> Result<Vec<Difference>, StoreError> {
        let conn = &mut self.beside.conn;
        execute(conn, "ANALYZE pg_temp.threads; ANALYZE pg_temp.messages").await?;
        compare::differences(conn, &self.beside.serving, through).await
    }
}

/// Runs `statements` (one or several, without parameters).
async fn execute(conn: &mut PgConnection, statements: &str) -> Result<(), StoreError> {
    conn.execute(statements)
        .await
        .map(|_| ())
        .map_err(StoreError::database)
}
