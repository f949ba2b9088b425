//! Reading a thread: whole in one round trip when it is short, else streamed page by page
//! from one snapshot as the reader takes the pages.

use super::PgReadModel;
use crate::sql_error;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proto_events::{ThreadView, UserJson};
use threadline_ports::{report, Backend, StoreError, ThreadRead};
use uuid::Uuid;

/// Threads up to this many messages are read whole, in one round trip.
pub const WHOLE_READ_MESSAGES: i64 = 1_000;
/// ... and up to this many bytes of bodies and users.
pub const WHOLE_READ_BYTES: i64 = 1 << 20;
/// Messages per page of a streamed thread, at most ...
const PAGE_MESSAGES: i64 = 1_000;
/// ... and bytes of their JSON (of bodies and users for a row without stored JSON), unless
/// the page's one message is larger.
const PAGE_BYTES: i64 = 1 << 20;
/// Pages a streamed thread reads ahead of its reader.
const PAGES_AHEAD: usize = 2;
/// How long a streamed thread waits for its reader to take a page before it gives up, freeing
/// its connection.
const SLOW_READER: std::time::Duration = std::time::Duration::from_secs(30);
/// How long after the wait for a slow reader a long read's transaction may stay idle before
/// PostgreSQL ends it (`idle_in_transaction_session_timeout`): a bound that holds even if
/// the process stops tending the read.
const IDLE_IN_LONG_READ_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Long reads waiting for a turn, at most; more are answered 503 at once. A turn always comes:
/// a long read's pages are bounded by DATABASE_TIMEOUT each and by SLOW_READER for its reader.
const LONG_READS_WAITING: usize = 64;

