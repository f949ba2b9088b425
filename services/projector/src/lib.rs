//! The projector: the only writer of the read model. It folds the event stream, as the log
//! delivers it to its durable reader ([`ProjectionSource`]), into PostgreSQL batch by batch;
//! an event is acknowledged only after its batch is committed, so a crash at any point loses
//! nothing and a redelivery changes nothing.
//! Invalid events are set aside on the dead-letter stream with their reason and never stop it;
//! so are events whose rows PostgreSQL refuses (found by splitting the batch, see `batch`).
//! Batches are bounded by count and by bytes. A batch that keeps failing for another reason
//! is retried until it succeeds, and after a while the projector says it is stuck (`stall`).
//! A `ThreadErased` deletes its thread's rows, and no event of an erased thread is applied
//! or set aside afterwards, nor before it if it comes late (`fold::skip_erased`).

pub mod batch;
pub mod bulk;
pub mod erase;
pub mod error;
pub mod fold;
pub mod progress;
pub mod read_ahead;
pub mod rebuild;
pub mod replay;
pub mod stall;
pub mod verify;

pub use error::ProjectorError;

use clap::Args;
use fold::Verdict;
use proto_events::EventError;
use read_ahead::ReadAhead;
use stall::Stall;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use threadline_nats::NatsSettings;
use threadline_ports::settings::{parse_bytes, parse_duration};
use threadline_ports::{report, Delivery, ProjectionSource, ReadModel, StoreError, StoredEvent};
use threadline_postgres::DatabaseSettings;
use threadline_runtime::metrics::names;
use threadline_runtime::metrics::register;
use threadline_runtime::{retry, HttpSettings, Role};
use tokio_util::sync::CancellationToken;

/// How long after a projector stops the events it handed back are delivered again (see
/// [`Projector::run`]): time for its unsubscription to reach the server first.
const HAND_BACK_DELAY: Duration = Duration::from_millis(250);

/// How the projector consumes.
#[derive(Debug, Clone, Args)]
pub struct ProjectorSettings {
    /// Most events written to PostgreSQL in one transaction.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
    /// Most bytes of events written to PostgreSQL in one transaction (`0`: no bound); an
    /// event larger than this is written alone. Each pull from the broker asks for this
    /// much, or for the server's max_payload if that is larger.
    #[arg(long, env = "PROJECTOR_BATCH_BYTES", default_value = "8MiB", value_parser = batch_bytes)]
    pub batch_bytes: usize,
    /// How long a batch may keep failing before the projector reports that it cannot make
    /// progress (an error log line, and /readyz 503 naming the event's sequence).
    #[arg(long, env = "PROJECTOR_STUCK_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub stuck_after: Duration,
    /// How long the broker waits for the acknowledgement of an event it delivered before it
    /// delivers the event again: what events lost with a connection to a NATS node wait
    /// before they come again. While a batch is being applied, the projector tells the broker
    /// every third of this wait that it still holds it. Applied to the consumer on start; give
    /// every projector the same value.
    #[arg(long, env = "PROJECTOR_ACK_WAIT", default_value = "5s", value_parser = ack_wait)]
    pub ack_wait: Duration,
}

impl ProjectorSettings {
    pub fn limits(&self) -> batch::Limits {
        batch::Limits {
            events: self.batch_size,
            bytes: self.batch_bytes,
        }
    }
}

/// `PROJECTOR_ACK_WAIT`: a duration of at least a second, so that the reminders sent every
/// third of it reach the broker in time.
fn ack_wait(text: &str) -> Result<Duration, String> {
    let wait = parse_duration(text)?;
    if wait < Duration::from_secs(1) {
        return Err(format!(
            "PROJECTOR_ACK_WAIT must be at least 1s, not {text}"
        ));
    }
    Ok(wait)
}

/// `PROJECTOR_BATCH_BYTES`: a size, `0` for no bound.
fn batch_bytes(text: &str) -> Result<usize, String> {
    Ok(parse_bytes(text)?.map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX)))
}

/// Everything the `projector` role needs to run on its own.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address of the projector's /healthz and /readyz.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8002")]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub projector: ProjectorSettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub http: HttpSettings,
}

/// Folds the event stream, as `log` delivers it, into the read model.
pub struct Projector<L: ProjectionSource> {
    log: Arc<L>,
    read: Arc<dyn ReadModel>,
    settings: ProjectorSettings,
    stall: Arc<Stall>,
}

impl<L: ProjectionSource> Projector<L> {
    pub fn new(log: Arc<L>, read: Arc<dyn ReadModel>, settings: ProjectorSettings) -> Self {
        let stall = Arc::new(Stall::new(settings.stuck_after));
        Self {
            log,
            read,
            settings,
            stall,
        }
    }

