//! `verify`'s comparison: the fresh fold in the session's temporary tables against the
//! serving tables, thread by thread and message by message.

use super::tables::quote;
use sqlx::PgConnection;
use threadline_ports::rebuild::Difference;
use threadline_ports::StoreError;
use uuid::Uuid;

/// The rows that the serving tables (in schema `serving`) have wrong against the fresh fold in
/// the session's temporary tables, leaving out serving rows from events after `through`.
pub(super) async fn differences(
    conn: &mut PgConnection,
    serving: &str,
    through: u64,
) -> Result<Vec<Difference>, StoreError> {
    let serving = quote(serving);
    let through = i64::try_from(through).unwrap_or(i64::MAX);
    let mut differences = Vec::new();
    // A row's key: a thread's id; a message's thread and id.
    for (kind, table, key, columns) in [
        (
            "thread",
            "threads",
            "f.id = s.id",
            &["user_json", "created_at", "stream_seq"][..],
        ),
        (
            "message",
            "messages",
            "f.thread_id = s.thread_id AND f.id = s.id",
            &[
                "user_json",
                "body",
                "send_by_user",
                "created_at",
                "stream_seq",
                "json",
            ][..],
        ),
    ] {
        // A message's stored JSON may be missing (a row written before the column, or by an
        // older projector): the API then renders it from the other columns.
        let differing = columns
            .iter()
            .map(|&c| match c {
                "json" => "CASE WHEN s.json IS NOT NULL AND f.json IS DISTINCT FROM s.json \
                           THEN 'json' END"
                    .to_owned(),
                c => format!("CASE WHEN f.{c} IS DISTINCT FROM s.{c} THEN '{c}' END"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let statement = format!(
            "SELECT id, problem, fields FROM ( \
               SELECT coalesce(f.id, s.id) AS id, \
                 CASE WHEN s.id IS NULL THEN 'missing' WHEN f.id IS NULL THEN 'extra' \
                      ELSE 'different' END AS problem, \
                 array_remove(ARRAY[{differing}]::text[], NULL) AS fields, \
                 s.stream_seq AS serving_seq \
               FROM pg_temp.{table} f FULL JOIN {serving}.{table} s ON {key} \
             ) d \
             WHERE problem = 'missing' \
                OR (problem = 'extra' AND serving_seq <= $1) \
                OR (problem = 'different' AND cardinality(fields) > 0) \
             ORDER BY problem, id"
        );
        let rows: Vec<(Uuid, String, Vec<String>)> = sqlx::query_as(&statement)
            .bind(through)
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::database)?;
        differences.extend(rows.into_iter().map(|(id, problem, fields)| Difference {
            kind: kind.to_owned(),
            id,
            fields: if problem == "different" {
                fields
            } else {
                Vec::new()
            },
            problem,
        }));
    }
    Ok(differences)
}