/// A row of a whole read: the thread, and the JSON of one of its messages if it has any, with
/// how many messages and bytes the first ones have.
type WholeRow = (
    String,
    DateTime<Utc>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// A page of a long thread: its messages' JSON joined by commas, the last one's sequence,
/// how many, and how many the page's count bound would have taken (more than the page holds
/// when its byte bound cut it).
type PageRow = (Option<String>, Option<i64>, i64, Option<i64>);

/// A message as the public JSON of a thread's `messages` holds it: the `json` column the
/// projector wrote with [`MessageJson`], so that a read only copies bytes, in PostgreSQL and
/// in the API. A row without it (written before the column, or by an older projector during
/// a rolling upgrade) is rendered by PostgreSQL byte for byte as `serde_json` writes a
/// [`proto_events::MessageView`]: ids and timestamps in the same form, `user` as stored, and the body
/// escaped as JSON strings are (PostgreSQL's `to_json` and `serde_json` escape the same
/// characters the same way). It names the row `m`.
const MESSAGE_JSON: &str = r#"coalesce(m.json, concat('{"id":"', m.id, '","user":', m.user_json, ',"timestamp":"', to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '","body":', to_json(m.body), ',"send_by_user":', CASE WHEN m.send_by_user THEN 'true' ELSE 'false' END, '}'))"#;

impl PgReadModel {
    /// A thread with its messages: whole in one round trip if it is short, else streamed.
    pub(super) async fn read_thread(&self, id: Uuid) -> Result<Option<ThreadRead>, StoreError> {
        // One round trip: the thread and its first messages, up to a count. When they are
        // too many or too large, they come without their JSON (their bodies are not even
        // read), and the thread is streamed instead.
        let rows: Vec<WholeRow> = sqlx::query_as(&format!(
            "SELECT t.user_json, t.created_at, \
               CASE WHEN m.count <= $3 AND m.bytes <= $4 THEN {MESSAGE_JSON} END, \
               m.count, m.bytes \
             FROM threads t LEFT JOIN LATERAL ( \
               SELECT *, count(*) OVER () AS count, \
                 sum(octet_length(body) + octet_length(user_json)) OVER () AS bytes \
               FROM (SELECT * FROM messages WHERE thread_id = t.id \
                     ORDER BY stream_seq LIMIT $2) first \
             ) m ON true \
             WHERE t.id = $1 \
             ORDER BY m.stream_seq"
        ))
        .bind(id)
        .bind(WHOLE_READ_MESSAGES + 1)
        .bind(WHOLE_READ_MESSAGES)
        .bind(WHOLE_READ_BYTES)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_error)?;
        let Some((user, created_at, _, count, bytes)) = rows.first() else {
            return Ok(None);
        };
        if count.unwrap_or(0) > WHOLE_READ_MESSAGES || bytes.unwrap_or(0) > WHOLE_READ_BYTES {
            return self.stream_thread(id).await.map(Some);
        }
        let mut body = ThreadBody::new(id, user.clone(), *created_at)?;
        for (_, _, message, _, _) in &rows {
            if let Some(message) = message {
                body.push(message);
            }
        }
        Ok(Some(ThreadRead::Whole(body.finish())))
    }

    /// A long thread, streamed: waits for a turn among long reads, then reads it page by
    /// page in one read-only snapshot, each page once the reader has taken the one before.
    async fn stream_thread(&self, id: Uuid) -> Result<ThreadRead, StoreError> {
        let turn = {
            let waiting = WaitingGuard::join(&self.long_reads_waiting, LONG_READS_WAITING)
                .ok_or_else(|| StoreError::Overloaded {
                    backend: Backend::Postgres,
                    cause: format!("{LONG_READS_WAITING} long reads are waiting already").into(),
                })?;
            let turn = self.long_reads.clone().acquire_owned().await;
            drop(waiting);
            turn.map_err(StoreError::database)?
        };
        // Dropped unfinished, the transaction is rolled back before its connection is reused.
        let mut conn = self.pool.begin().await.map_err(sql_error)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *conn)
            .await
            .map_err(sql_error)?;
        // The snapshot is held while the reader takes each page: PostgreSQL ends the
        // transaction if it stays idle past the wait for a slow reader, whatever this
        // process does meanwhile.
        let idle = SLOW_READER.min(self.long_read_timeout) + IDLE_IN_LONG_READ_MARGIN;
        sqlx::query(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}",
            idle.as_millis()
        ))
        .execute(&mut *conn)
        .await
        .map_err(sql_error)?;
        let deadline = tokio::time::Instant::now() + self.long_read_timeout;
        let thread: Option<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT user_json, created_at FROM threads WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sql_error)?;
        let Some((user, created_at)) = thread else {
            // Gone since the first read: only a rebuild's switch-over can do that.
            return Err(StoreError::database(
                "the thread left the read model while being read",
            ));
        };
        // Each page continues an index scan in stream order (whatever the table's statistics
        // say: a page must never sort the rest of the thread).
        for setting in [
            "SET LOCAL enable_sort = off",
            "SET LOCAL enable_bitmapscan = off",
        ] {
            sqlx::query(setting)
                .execute(&mut *conn)
                .await
                .map_err(sql_error)?;
        }
        let mut body = ThreadBody::new(id, user, created_at)?;
        let (pages, taken) = tokio::sync::mpsc::channel(PAGES_AHEAD);
        tokio::spawn(async move {
            let _turn = turn;
            let started = std::time::Instant::now();
            // A page waits for its reader at most SLOW_READER, and the whole read ends by
            // its deadline: a reader that takes a page just before each wait ends cannot
            // hold the snapshot for longer.
            let send = |page| {
                let pages = &pages;
                async move {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let wait = SLOW_READER.min(left);
                    matches!(
                        tokio::time::timeout(wait, pages.send(page)).await,
                        Ok(Ok(()))
                    )
                }
            };
            let mut after = -1i64;
            loop {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        thread_id = %id,
                        "a long read took longer than LONG_READ_TIMEOUT; its body is cut short"
                    );
                    break;
                }
                // A page comes as one value: the API only copies its bytes. It holds the
                // next messages up to a count and up to a size (known without reading the
                // bodies), and at least one; only those are rendered.
                let page: Result<PageRow, StoreError> = sqlx::query_as(&format!(
                    "SELECT string_agg({MESSAGE_JSON}, ',' ORDER BY m.stream_seq), \
                       max(m.stream_seq), count(*), max(m.considered) \
                     FROM (SELECT *, sum(size) OVER (ORDER BY stream_seq) - size AS before, \
                             count(*) OVER () AS considered \
                           FROM (SELECT *, coalesce(octet_length(json), \
                                   octet_length(body) + octet_length(user_json) + 200) AS size \
                                 FROM messages WHERE thread_id = $1 AND stream_seq > $2 \
                                 ORDER BY stream_seq LIMIT $3) first) m \
                     WHERE m.before < $4"
                ))
                .bind(id)
                .bind(after)
                .bind(PAGE_MESSAGES)
                .bind(PAGE_BYTES)
                .fetch_one(&mut *conn)
                .await
                .map_err(sql_error);
                let (messages, last, count, considered) = match page {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(
                            thread_id = %id,
                            "reading a long thread failed: {}",
                            report(&e)
                        );
                        send(Err(e)).await;
                        return;
                    }
                };
                let last_page =
                    considered.unwrap_or(0) < PAGE_MESSAGES && count == considered.unwrap_or(0);
                if let (Some(messages), Some(last)) = (messages, last) {
                    body.push(&messages);
                    after = last;
                }
                let page = if last_page {
                    body.finish()
                } else {
                    body.take()
                };
                if !send(Ok(page)).await {
                    tracing::debug!(thread_id = %id, "a long read's client stopped taking pages");
                    break;
                }
                if last_page {
                    break;
                }
            }
            if let Err(e) = conn.commit().await {
                tracing::debug!("ending a long read: {e}");
            }
            tracing::debug!(thread_id = %id, elapsed = ?started.elapsed(), "long read done");
        });
        // Past the deadline the body ends with an error, whatever pages are still queued, so
        // that the connection ends early and the client sees a truncated body.
        let pages = futures::stream::unfold(Some(taken), move |taken| async move {
            let mut taken = taken?;
            if tokio::time::Instant::now() >= deadline {
                let late = StoreError::database("the long read took longer than LONG_READ_TIMEOUT");
                return Some((Err(late), None));
            }
            taken.recv().await.map(|page| (page, Some(taken)))
        });
        Ok(ThreadRead::Streamed(pages.boxed()))
    }
}

