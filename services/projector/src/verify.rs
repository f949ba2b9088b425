//! `threadline verify`: folds the stream afresh and compares the result with the serving read
//! model, thread by thread and message by message.
//!
//! Safe on a live system: it first notes the stream's last sequence L, waits (bounded) until
//! the live projector has applied everything up to L, folds only events up to L into
//! tables of its own (temporary ones of its session, in PostgreSQL), and ignores serving rows
//! that came from events after L. Nothing it does is visible to anyone else. An erased thread
//! is absent from both sides: the fold counts none of its events.

use crate::bulk::BulkWriter;
use crate::progress::Progress;
use crate::replay::{self, Counts, EventReader, ReplayFold};
use crate::ProjectorError;
use serde::Serialize;
use std::time::{Duration, Instant};
use threadline_nats::JetStreamLog;
pub use threadline_ports::rebuild::Difference;
use threadline_ports::rebuild::VerifyTarget;
use threadline_ports::{EventLog, EventReplay};

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Events up to this stream sequence were compared.
    pub through: u64,
    pub events: u64,
    pub threads: u64,
    pub messages: u64,
    pub differences: Vec<Difference>,
}

/// Compares the serving read model with a fresh fold of `log` into `target`, once the live
/// projector has applied the events to compare (waiting at most `wait`).
pub async fn verify<T: VerifyTarget>(
    log: &JetStreamLog,
    target: T,
    wait: Duration,
) -> Result<Report, ProjectorError> {
    let (first, through) = replay::stream_bounds(log).await?;
    wait_for_projector(log, through, wait).await?;

    let total = if through >= first {
        through - first + 1
    } else {
        0
    };
    let progress = Progress::new("verify", total);
    // Every thread erased up to `through` at least: none of their events is folded, and the
    // fold meets no erasure it did not know of (they are all at or before `through`).
    let erased = log.erased_threads().await?;
    let mut reader = EventReader::open(log, first).await?;
    let mut fold = ReplayFold::with_erased(erased);
    let writer = BulkWriter::start(target);
    let mut target = replay::load(&mut reader, &mut fold, writer, through, &progress).await?;
    progress.phase("comparing");
    let differences = target.differences(through).await?;
    progress.finish();
    let Counts {
        events,
        threads,
        messages,
        ..
    } = fold.counts;
    Ok(Report {
        through,
        events,
        threads,
        messages,
        differences,
    })
}

/// Waits until the live projector's consumer has acknowledged every event up to `through`.
async fn wait_for_projector(
    log: &impl EventLog,
    through: u64,
    wait: Duration,
) -> Result<(), ProjectorError> {
    if through == 0 {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        let applied = log.applied_through(through).await.unwrap_or(0);
        if applied >= through {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(ProjectorError::ProjectorBehind {
                applied,
                wanted: through,
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
