//! The event log on NATS JetStream.

use crate::coalesce::{Answer, Coalesce};
use crate::erasures::{self, Erasures};
use crate::existence::{self, KnownThreads, MissingThreads};
use crate::message_count::Tallies;
use crate::settings::NatsSettings;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use proto_events::{headers, EncodedEvent, EventKind, Subjects};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use threadline_ports::settings::ByteSize;
use threadline_ports::{
    bounded_text, report, Cause, Dependency, EventLog, StoreError, REASON_MAX_BYTES,
};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

/// Histogram: seconds an append to JetStream took until stored, by `event` and `outcome`
/// (listed with the other metrics' names in `threadline_runtime::metrics::names`).
pub const APPEND_DURATION: &str = "threadline_event_append_duration_seconds";

/// Why a role cannot keep its promises on the streams as they are (a work-queue stream, a
/// consumer that does not acknowledge, more replicas than a lone server can hold): one line
/// for the operator, not worth retrying. It travels as the cause of a
/// [`StoreError`]; [`unsuitable`] finds it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsuitable(pub String);

/// The [`Unsuitable`] behind `error`, if that is what it is.
pub fn unsuitable(error: &StoreError) -> Option<&Unsuitable> {
    match error {
        StoreError::Unavailable { cause, .. } => cause.downcast_ref::<Unsuitable>(),
        _ => None,
    }
}

fn refuse(line: String) -> StoreError {
    StoreError::nats(Unsuitable(line))
}

/// How long an append waits before it publishes again after an error.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The event log on NATS JetStream: one stream of events on per-thread subjects, and a
/// second stream where consumers set invalid events aside.
pub struct JetStreamLog {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: stream::Stream,
    subjects: Subjects,
    settings: NatsSettings,
    known_threads: KnownThreads,
    /// Threads found missing a moment ago, not asked about again for clients meanwhile.
    missing_threads: MissingThreads,
    /// The threads erased (see [`erasures`](crate::erasures)); followed once
    /// [`follow_erasures`](Self::follow_erasures) has run.
    erasures: Erasures,
    following_erasures: AtomicBool,
    applied_floor: AtomicU64,
    /// Lookups in flight, shared by every caller asking the same. Each runs to its answer or
    /// to `NATS_TIMEOUT` (its wait for a turn included), whether or not its callers still wait.
    threads_asked: Coalesce<Uuid, Option<u64>>,
    last_sequences_asked: Coalesce<Uuid, Option<u64>>,
    progress_asked: Coalesce<(), u64>,
    head_asked: Coalesce<(), u64>,
    /// Bounds the distinct lookups this process sends at once, so that requests for many
    /// unknown ids wait their turn instead of multiplying the stream leader's work.
    lookups_allowed: Arc<Semaphore>,
    connections: watch::Receiver<u64>,
    /// Threads' message counts, kept to count on from (`THREAD_MAX_MESSAGES`).
    tallies: Tallies,
    /// Logs each reconnection and the server it reached; ends with the log.
    _failover_log: AbortOnDropHandle<()>,
}