/// One place in a bounded queue, given up when dropped (also when the waiting request is).
struct WaitingGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> WaitingGuard<'a> {
    fn join(waiting: &'a std::sync::atomic::AtomicUsize, most: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < most).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(waiting))
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The JSON of a [`ThreadView`] written piece by piece from its messages' JSON: the same
/// bytes `serde_json` writes for the whole value.
struct ThreadBody {
    buffer: Vec<u8>,
    messages: usize,
}

impl ThreadBody {
    /// Starts with the thread's JSON up to the opening bracket of its messages.
    fn new(id: Uuid, user: String, created_at: DateTime<Utc>) -> Result<Self, StoreError> {
        let empty = ThreadView {
            id,
            user: UserJson::from_stored(user).map_err(StoreError::database)?,
            timestamp: created_at.into(),
            messages: Vec::new(),
        };
        let mut buffer = serde_json::to_vec(&empty).map_err(StoreError::database)?;
        // `{..., "messages":[]}`: keep all but the closing `]}`.
        if !buffer.ends_with(b"[]}") {
            return Err(StoreError::database("unexpected thread JSON"));
        }
        buffer.truncate(buffer.len() - 2);
        Ok(Self {
            buffer,
            messages: 0,
        })
    }

    fn push(&mut self, message: &str) {
        if self.messages > 0 {
            self.buffer.push(b',');
        }
        self.messages += 1;
        self.buffer.extend_from_slice(message.as_bytes());
    }

    fn take(&mut self) -> bytes::Bytes {
        std::mem::take(&mut self.buffer).into()
    }

    fn finish(&mut self) -> bytes::Bytes {
        self.buffer.extend_from_slice(b"]}");
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_events::MessageBody;

    #[test]
    fn a_thread_written_in_pages_is_the_json_of_the_whole() {
        use proto_events::MessageView;
        let message = |n: u128, body: &str| MessageView {
            id: Uuid::from_u128(n),
            user: UserJson::from_stored(format!(r#"{{"b":1,"a":"é{n}"}}"#)).unwrap(),
            timestamp: "2026-11-30T12:00:00.123456Z"
                .parse::<DateTime<Utc>>()
                .unwrap()
                .into(),
            body: MessageBody::from_stored(body.to_owned()),
            send_by_user: n % 2 == 0,
        };
        let created_at = "2026-11-30T11:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let user = r#"{"z":[1.50,"x"]}"#;
        for count in [0, 1, 2, 5] {
            let whole = ThreadView {
                id: Uuid::from_u128(99),
                user: UserJson::from_stored(user.into()).unwrap(),
                timestamp: created_at.into(),
                messages: (0..count)
                    .map(|n| message(n, "a \"quoted\"\nline"))
                    .collect(),
            };
            let mut body = ThreadBody::new(whole.id, user.into(), created_at).unwrap();
            let mut written = Vec::new();
            for (i, m) in whole.messages.iter().enumerate() {
                body.push(&serde_json::to_string(m).unwrap());
                if i % 2 == 0 {
                    written.extend_from_slice(&body.take());
                }
            }
            written.extend_from_slice(&body.finish());
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&whole).unwrap(),
                "{count} messages"
            );
        }
    }
}