    /// Whether the projector makes progress, as a check of `/readyz`.
    pub fn stall(&self) -> Arc<Stall> {
        self.stall.clone()
    }

    /// Consumes until `shutdown` fires; events read and not applied by then are handed back.
    pub async fn run(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let Some(deliveries) =
                retry::until_ready("opening the projector's consumer", &shutdown, || {
                    self.log.deliveries(
                        self.settings.batch_size,
                        self.settings.batch_bytes,
                        self.settings.ack_wait,
                    )
                })
                .await
            else {
                return;
            };
            // Two batches' worth read ahead (see `read_ahead`), by count and by bytes.
            let request_bytes = self.log.request_bytes(self.settings.batch_bytes);
            let mut ahead = ReadAhead::start(
                deliveries,
                L::Delivery::size,
                self.settings.batch_size * 2,
                (request_bytes > 0).then(|| request_bytes.saturating_mul(2)),
            );
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.hand_back(Vec::new(), ahead).await;
                        return;
                    }
                    batch = ahead.next_batch(self.settings.batch_size) => batch,
                };
                let Some(batch) = batch else {
                    tracing::warn!("the consumer's message stream ended; reopening it");
                    break;
                };
                let mut items = batch.items;
                let sizes: Vec<usize> = items.iter().map(L::Delivery::size).collect();
                for part in batch::ranges(&sizes, self.settings.limits()) {
                    let (start, len) = (part.start, part.len());
                    if self.keeping(&items[start..], len, &shutdown).await.is_err() {
                        let unapplied = items.split_off(start);
                        self.hand_back(unapplied, ahead).await;
                        return;
                    }
                }
            }
        }
    }

    /// On shutdown: gives the broker back (NAK) the events in hand and read ahead but not
    /// applied, so that it delivers them again at once (to the next projector) instead of
    /// after the consumer's acknowledgement wait.
    async fn hand_back(&self, unapplied: Vec<L::Delivery>, ahead: ReadAhead<L::Delivery>) {
        let mut events = unapplied;
        // Stopped, the stream of deliveries is dropped before the events go back, so that
        // they go to the next projector rather than to this one's requests.
        events.extend(ahead.stop().await);
        if events.is_empty() {
            return;
        }
        let failed = self.log.hand_back(&events, HAND_BACK_DELAY).await;
        tracing::info!(
            events = events.len(),
            failed,
            "handed back the events read and not applied"
        );
    }

    /// Applies the first `len` events of `held` (see [`project`](Self::project)), and, for as
    /// long as that takes, tells the broker every third of the acknowledgement wait that it
    /// still holds every event of `held`, so that a slow batch, and the parts of its batch
    /// after it, are not delivered again meanwhile (to this projector or another).
    async fn keeping(
        &self,
        held: &[L::Delivery],
        len: usize,
        shutdown: &CancellationToken,
    ) -> Result<(), ShutDown> {
        let every = self.settings.ack_wait / 3;
        let mut reminders = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        reminders.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let applying = self.project(&held[..len], shutdown);
        tokio::pin!(applying);
        loop {
            tokio::select! {
                applied = &mut applying => return applied,
                _ = reminders.tick() => self.log.keep(held).await,
            }
        }
    }

    /// Applies one batch: rows in one transaction, invalid events set aside, then every event
    /// acknowledged. Rows that PostgreSQL refuses are found by splitting the batch and set
    /// aside; any other failure (the database or the broker does not answer) is retried until
    /// it succeeds or shutdown fires, and then the batch stays unacknowledged and is
    /// delivered again.
    #[tracing::instrument(skip_all, fields(first_seq, last_seq, events = messages.len()))]
    async fn project(
        &self,
        messages: &[L::Delivery],
        shutdown: &CancellationToken,
    ) -> Result<(), ShutDown> {
        let incoming: Vec<StoredEvent> = messages.iter().filter_map(Delivery::event).collect();
        record_lag(messages);
        if let (Some(first), Some(last)) = (incoming.first(), incoming.last()) {
            tracing::Span::current().record("first_seq", first.sequence);
            tracing::Span::current().record("last_seq", last.sequence);
        }
        let mut judged = self.judge(incoming, shutdown).await?;
        let written = self.write_rows(&mut judged, shutdown).await?;
        self.erase_rows(&judged, shutdown).await?;
        self.set_aside(&judged, shutdown).await?;
        // An acknowledgement lost is only logged: the event is delivered and applied again,
        // which changes nothing.
        self.log.acknowledge(messages).await;
        self.applied(messages.len(), written);
        Ok(())
    }

    /// The verdict on each event of the batch: a row to write, or a reason to set it aside
    /// (invalid, or a message whose thread the log did not create before it).
    async fn judge(
        &self,
        incoming: Vec<StoredEvent>,
        shutdown: &CancellationToken,
    ) -> Result<Judged, ShutDown> {
        let first_seq = incoming.first().map_or(0, |i| i.sequence);
        let subjects = self.log.subjects();
        let mut verdicts: Vec<Verdict> = incoming
            .iter()
            .map(|i| fold::verdict(subjects, i))
            .collect();
        // The batch's erasures first: none of an erased thread's events counts, before or
        // after its erasure.
        for thread in fold::erasures_in(&verdicts) {
            self.log.remember_erasure(thread);
        }
        fold::skip_erased(&mut verdicts, |thread| self.log.erased(thread));
        let created =
            retry::until_ready("checking threads against the event log", shutdown, || {
                self.noting_failure(first_seq, self.threads_created(&verdicts))
            })
            .await
            .ok_or(ShutDown)?;
        fold::reject_unknown_threads(&mut verdicts, &created);
        Ok(Judged::new(incoming, verdicts))
    }

    /// Writes the batch's rows in one transaction, retried until it succeeds; the rows that
    /// PostgreSQL refuses on their own join the events to set aside. Remembers each thread
    /// created, for the existence checks of the batches to come.
    async fn write_rows(
        &self,
        judged: &mut Judged,
        shutdown: &CancellationToken,
    ) -> Result<Written, ShutDown> {
        let refused = retry::until_ready("writing to the read model", shutdown, || {
            self.write(&judged.rows, &judged.incoming)
        })
        .await
        .ok_or(ShutDown)?;
        let mut refused_rows = vec![false; judged.rows.len()];
        for (row, error) in refused {
            refused_rows[row] = true;
            let why = match error {
                StoreError::Refused { code, cause } => format!("{code}: {cause}"),
                other => report(&other),
            };
            let index = judged.rows[row].0;
            judged
                .set_aside
                .push((index, EventError::RefusedByDatabase(why)));
        }
        let mut written = Written::default();
        for ((_, verdict), refused) in judged.rows.iter().zip(refused_rows) {
            match verdict {
                Verdict::Thread(thread) if !refused => {
                    written.threads += 1;
                    self.log.remember_thread(thread.id, thread.stream_seq);
                }
                Verdict::Message(_) if !refused => written.messages += 1,
                _ => {}
            }
        }
        Ok(written)
    }

    /// Deletes the rows of the threads the batch erases, retried until it succeeds. The rows
    /// of the batch itself skipped them already.
    async fn erase_rows(
        &self,
        judged: &Judged,
        shutdown: &CancellationToken,
    ) -> Result<(), ShutDown> {
        if judged.erased.is_empty() {
            return Ok(());
        }
        let sequence = judged.incoming.first().map_or(0, |i| i.sequence);
        let erased = retry::until_ready("deleting the rows of erased threads", shutdown, || {
            self.noting_failure(sequence, self.read.erase(&judged.erased))
        })
        .await
        .ok_or(ShutDown)?;
        for thread in &judged.erased {
            tracing::info!(%thread, "folded a thread's erasure");
        }
        tracing::debug!(
            threads = erased.threads,
            messages = erased.messages,
            "deleted the rows of erased threads"
        );
        Ok(())
    }

    /// Sets the batch's invalid and refused events aside on the dead-letter stream, in stream
    /// order, each with its reason, counted and logged; each retried until it is stored.
    async fn set_aside(
        &self,
        judged: &Judged,
        shutdown: &CancellationToken,
    ) -> Result<(), ShutDown> {
        let mut set_aside: Vec<&(usize, EventError)> = judged.set_aside.iter().collect();
        set_aside.sort_by_key(|(index, _)| *index);
        for (index, reason) in set_aside {
            let event = &judged.incoming[*index];
            metrics::counter!(names::SET_ASIDE, "reason" => reason.code()).increment(1);
            tracing::warn!(
                subject = %event.subject, sequence = event.sequence, reason = reason.code(),
                "setting an invalid event aside: {}",
                threadline_ports::bounded_text(
                    &reason.to_string(),
                    threadline_ports::REASON_MAX_BYTES
                )
            );
            retry::until_ready("setting an invalid event aside", shutdown, || {
                self.noting_failure(
                    event.sequence,
                    self.log.set_aside(
                        &event.subject,
                        event.sequence,
                        event.payload.clone(),
                        reason,
                        "projector",
                    ),
                )
            })
            .await
            .ok_or(ShutDown)?;
        }
        Ok(())
    }

    /// The batch is applied: the projector has moved on, and the metrics count the batch.
    fn applied(&self, events: usize, written: Written) {
        self.stall.moved_on();
        metrics::histogram!(names::PROJECTOR_BATCH_SIZE).record(events as f64);
        metrics::counter!(names::PROJECTOR_EVENTS).increment(events as u64);
        tracing::debug!(
            threads = written.threads,
            messages = written.messages,
            "batch applied"
        );
    }

    /// Writes the rows of a batch, splitting it where PostgreSQL refuses some; the rows
    /// refused on their own (by their index in `rows`), with the refusal.
    async fn write(
        &self,
        rows: &[(usize, Verdict)],
        incoming: &[StoredEvent],
    ) -> Result<Vec<(usize, StoreError)>, StoreError> {
        let written = batch::isolate(
            rows.len(),
            |e| matches!(e, StoreError::Refused { .. }),
            |part: Range<usize>| {
                let (threads, messages) = fold::rows(rows[part].iter().map(|(_, v)| v));
                let read = self.read.clone();
                async move { read.apply(&threads, &messages).await }
            },
        )
        .await;
        written.map_err(|failed| {
            let sequence = rows
                .get(failed.at)
                .map_or(0, |(index, _)| incoming[*index].sequence);
            self.stall.failed(sequence, &report(&failed.error));
            failed.error
        })
    }

    /// `attempt`, with its failure noted against event `sequence` for the stall check.
    async fn noting_failure<T, E: std::error::Error + 'static>(
        &self,
        sequence: u64,
        attempt: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let result = attempt.await;
        if let Err(e) = &result {
            self.stall.failed(sequence, &report(e));
        }
        result
    }

    /// Where each thread that the batch's messages name was created: in the batch itself,
    /// or, asked of the log (the one rule of existence), before it.
    async fn threads_created(
        &self,
        verdicts: &[Verdict],
    ) -> Result<HashMap<uuid::Uuid, u64>, StoreError> {
        let mut created = fold::created_in(verdicts);
        for (thread, from) in fold::threads_to_check(verdicts) {
            if let Some(sequence) = self.log.thread_created_for(thread, from).await? {
                fold::record_creation(&mut created, thread, sequence);
            }
        }
        Ok(created)
    }
}