/// Logs each reconnection to NATS (after the first connection) with the server it reached,
/// once the client has its `INFO` (a new server's id: each start of a server has its own).
async fn log_reconnections(client: async_nats::Client, mut connections: watch::Receiver<u64>) {
    let mut server = client.server_info().server_id;
    while connections.changed().await.is_ok() {
        // The first connection counts as one: only those after it are reconnections.
        if *connections.borrow_and_update() < 2 {
            continue;
        }
        // The client takes the new server's INFO a moment after it says it connected.
        for _ in 0..20 {
            if client.server_info().server_id != server {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let info = client.server_info();
        server = info.server_id.clone();
        tracing::warn!(
            server = %info.server_name,
            address = %format!("{}:{}", info.host, info.port),
            version = %info.version,
            "reconnected to NATS"
        );
    }
}

/// How many distinct thread lookups one process sends to the stream leader at once.
const LOOKUPS_AT_ONCE: usize = 32;

/// How many distinct questions of one kind a process keeps in flight, sent or waiting for
/// their turn; past it, a new one is answered "unavailable" at once. Each waits at most
/// `NATS_TIMEOUT`.
const LOOKUPS_IN_FLIGHT: usize = 1_024;

impl JetStreamLog {
    /// Connects to NATS and creates (or checks) the event and dead-letter streams.
    pub async fn connect(settings: &NatsSettings) -> Result<Self, StoreError> {
        Self::open(settings, StreamAccess::Manage).await
    }

    /// Connects to NATS and opens the event stream as it is, changing nothing: for a role
    /// whose NATS user may only read (the gateway). Fails until a role that manages the
    /// streams has created the event stream with this version's republish rule.
    pub async fn connect_to_read(settings: &NatsSettings) -> Result<Self, StoreError> {
        Self::open(settings, StreamAccess::Read).await
    }

    async fn open(settings: &NatsSettings, access: StreamAccess) -> Result<Self, StoreError> {
        let subjects = Subjects::new(&settings.subject_prefix).map_err(StoreError::nats)?;
        let (connected, connections) = watch::channel(0u64);
        let servers = settings.nats_servers().map_err(StoreError::nats)?;
        let options = settings.connect_options().await.map_err(StoreError::nats)?;
        let client = options
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Connected => connected.send_modify(|n| *n += 1),
                    async_nats::Event::Disconnected => tracing::warn!(
                        "lost the connection to NATS; reconnecting to a server of NATS_URL or \
                         one the cluster announced"
                    ),
                    async_nats::Event::LameDuckMode => tracing::warn!(
                        "the NATS server is shutting down (lame duck mode); moving to another"
                    ),
                    _ => {}
                }
                std::future::ready(())
            })
            .connect(servers)
            .await
            .map_err(|e| {
                StoreError::nats(format!("cannot connect to {}: {e}", settings.nats_url))
            })?;
        let failover_log = AbortOnDropHandle::new(tokio::spawn(log_reconnections(
            client.clone(),
            connections.clone(),
        )));
        let version = client.server_info().version;
        match crate::server_version::warning(&version) {
            Some(warning) => tracing::warn!("{warning}"),
            None => tracing::debug!("connected to nats-server {version}"),
        }
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(settings.nats_timeout);

        if access == StreamAccess::Manage {
            manage_streams(&jetstream, settings, &subjects).await?;
        }
        let stream = jetstream
            .get_stream(&settings.stream_name)
            .await
            .map_err(|e| {
                StoreError::nats(format!("cannot open stream {}: {e}", settings.stream_name))
            })?;
        check_kept(&stream.cached_info().config, settings)?;
        if access == StreamAccess::Manage {
            check_projector_consumer(&stream, settings).await?;
        }
        if access == StreamAccess::Read {
            let config = &stream.cached_info().config;
            if config.republish != Some(republish_rule(&subjects)) {
                return Err(StoreError::nats(format!(
                    "stream {} does not republish stored events as this version expects yet \
                     (the api or the projector updates it when it starts)",
                    settings.stream_name
                )));
            }
            if !config.subjects.contains(&subjects.erasures()) {
                return Err(StoreError::nats(format!(
                    "stream {} does not hold erasures ({}) yet \
                     (the api or the projector updates it when it starts)",
                    settings.stream_name,
                    subjects.erasures()
                )));
            }
        }
        Ok(Self {
            client,
            jetstream,
            stream,
            subjects,
            settings: settings.clone(),
            known_threads: KnownThreads::default(),
            missing_threads: MissingThreads::default(),
            erasures: Erasures::default(),
            following_erasures: AtomicBool::new(false),
            applied_floor: AtomicU64::new(0),
            threads_asked: Coalesce::new(settings.nats_timeout, LOOKUPS_IN_FLIGHT),
            last_sequences_asked: Coalesce::new(settings.nats_timeout, LOOKUPS_IN_FLIGHT),
            progress_asked: Coalesce::new(settings.nats_timeout, 1),
            head_asked: Coalesce::new(settings.nats_timeout, 1),
            lookups_allowed: Arc::new(Semaphore::new(LOOKUPS_AT_ONCE)),
            connections,
            tallies: Tallies::default(),
            _failover_log: failover_log,
        })
    }

    /// Counts the connections to NATS made so far; changes each time the client (re)connects,
    /// so that a reader can catch up on what it missed while disconnected.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.connections.clone()
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub fn settings(&self) -> &NatsSettings {
        &self.settings
    }

    /// Notes a valid `ThreadCreated` of `thread` stored at `sequence` (just appended, or
    /// folded by the projector). It proves that the thread exists unless it was erased; it
    /// may not be the first.
    pub fn remember_thread(&self, thread: Uuid, sequence: u64) {
        if self.erasures.contains(thread) {
            return;
        }
        self.known_threads.seen(thread, sequence);
        self.missing_threads.found(thread);
    }

    /// Reads every erasure the stream holds, then follows new ones until `shutdown` fires
    /// (see [`erasures`](crate::erasures)): what every role does before it serves. Once
    /// it has returned `Ok`, calling it again does nothing.
    pub async fn follow_erasures(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        if self.following_erasures.load(Ordering::SeqCst) {
            return Ok(());
        }
        erasures::follow(self.clone(), shutdown).await?;
        self.following_erasures.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The threads this process knows to be erased.
    pub fn known_erasures(&self) -> &Erasures {
        &self.erasures
    }

    /// Whether `thread` is known to be erased.
    pub fn erased(&self, thread: Uuid) -> bool {
        self.erasures.contains(thread)
    }

    /// Notes a valid `ThreadErased` of `thread` (read from the stream, appended or folded
    /// here): the thread is forgotten, and whoever listens is told.
    pub fn erasure_heard(&self, thread: Uuid) {
        if self.erasures.insert(thread) {
            self.known_threads.forget(thread);
            tracing::info!(%thread, "thread erased");
        }
    }

    /// The stream sequence of the thread's first valid `ThreadCreated`, if the log holds one:
    /// the one rule of existence (see [`existence`](crate::existence)).
    pub async fn thread_created_at(&self, thread: Uuid) -> Result<Option<u64>, StoreError> {
        self.bounded(self.first_creation(thread)).await
    }

    /// `lookup`, or an error once it has taken `NATS_TIMEOUT`: however many requests a caller
    /// waits for in turn (one in flight, then a fresh one), it waits for the log that long at
    /// most. The requests go on without it.
    async fn bounded<T>(
        &self,
        lookup: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let timeout = self.settings.nats_timeout;
        tokio::time::timeout(timeout, lookup)
            .await
            .unwrap_or_else(|_| Err(StoreError::nats(format!("no answer within {timeout:?}"))))
    }

    /// The lookup behind [`thread_created_at`](Self::thread_created_at), without its bound.
    async fn first_creation(&self, thread: Uuid) -> Result<Option<u64>, StoreError> {
        if self.erasures.contains(thread) {
            return Ok(None);
        }
        if let Some(known) = self.known_threads.get(thread).filter(|k| k.first) {
            return Ok(Some(known.sequence));
        }
        let ask = || {
            let (jetstream, subjects) = (self.jetstream.clone(), self.subjects.clone());
            let stream = self.settings.stream_name.clone();
            let limit = self.lookups_allowed.clone();
            async move {
                let _turn = limit.acquire_owned().await.map_err(|e| e.to_string())?;
                existence::first_valid_creation(&jetstream, &stream, &subjects, thread)
                    .await
                    .map_err(|e| report(&e))
            }
        };
        // A thread that exists always will: a shared yes is right. A shared no may come from a
        // request sent before the thread was created through another replica: ask afresh,
        // unless this caller sent the request itself.
        let asked = Instant::now();
        let created = self
            .threads_asked
            .get_fresh_if(thread, ask, |answer| matches!(answer, Ok(None)))
            .await
            .map_err(StoreError::nats)?;
        // Erased while the lookup was in flight: its answer is out of date.
        if self.erasures.contains(thread) {
            return Ok(None);
        }
        match created {
            Some(sequence) => {
                self.known_threads.first(thread, sequence);
                self.missing_threads.found(thread);
            }
            None => self.missing_threads.missing(thread, asked),
        }
        Ok(created)
    }

    /// A valid `ThreadCreated` of `thread` for a client's request: any this process knows of,
    /// else the first; `None` also when the thread was found missing a moment ago
    /// ([`NOT_FOUND_MEMORY`](existence::NOT_FOUND_MEMORY)), without asking again.
    async fn thread_created_for_client(&self, thread: Uuid) -> Result<Option<u64>, StoreError> {
        if self.erasures.contains(thread) {
            return Ok(None);
        }
        if let Some(known) = self.known_threads.get(thread) {
            return Ok(Some(known.sequence));
        }
        if self.missing_threads.recently(thread, Instant::now()) {
            return Ok(None);
        }
        self.first_creation(thread).await
    }

    /// The sequence behind [`EventLog::thread_last_sequence`], without its bound.
    async fn last_sequence(&self, thread: Uuid) -> Result<Option<u64>, StoreError> {
        // Any valid creation this process knows of will do: the read model holds the thread
        // once the projector has passed it.
        let Some(created) = self.thread_created_for_client(thread).await? else {
            return Ok(None);
        };
        // Fresh: the answer must include every message appended before this call (read your
        // writes), so a request already in flight is not enough.
        let last_message = self
            .last_sequences_asked
            .get_fresh(thread, || {
                let stream = self.stream.clone();
                let subject = self.subjects.message_posted(thread);
                let limit = self.lookups_allowed.clone();
                async move {
                    let _turn = limit.acquire_owned().await.map_err(|e| e.to_string())?;
                    last_on_subject(&stream, &subject).await
                }
            })
            .await
            .map_err(StoreError::nats)?;
        Ok(Some(last_message.map_or(created, |m| m.max(created))))
    }

    /// The count behind [`EventLog::thread_message_count`], without its bound (see
    /// [`message_count`](crate::message_count)).
    async fn message_count(&self, thread: Uuid) -> Result<u64, StoreError> {
        let _turn = self
            .lookups_allowed
            .acquire()
            .await
            .map_err(StoreError::nats)?;
        let subject = self.subjects.message_posted(thread);
        self.tallies
            .count(
                &self.jetstream,
                &self.stream,
                &self.settings.stream_name,
                thread,
                &subject,
            )
            .await
    }

    /// The answer behind [`EventLog::applied_everything`], without its bound.
    async fn everything_applied(&self) -> Result<Option<u64>, StoreError> {
        // Fresh: the answer must include every event appended before this call.
        let stream = self.stream.clone();
        let head = self
            .head_asked
            .get_fresh((), move || {
                let stream = stream.clone();
                async move {
                    stream
                        .get_info()
                        .await
                        .map(|info| info.state.last_sequence)
                        .map_err(|e| e.to_string())
                }
            })
            .await
            .map_err(StoreError::nats)?;
        Ok((self.applied_through(head).await? >= head).then_some(head))
    }

    /// A stream sequence `c` of a valid `ThreadCreated` of `thread` such that an event stored
    /// at `from` or later comes after its thread's creation exactly when its sequence is above
    /// `c`: a creation this process remembers before `from` (asking nothing), else the first
    /// valid one. `None`: the thread does not exist.
    pub async fn thread_created_for(
        &self,
        thread: Uuid,
        from: u64,
    ) -> Result<Option<u64>, StoreError> {
        if self.erasures.contains(thread) {
            return Ok(None);
        }
        match self.known_threads.get(thread) {
            Some(known) if known.sequence < from => Ok(Some(known.sequence)),
            _ => self.thread_created_at(thread).await,
        }
    }

    /// Republishes an invalid event on the dead-letter stream, with why and where it came from,
    /// and waits until that stream has stored it. The record always fits in one NATS message:
    /// the reason is cut to [`REASON_MAX_BYTES`](threadline_ports::REASON_MAX_BYTES), and when the payload and the headers together
    /// would exceed the server's `max_payload`, the record goes without the payload and says
    /// so in `Threadline-Dead-Letter-Payload-Omitted` (the event stays in the event stream at
    /// its sequence, where `dead-letters retry` fetches it). Returns whether the payload was
    /// left out.
    pub async fn set_aside(
        &self,
        subject: &str,
        sequence: u64,
        payload: bytes::Bytes,
        reason: &proto_events::EventError,
        by: &str,
    ) -> Result<bool, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            headers::MSG_ID,
            format!("{}-{sequence}", self.settings.stream_name).as_str(),
        );
        headers.insert(
            headers::DEAD_LETTER_REASON,
            bounded_text(&header_safe(&reason.to_string()), REASON_MAX_BYTES).as_str(),
        );
        headers.insert(headers::DEAD_LETTER_SUBJECT, subject);
        headers.insert(headers::DEAD_LETTER_SEQUENCE, sequence.to_string().as_str());
        headers.insert(headers::DEAD_LETTER_BY, by);
        let omitted = !record_fits(
            &headers,
            payload.len(),
            self.client.server_info().max_payload,
        );
        let payload = if omitted {
            headers.insert(
                headers::DEAD_LETTER_PAYLOAD_OMITTED,
                payload.len().to_string().as_str(),
            );
            bytes::Bytes::new()
        } else {
            payload
        };
        let ack = self
            .jetstream
            .publish_with_headers(self.subjects.dead_letter(reason.code()), headers, payload)
            .await
            .map_err(StoreError::nats)?;
        ack.await.map_err(StoreError::nats)?;
        Ok(omitted)
    }
}

