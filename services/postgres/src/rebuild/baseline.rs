//! The yardstick of the rebuild benchmark (`threadline-projector`'s `rebuild_bench`): bare
//! `COPY` of the rows a rebuild wrote into empty tables of the same shape, and the same index
//! build after it; and a fresh database for its run of the live projector.

use super::copy::{bulk_connection, MESSAGE_COLUMNS, THREAD_COLUMNS};
use super::tables;
use crate::DatabaseSettings;
use futures::StreamExt;
use sqlx::migrate::MigrateDatabase;
use sqlx::PgConnection;
use std::time::{Duration, Instant};
use threadline_ports::rebuild::RebuildError;
use threadline_ports::StoreError;

const COPY_SCHEMA: &str = "threadline_copy_bench";

/// What bare `COPY` took.
#[derive(Debug, Clone, Copy)]
pub struct CopyBaseline {
    pub rows: u64,
    /// The `COPY` of every row.
    pub copy: Duration,
    /// The index build after it.
    pub indexes: Duration,
}

/// COPYs the serving rows, read back from the read model, into empty tables of the same
/// shape (in a schema of their own, dropped after), then builds the same indexes.
pub async fn copy_baseline(database: &DatabaseSettings) -> Result<CopyBaseline, RebuildError> {
    let mut conn = bulk_connection(database).await?;
    let serving = tables::serving_schema(&mut conn).await?;
    let mut data = Vec::new();
    for (table, columns) in [("threads", THREAD_COLUMNS), ("messages", MESSAGE_COLUMNS)] {
        data.push((table, columns, copy_out(&mut conn, table, columns).await?));
    }
    execute(
        &mut conn,
        &format!("DROP SCHEMA IF EXISTS {COPY_SCHEMA} CASCADE; CREATE SCHEMA {COPY_SCHEMA}"),
    )
    .await?;
    tables::create_like(&mut conn, COPY_SCHEMA, &serving).await?;
    let indexes = tables::index_statements(&mut conn, COPY_SCHEMA, &serving).await?;

    let started = Instant::now();
    let mut rows = 0;
    for (table, columns, text) in &data {
        let mut copy = conn
            .copy_in_raw(&format!(
                "COPY {COPY_SCHEMA}.{table} ({columns}) FROM STDIN"
            ))
            .await
            .map_err(StoreError::database)?;
        for chunk in text.chunks(4 << 20) {
            copy.send(chunk).await.map_err(StoreError::database)?;
        }
        rows += copy.finish().await.map_err(StoreError::database)?;
    }
    let copy = started.elapsed();
    let started = Instant::now();
    for statement in &indexes {
        execute(&mut conn, statement).await?;
    }
    let indexed = started.elapsed();
    execute(&mut conn, &format!("DROP SCHEMA {COPY_SCHEMA} CASCADE")).await?;
    Ok(CopyBaseline {
        rows,
        copy,
        indexes: indexed,
    })
}

/// Drops the database of `database`'s URL if it exists (the read model's connection creates
/// it again, empty).
pub async fn drop_database(database: &DatabaseSettings) -> Result<(), StoreError> {
    let url = database.database_url.expose();
    if sqlx::Postgres::database_exists(url)
        .await
        .map_err(StoreError::database)?
    {
        sqlx::Postgres::drop_database(url)
            .await
            .map_err(StoreError::database)?;
    }
    Ok(())
}

async fn copy_out(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    let mut stream = conn
        .copy_out_raw(&format!("COPY {table} ({columns}) TO STDOUT"))
        .await
        .map_err(StoreError::database)?;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.map_err(StoreError::database)?);
    }
    Ok(out)
}

async fn execute(conn: &mut PgConnection, statements: &str) -> Result<(), StoreError> {
    super::execute(conn, statements).await
}
