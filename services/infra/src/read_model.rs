//! The read model: an interface for the domain, and its PostgreSQL implementation.

use crate::settings::DatabaseSettings;
use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proto_events::{MessageBody, MessageJson, ThreadView, Timestamp, UserJson};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// The advisory lock that orders the projector's writes against a rebuild's switch-over:
/// every apply transaction holds it shared, the switch-over holds it exclusively.
pub const SWITCH_LOCK: i64 = 0x7468_7265_6164_6c6e; // "threadln"

/// The PostgreSQL channel told (`NOTIFY`) when the serving read model changes by any other
/// way than the projector applying events: a rebuild's switch-over. A process that keeps
/// reads in memory drops them when told.
pub const CHANGED_CHANNEL: &str = "threadline_read_model_changed";

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

impl AppliedMessage {
    /// The message's JSON inside a thread, as the `json` column stores it.
    pub fn json(&self) -> Option<String> {
        self.json_fields().text()
    }

    /// The fields of [`json`](Self::json), to serialize elsewhere.
    pub fn json_fields(&self) -> MessageJson<'_> {
        MessageJson {
            id: &self.id,
            user: &self.user,
            timestamp: &self.timestamp,
            body: &self.body,
            send_by_user: self.send_by_user,
        }
    }
}

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
/// How often the connection that listens for read model changes is asked whether it is
/// alive, and how long it may take to answer: a connection lost without a reset (a failover,
/// a partition) is noticed within both.
const LISTENER_PING_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const LISTENER_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Long reads waiting for a turn, at most; more are answered 503 at once. A turn always comes:
/// a long read's pages are bounded by DATABASE_TIMEOUT each and by SLOW_READER for its reader.
const LONG_READS_WAITING: usize = 64;

/// What a process has heard of changes of the serving read model ([`CHANGED_CHANNEL`]): an
/// epoch that moves on with every change heard and every reconnection of the listener, and
/// is 0 while nothing is listening. A read kept since an epoch still current is as fresh as
/// the events the projector applied since; anything else may be older than the tables.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    epoch: Arc<AtomicU64>,
}

impl Changes {
    /// Changes of a read model that nothing replaces while this process reads it (tools,
    /// tests): a fixed epoch.
    pub fn fixed(epoch: u64) -> Self {
        Self {
            epoch: Arc::new(AtomicU64::new(epoch)),
        }
    }

    /// Moves on to a new epoch, as a change heard does.
    pub fn heard(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The current epoch; 0 while changes cannot be heard.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

async fn listen(pool: &PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(CHANGED_CHANNEL).await?;
    Ok(listener)
}

/// A thread as `GET /chat/thread/:id/` answers it: the JSON of its [`ThreadView`].
pub enum ThreadRead {
    /// A short thread, read in one round trip.
    Whole(bytes::Bytes),
    /// A long one, in pages read from one snapshot as the reader takes them. An error ends
    /// the body early.
    Streamed(futures::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>),
}

/// What the domain needs from the read model.
#[async_trait]
pub trait ReadModel: Send + Sync + 'static {
    /// A thread with its messages in stream order, if the read model has it.
    async fn thread(&self, id: Uuid) -> Result<Option<ThreadRead>, StoreError>;

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
    /// Turns among long reads: at most half the pool, so that they cannot take every
    /// connection from short reads and writes.
    long_reads: Arc<Semaphore>,
    long_reads_waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// How long a long read may take in all.
    long_read_timeout: std::time::Duration,
}

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
        let epoch = changes.epoch.clone();
        tokio::spawn(async move {
            // One connection, apart from the pool that serves reads.
            // A connection given up is tested before it is used again, within the bound.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(LISTENER_PING_EVERY + LISTENER_PING_TIMEOUT)
                .connect_lazy_with(options);
            let mut next = 1;
            while !shutdown.is_cancelled() {
                epoch.store(0, Ordering::SeqCst);
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
                epoch.store(next, Ordering::SeqCst);
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
                                epoch.store(0, Ordering::SeqCst);
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
                                epoch.store(next, Ordering::SeqCst);
                                next += 1;
                            }
                            // The connection was lost: notices may be missed until the next.
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            epoch.store(0, Ordering::SeqCst);
            pool.close().await;
        });
        changes
    }

    /// A long thread, streamed: waits for a turn among long reads, then reads it page by
    /// page in one read-only snapshot, each page once the reader has taken the one before.
    async fn stream_thread(&self, id: Uuid) -> Result<ThreadRead, StoreError> {
        let turn = {
            let waiting = WaitingGuard::join(&self.long_reads_waiting, LONG_READS_WAITING)
                .ok_or_else(|| StoreError::Overloaded {
                    what: "PostgreSQL",
                    cause: format!("{LONG_READS_WAITING} long reads are waiting already"),
                })?;
            let turn = self.long_reads.clone().acquire_owned().await;
            drop(waiting);
            turn.map_err(StoreError::database)?
        };
        // Dropped unfinished, the transaction is rolled back before its connection is reused.
        let mut conn = self.pool.begin().await.map_err(StoreError::sql)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *conn)
            .await
            .map_err(StoreError::sql)?;
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
        .map_err(StoreError::sql)?;
        let deadline = tokio::time::Instant::now() + self.long_read_timeout;
        let thread: Option<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT user_json, created_at FROM threads WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(StoreError::sql)?;
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
                .map_err(StoreError::sql)?;
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
                .map_err(StoreError::sql);
                let (messages, last, count, considered) = match page {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(thread_id = %id, "reading a long thread failed: {e}");
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

#[async_trait]
impl ReadModel for PgReadModel {
    async fn thread(&self, id: Uuid) -> Result<Option<ThreadRead>, StoreError> {
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
        .map_err(StoreError::sql)?;
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
        .map_err(StoreError::sql)?;
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