/// How many bytes `headers` take on the wire, as NATS counts them against `max_payload`.
fn header_bytes(headers: &HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| AsRef::<[u8]>::as_ref(name).len() + 2 + value.as_str().len() + 2)
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + 2
}

/// Whether a message with `headers` and a payload of `payload` bytes fits under the
/// server's `max_payload` (0: unknown, taken as no limit), with room for one more header.
fn record_fits(headers: &HeaderMap, payload: usize, max_payload: usize) -> bool {
    const ROOM: usize = 128;
    max_payload == 0 || header_bytes(headers) + ROOM + payload <= max_payload
}

/// The newest event on a subject of the event stream, if any, asked of the stream's leader.
async fn last_on_subject(stream: &stream::Stream, subject: &str) -> Answer<Option<u64>> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(Some(message.sequence)),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a process creates and updates the streams, or only reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamAccess {
    Manage,
    Read,
}

/// Creates the event and dead-letter streams, or brings them to the settings.
async fn manage_streams(
    jetstream: &jetstream::Context,
    settings: &NatsSettings,
    subjects: &Subjects,
) -> Result<(), StoreError> {
    // Streams made before erasures lack their subjects: they are added.
    let info = ensure_stream_adding(
        jetstream,
        stream::Config {
            name: settings.stream_name.clone(),
            description: Some("threadline events: the source of truth".into()),
            subjects: subjects.stream_subjects(),
            storage: stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            num_replicas: settings.stream_replicas.into(),
            max_age: settings.stream_max_age,
            max_bytes: byte_limit(settings.stream_max_bytes),
            // The source of truth: when full, refuse new events rather than lose old ones.
            discard: stream::DiscardPolicy::New,
            republish: Some(republish_rule(subjects)),
            ..Default::default()
        },
        &[subjects.erasures()],
    )
    .await?;
    // Before anything else is made beside it.
    check_kept(&info.config, settings)?;
    update_stream_rules(jetstream, info.config, settings, subjects).await?;
    ensure_stream(
        jetstream,
        stream::Config {
            name: settings.dead_letter_stream.clone(),
            description: Some("threadline events set aside as invalid, with the reason".into()),
            subjects: subjects.dead_letter_subjects(),
            storage: stream::StorageType::File,
            num_replicas: settings.stream_replicas.into(),
            max_age: settings.dead_letter_max_age,
            max_bytes: byte_limit(settings.dead_letter_max_bytes),
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        },
    )
    .await
    .and_then(|info| check_kept(&info.config, settings).map(|()| info))?;
    Ok(())
}