/// Shutdown fired before a batch was applied: it stays unacknowledged, to be delivered again.
struct ShutDown;

/// A batch's events as judged: the rows to write and the events to set aside, each by its
/// index in `incoming`; the rows in stream order; the threads erased.
struct Judged {
    incoming: Vec<StoredEvent>,
    rows: Vec<(usize, Verdict)>,
    set_aside: Vec<(usize, EventError)>,
    erased: Vec<uuid::Uuid>,
}

impl Judged {
    fn new(incoming: Vec<StoredEvent>, verdicts: Vec<Verdict>) -> Self {
        let mut rows = Vec::new();
        let mut set_aside = Vec::new();
        let mut erased = Vec::new();
        for (index, verdict) in verdicts.into_iter().enumerate() {
            match verdict {
                Verdict::SetAside(reason) => set_aside.push((index, reason)),
                Verdict::Erase(thread) => erased.push(thread),
                Verdict::Skip => {}
                row => rows.push((index, row)),
            }
        }
        Self {
            incoming,
            rows,
            set_aside,
            erased,
        }
    }
}

/// The rows of a batch written, by table.
#[derive(Default)]
struct Written {
    threads: usize,
    messages: usize,
}

/// The lag of the consumer as of the newest event of a batch: events still to come after it,
/// and how long ago it was stored.
fn record_lag(messages: &[impl Delivery]) {
    let Some(backlog) = messages.iter().rev().find_map(Delivery::backlog) else {
        return;
    };
    metrics::gauge!(names::PROJECTOR_LAG_EVENTS).set(backlog.pending as f64);
    let age = std::time::SystemTime::now()
        .duration_since(backlog.stored_at)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(names::PROJECTOR_LAG_SECONDS).set(age);
}

/// Runs the `projector` role until `shutdown` fires.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some((role, log, read)) = Role::start_with_read_model(
        settings.listen_addr,
        &settings.nats,
        &settings.database,
        &settings.http,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let projector = Projector::new(log, read, settings.projector);
    role.metrics(register::projector)
        .depends_on(projector.stall())
        .serve_beside(projector.run(shutdown.clone()))
        .await
}
