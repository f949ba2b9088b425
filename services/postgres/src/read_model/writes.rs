//! Writing the projector's rows: one transaction per batch, lowest stream sequence winning.

use super::PgReadModel;
use crate::sql_error;
use sqlx::PgConnection;
use std::collections::HashMap;
use threadline_ports::{AppliedMessage, AppliedThread, StoreError, ThreadRows};
use uuid::Uuid;

/// The advisory lock that orders the projector's writes against a rebuild's switch-over:
/// every apply transaction holds it shared, the switch-over holds it exclusively.
pub const SWITCH_LOCK: i64 = 0x7468_7265_6164_6c6e; // "threadln"

fn seq(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Keeps, for each key, the row with the lowest stream sequence: one INSERT may not touch a
/// row twice.
fn lowest_per_id<T: Clone, K: std::hash::Hash + Eq>(
    rows: &[T],
    id: impl Fn(&T) -> K,
    seq: impl Fn(&T) -> u64,
) -> Vec<T> {
    let mut best: HashMap<K, &T> = HashMap::with_capacity(rows.len());
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

impl PgReadModel {
    /// Writes a batch in one transaction, in turn with a rebuild's switch-over.
    pub(super) async fn apply_batch(
        &self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        // First, so that the statements after it name the serving tables as they are once
        // a rebuild's switch-over (which holds this lock exclusively) has committed.
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(SWITCH_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(sql_error)?;
        apply_rows(&mut tx, threads, messages).await?;
        tx.commit().await.map_err(sql_error)
    }
}

impl PgReadModel {
    /// Deletes the rows of erased threads in one transaction, in turn with a rebuild's
    /// switch-over.
    pub(super) async fn erase_threads(&self, threads: &[Uuid]) -> Result<ThreadRows, StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(SWITCH_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(sql_error)?;
        let erased = erase_rows(&mut tx, threads).await?;
        tx.commit().await.map_err(sql_error)?;
        Ok(erased)
    }
}

/// Deletes every row of `threads` from the `threads` and `messages` tables that the
/// connection's search path names (the serving ones, or a rebuild's); how many went. The
/// caller owns the transaction.
pub async fn erase_rows(
    conn: &mut PgConnection,
    threads: &[Uuid],
) -> Result<ThreadRows, StoreError> {
    if threads.is_empty() {
        return Ok(ThreadRows::default());
    }
    let messages = sqlx::query("DELETE FROM messages WHERE thread_id = ANY($1)")
        .bind(threads)
        .execute(&mut *conn)
        .await
        .map_err(sql_error)?
        .rows_affected();
    let threads = sqlx::query("DELETE FROM threads WHERE id = ANY($1)")
        .bind(threads)
        .execute(&mut *conn)
        .await
        .map_err(sql_error)?
        .rows_affected();
    Ok(ThreadRows { threads, messages })
}

/// Writes rows into the `threads` and `messages` tables that the connection's search path
/// names (the serving ones, or a rebuild's), lowest stream sequence winning per thread id and
/// per message (a thread and a message id: the rule a gateway drops repeats by, so that a
/// socket and a GET show the same messages). The caller owns the transaction.
pub async fn apply_rows(
    conn: &mut PgConnection,
    threads: &[AppliedThread],
    messages: &[AppliedMessage],
) -> Result<(), StoreError> {
    let threads = lowest_per_id(threads, |t| t.id, |t| t.stream_seq);
    let messages = lowest_per_id(messages, |m| (m.thread, m.id), |m| m.stream_seq);
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
        .map_err(sql_error)?;
    }
    if !messages.is_empty() {
        sqlx::query(
            "INSERT INTO messages (id, thread_id, user_json, body, send_by_user, created_at, stream_seq, json) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bool[], \
             $6::timestamptz[], $7::bigint[], $8::text[]) \
             ON CONFLICT (thread_id, id) DO UPDATE SET user_json = EXCLUDED.user_json, body = EXCLUDED.body, \
             send_by_user = EXCLUDED.send_by_user, created_at = EXCLUDED.created_at, \
             stream_seq = EXCLUDED.stream_seq, json = EXCLUDED.json \
             WHERE messages.stream_seq > EXCLUDED.stream_seq",
        )
        .bind(messages.iter().map(|m| m.id).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.thread).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.user.get().to_owned()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.body.as_str().to_owned()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.send_by_user).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.timestamp.as_datetime()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| seq(m.stream_seq)).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.json()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await
        .map_err(sql_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn lowest_sequence_wins_within_a_batch() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let rows = vec![(a, 7u64), (b, 3), (a, 5), (a, 9)];
        let mut kept = lowest_per_id(&rows, |r| r.0, |r| r.1);
        kept.sort();
        assert_eq!(kept, vec![(a, 5), (b, 3)]);
    }

    #[test]
    fn one_message_id_on_two_threads_keeps_a_row_on_each() {
        let (a, b, id) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(7));
        let rows = vec![(a, id, 4u64), (b, id, 5), (b, id, 6), (a, id, 3)];
        let mut kept = lowest_per_id(&rows, |r| (r.0, r.1), |r| r.2);
        kept.sort();
        assert_eq!(kept, vec![(a, id, 3), (b, id, 5)]);
    }
}