/// Refuses a stream that would not keep what it is given until its limits say so, on disk,
/// with the replicas asked for: a work-queue or interest stream deletes events once consumed,
/// a memory stream loses them on a restart.
fn check_kept(config: &stream::Config, settings: &NatsSettings) -> Result<(), StoreError> {
    let name = &config.name;
    if config.retention != stream::RetentionPolicy::Limits {
        return Err(refuse(format!(
            "stream {name} has retention {:?}, which deletes events once consumed; threadline \
             needs retention by limits: delete or rename the stream (STREAM_NAME, \
             DEAD_LETTER_STREAM)",
            config.retention
        )));
    }
    if config.storage != stream::StorageType::File {
        return Err(refuse(format!(
            "stream {name} is kept in memory and lost on a restart; threadline needs file \
             storage: delete or rename the stream"
        )));
    }
    if config.num_replicas < usize::from(settings.stream_replicas) {
        // Retried: a role that may not update the stream (the gateway) waits for one that does.
        return Err(StoreError::nats(format!(
            "stream {name} has {} replica(s), fewer than STREAM_REPLICAS={} (the api or the \
             projector brings it to the setting when it starts)",
            config.num_replicas, settings.stream_replicas
        )));
    }
    Ok(())
}

/// Refuses an existing projector consumer that could skip events: one that does not wait for
/// each event's acknowledgement, starts later than the first event, sees only some subjects,
/// or holds fewer replicas than its stream (0 is as many as the stream).
async fn check_projector_consumer(
    stream: &stream::Stream,
    settings: &NatsSettings,
) -> Result<(), StoreError> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
    let name = &settings.projector_consumer;
    let config = match stream.consumer_info(name).await {
        Ok(info) => info.config.clone(),
        // The projector creates it as it needs it.
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::nats(format!(
                "cannot read consumer {name} of stream {}: {e}",
                settings.stream_name
            )))
        }
    };
    let wrong = if config.ack_policy != AckPolicy::Explicit {
        Some(format!(
            "acknowledgement {:?}, not explicit",
            config.ack_policy
        ))
    } else if config.deliver_policy != DeliverPolicy::All {
        Some(format!(
            "delivery {:?}, not from the first event",
            config.deliver_policy
        ))
    } else if !config.filter_subject.is_empty() || !config.filter_subjects.is_empty() {
        Some("a subject filter".to_owned())
    } else if config.num_replicas != 0
        && config.num_replicas < usize::from(settings.stream_replicas)
    {
        Some(format!(
            "{} replica(s), fewer than STREAM_REPLICAS={}",
            config.num_replicas, settings.stream_replicas
        ))
    } else {
        None
    };
    match wrong {
        Some(wrong) => Err(refuse(format!(
            "the projector's consumer {name} on stream {} has {wrong}, and could skip events: \
             delete it (the projector makes it again and replays the stream; its writes are \
             idempotent) or set PROJECTOR_CONSUMER to another name",
            settings.stream_name
        ))),
        None => Ok(()),
    }
}

/// Where the stream republishes each stored message: what gateways listen on.
fn republish_rule(subjects: &Subjects) -> stream::Republish {
    let (source, destination) = subjects.stored_republish();
    stream::Republish {
        source,
        destination,
        headers_only: false,
    }
}

fn record_append(kind: EventKind, outcome: &'static str, started: std::time::Instant) {
    metrics::histogram!(
        APPEND_DURATION,
        "event" => kind.name(),
        "outcome" => outcome
    )
    .record(started.elapsed().as_secs_f64());
}

/// JetStream's `max_bytes`: -1 is no limit.
fn byte_limit(size: ByteSize) -> i64 {
    size.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX))
}

/// Header values may not hold line breaks.
pub fn header_safe(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Brings an existing event stream's duplicate window and republish rule (what gateways
/// listen on) to this version's settings.
async fn update_stream_rules(
    jetstream: &jetstream::Context,
    mut config: stream::Config,
    settings: &NatsSettings,
    subjects: &Subjects,
) -> Result<(), StoreError> {
    let republish = republish_rule(subjects);
    if config.duplicate_window == settings.duplicate_window
        && config.republish.as_ref() == Some(&republish)
    {
        return Ok(());
    }
    config.duplicate_window = settings.duplicate_window;
    config.republish = Some(republish);
    jetstream
        .update_stream(&config)
        .await
        .map_err(|e| StoreError::nats(format!("cannot update stream {}: {e}", config.name)))?;
    Ok(())
}

/// Creates the stream of `config`, or opens it and brings its replicas, limits (max age,
/// max bytes, discard policy) and `allow_direct` to `config`'s, keeping the rest of its
/// configuration.
pub(crate) async fn ensure_stream(
    jetstream: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Info, StoreError> {
    ensure_stream_adding(jetstream, config, &[]).await
}

/// As [`ensure_stream`], and adds those of `config`'s subjects in `added` that an existing
/// stream lacks (subjects of this version that a stream made by an earlier one has not); a
/// stream that lacks any other of them is not threadline's.
async fn ensure_stream_adding(
    jetstream: &jetstream::Context,
    config: stream::Config,
    added: &[String],
) -> Result<stream::Info, StoreError> {
    let mut stream = jetstream
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| {
            fewer_servers(&config, &e.to_string()).unwrap_or_else(|| {
                StoreError::nats(format!("cannot create or open stream {}: {e}", config.name))
            })
        })?;
    let info = stream.info().await.map_err(StoreError::nats)?.clone();
    let (to_add, missing): (Vec<&String>, Vec<&String>) = config
        .subjects
        .iter()
        .filter(|s| !info.config.subjects.contains(s))
        .partition(|s| added.contains(s));
    if !missing.is_empty() {
        return Err(StoreError::nats(format!(
            "stream {} exists with subjects {:?}, which lack {:?}; \
             choose another STREAM_NAME or SUBJECT_PREFIX",
            config.name, info.config.subjects, missing
        )));
    }
    let limits = |c: &stream::Config| {
        (
            c.num_replicas,
            c.max_age,
            c.max_bytes,
            c.discard,
            c.allow_direct,
        )
    };
    if limits(&info.config) == limits(&config) && to_add.is_empty() {
        return Ok(info);
    }
    // The settings changed since the stream was made (more replicas, other limits), or it
    // still lets any replica answer reads (`allow_direct`, which buckets of earlier versions
    // had): the stream follows them, keeping everything else of its configuration.
    let mut wanted = info.config.clone();
    (
        wanted.num_replicas,
        wanted.max_age,
        wanted.max_bytes,
        wanted.discard,
        wanted.allow_direct,
    ) = limits(&config);
    for subject in to_add {
        tracing::info!(stream = %config.name, subject, "adding a subject to the stream");
        wanted.subjects.push(subject.clone());
    }
    tracing::info!(
        stream = %config.name,
        replicas = wanted.num_replicas,
        max_age = ?wanted.max_age,
        max_bytes = wanted.max_bytes,
        allow_direct = wanted.allow_direct,
        "updating the stream's replicas, limits and reads to the settings"
    );
    jetstream.update_stream(wanted).await.map_err(|e| {
        fewer_servers(&config, &e.to_string()).unwrap_or_else(|| {
            StoreError::nats(format!("cannot update stream {}: {e}", config.name))
        })
    })
}

/// The error to give when the server refused `config`'s replicas: a lone server (not a
/// cluster) never holds more than one, which no retry changes; a cluster with fewer JetStream
/// servers up than the replicas asked for may have them once a server is back, so that one
/// is retried, with a line that says so.
fn fewer_servers(config: &stream::Config, error: &str) -> Option<StoreError> {
    let replicas = config.num_replicas;
    if error.contains("non-clustered mode") {
        return Some(refuse(format!(
            "STREAM_REPLICAS={replicas} for stream {}, but the NATS server is not part of a \
             JetStream cluster: run a cluster of at least {replicas} servers, or set \
             STREAM_REPLICAS=1",
            config.name
        )));
    }
    error.contains("insufficient resources").then(|| {
        StoreError::nats(format!(
            "STREAM_REPLICAS={replicas} for stream {}, but fewer JetStream servers of the \
             cluster are up (or have room): waiting for them; add servers or lower \
             STREAM_REPLICAS",
            config.name
        ))
    })
}

#[async_trait]
impl EventLog for JetStreamLog {
    #[tracing::instrument(skip_all, fields(event_id = %encoded.event().id(), thread_id = %encoded.event().thread()))]
    async fn append(&self, encoded: &EncodedEvent) -> Result<u64, StoreError> {
        let event = encoded.event();
        let payload = encoded.payload().clone();
        let max = self.client.server_info().max_payload;
        if max > 0 && payload.len() + 512 > max {
            return Err(StoreError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let started = std::time::Instant::now();
        let subject = self.subjects.event(event.thread(), event.kind());
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, event.id().to_string().as_str());
        headers.insert(headers::EVENT, event.kind().name());
        headers.insert(
            headers::SCHEMA_VERSION,
            proto_events::SCHEMA_VERSION.to_string().as_str(),
        );
        // While the connection is down a publish would wait in the client's buffer and go out
        // after a reconnect, long after the caller was answered 503: publish nothing.
        let state = self.client.connection_state();
        if state != async_nats::connection::State::Connected {
            record_append(event.kind(), "failed", started);
            return Err(StoreError::nats(format!("connection is {state}")));
        }
        // A lost acknowledgement is retried with the same Nats-Msg-Id (JetStream stores the
        // event once and acknowledges the retry with the first sequence), all within one
        // NATS_TIMEOUT.
        let attempts = async {
            loop {
                let stored = match self
                    .jetstream
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await
                {
                    Ok(ack) => ack.await.map_err(StoreError::nats),
                    Err(e) => Err(StoreError::nats(e)),
                };
                match stored {
                    Ok(ack) => return ack.sequence,
                    Err(e) => {
                        tracing::warn!("append not acknowledged, retrying: {}", report(&e))
                    }
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        };
        let Ok(sequence) = tokio::time::timeout(self.settings.nats_timeout, attempts).await else {
            record_append(event.kind(), "failed", started);
            return Err(StoreError::nats(format!(
                "append not acknowledged within {:?}",
                self.settings.nats_timeout
            )));
        };
        match event.kind() {
            EventKind::ThreadCreated => self.remember_thread(event.thread(), sequence),
            EventKind::ThreadErased => self.erasure_heard(event.thread()),
            EventKind::MessagePosted => {}
        }
        record_append(event.kind(), "stored", started);
        Ok(sequence)
    }

    async fn thread_exists(&self, thread: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .bounded(self.thread_created_for_client(thread))
            .await?
            .is_some())
    }

    async fn thread_last_sequence(&self, thread: Uuid) -> Result<Option<u64>, StoreError> {
        self.bounded(self.last_sequence(thread)).await
    }

    async fn thread_message_count(&self, thread: Uuid) -> Result<u64, StoreError> {
        self.bounded(self.message_count(thread)).await
    }

    async fn applied_through(&self, wanted: u64) -> Result<u64, StoreError> {
        let known = self.applied_floor.load(Ordering::Relaxed);
        if known >= wanted {
            return Ok(known);
        }
        // Every GET waiting in this process shares one request for the projector's progress.
        let stream = self.stream.clone();
        let consumer = self.settings.projector_consumer.clone();
        let floor = self
            .progress_asked
            .get((), move || async move {
                match stream.consumer_info(&consumer).await {
                    Ok(info) => Ok(info.ack_floor.stream_sequence),
                    // No projector has made its consumer yet (one is starting): it has applied
                    // nothing, and a GET waits for it as for one that is behind.
                    Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(0),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .map_err(StoreError::nats)?;
        Ok(self
            .applied_floor
            .fetch_max(floor, Ordering::Relaxed)
            .max(floor))
    }

    async fn applied_everything(&self) -> Result<Option<u64>, StoreError> {
        self.bounded(self.everything_applied()).await
    }

    fn erasures(&self) -> broadcast::Receiver<Uuid> {
        self.erasures.subscribe()
    }
}

#[async_trait]
impl Dependency for JetStreamLog {
    fn name(&self) -> &'static str {
        "nats"
    }

    /// Ready when the event stream can be appended to and read: connected, and the stream's
    /// leader answers (it is the one that stores appends and answers the reads promises
    /// depend on; during an election, or with too few servers of a cluster up, there is none).
    async fn check(&self) -> Result<(), Cause> {
        let state = self.client().connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(Box::new(NotReady::Disconnected(state.to_string())));
        }
        let mut stream = self.stream.clone();
        let answer = tokio::time::timeout(self.settings.nats_timeout, stream.info()).await;
        // The request may have failed because the connection went meanwhile.
        let state = self.client().connection_state();
        if answer.as_ref().map_or(true, |a| a.is_err())
            && state != async_nats::connection::State::Connected
        {
            return Err(Box::new(NotReady::Disconnected(state.to_string())));
        }
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.to_string().contains("stream not found") => {
                Err(Box::new(NotReady::NoStream(e.to_string())))
            }
            Ok(Err(e)) => Err(Box::new(NotReady::NoLeader(e.to_string()))),
            Err(_) => Err(Box::new(NotReady::NoLeader(format!(
                "no answer within {:?}",
                self.settings.nats_timeout
            )))),
        }
    }

    fn failure(
        &self,
        error: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> serde_json::Value {
        let reason = match error.downcast_ref::<NotReady>() {
            Some(NotReady::Disconnected(_)) => "not connected to NATS",
            Some(NotReady::NoLeader(_)) => {
                "the event stream has no leader to append to and read from (an election, or too few servers of the cluster up)"
            }
            Some(NotReady::NoStream(_)) => "the event stream does not exist",
            None => "unavailable",
        };
        serde_json::Value::String(reason.to_owned())
    }
}

/// Why the event log is not ready; `/readyz` shows which, the log shows the details.
#[derive(Debug, thiserror::Error)]
enum NotReady {
    #[error("NATS JetStream is unavailable: connection is {0}")]
    Disconnected(String),
    #[error("NATS JetStream is unavailable: the event stream's leader does not answer: {0}")]
    NoLeader(String),
    #[error("NATS JetStream is unavailable: the event stream is missing: {0}")]
    NoStream(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_room_for_its_payload_is_sent_without_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            headers::DEAD_LETTER_REASON,
            "x".repeat(REASON_MAX_BYTES).as_str(),
        );
        let wire = header_bytes(&headers);
        assert_eq!(
            wire,
            "NATS/1.0\r\n".len() + headers::DEAD_LETTER_REASON.len() + 2 + 300 + 2 + 2
        );
        assert!(record_fits(&headers, 1_000, 1 << 20));
        assert!(!record_fits(&headers, (1 << 20) - wire, 1 << 20));
        assert!(record_fits(&headers, usize::MAX / 2, 0));
    }
}
