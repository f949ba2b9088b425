//! Whether the projector makes progress. A batch that keeps failing (the database refuses
//! every attempt in a way that is not the data's fault, a table is locked, the broker does not
//! take a set-aside event) holds back every later event; after `PROJECTOR_STUCK_AFTER` the
//! projector says so: one error log line naming the event's sequence and the error, and
//! `/readyz` answers 503 with the sequence under the check `projection` (and the fixed reason
//! `batch_failing`: the error itself is the log's, not whoever asks), until it moves on.

use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use threadline_ports::bounded_text;
use threadline_ports::{Cause, Dependency};

/// The most bytes of an error shown by the log line.
const CAUSE_MAX_BYTES: usize = 500;

/// What `/readyz` says of a stuck projector's cause.
const STUCK_REASON: &str = "batch_failing";

/// A projector that has not moved past an event for a while: why its `projection` check
/// fails.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the projection has not moved past event sequence {sequence} for {failing_for:?} ({attempts} attempts): {cause}")]
pub struct Stuck {
    pub sequence: u64,
    pub failing_for: Duration,
    pub attempts: u32,
    /// The last attempt's error, bounded.
    pub cause: String,
}

/// The projector's progress, as its batches report it.
pub struct Stall {
    after: Duration,
    failing: Mutex<Option<Failing>>,
}

/// Since when the batch in hand has been failing.
#[derive(Debug, Clone)]
struct Failing {
    /// The sequence of the (first) event of the part that failed last.
    sequence: u64,
    since: Instant,
    attempts: u32,
    cause: String,
    /// Whether the projector has said it is stuck.
    reported: bool,
}

impl Stall {
    /// Stuck once a batch has failed for `after`.
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            failing: Mutex::new(None),
        }
    }

    /// An attempt at the batch in hand failed at event `sequence`.
    pub fn failed(&self, sequence: u64, cause: &dyn std::fmt::Display) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let state = failing.get_or_insert_with(|| Failing {
            sequence,
            since: Instant::now(),
            attempts: 0,
            cause: String::new(),
            reported: false,
        });
        state.sequence = sequence;
        state.attempts += 1;
        state.cause = bounded_text(&cause.to_string(), CAUSE_MAX_BYTES);
        let failing_for = state.since.elapsed();
        if !state.reported && failing_for >= self.after {
            state.reported = true;
            tracing::error!(
                sequence,
                attempts = state.attempts,
                "the projector cannot make progress: event sequence {sequence} has failed for \
                 {failing_for:?} ({} attempts), every later event waits: {}",
                state.attempts,
                state.cause
            );
        }
    }

    /// The batch in hand is done (applied or set aside).
    pub fn moved_on(&self) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = failing.take() {
            if state.reported {
                tracing::info!(
                    sequence = state.sequence,
                    "the projector moves on past event sequence {} after {:?}",
                    state.sequence,
                    state.since.elapsed()
                );
            }
        }
    }

    /// Why the projector is stuck, if it is.
    pub fn stuck(&self) -> Option<Stuck> {
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let state = failing.as_ref()?;
        let failing_for = state.since.elapsed();
        (failing_for >= self.after).then(|| Stuck {
            sequence: state.sequence,
            failing_for,
            attempts: state.attempts,
            cause: state.cause.clone(),
        })
    }
}

#[async_trait]
impl Dependency for Stall {
    fn name(&self) -> &'static str {
        "projection"
    }

    async fn check(&self) -> Result<(), Cause> {
        self.stuck().map_or(Ok(()), |stuck| Err(stuck.into()))
    }

    /// The sequence and for how long, never the error: it may name tables, hosts or values
    /// (the log line has it).
    fn failure(&self, error: &(dyn std::error::Error + Send + Sync + 'static)) -> Value {
        match error.downcast_ref::<Stuck>() {
            Some(Stuck {
                sequence,
                failing_for,
                attempts,
                cause: _,
            }) => json!({
                "status": "stuck",
                "reason": STUCK_REASON,
                "sequence": sequence,
                "failing_for_seconds": failing_for.as_secs(),
                "attempts": attempts,
            }),
            _ => json!({"status": "stuck", "reason": STUCK_REASON}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_failing_past_the_bound_is_stuck_until_it_moves_on() {
        let stall = Stall::new(Duration::ZERO);
        assert!(stall.stuck().is_none());
        stall.failed(41, &"PostgreSQL is unavailable");
        stall.failed(42, &"canceling statement due to statement timeout");
        let Some(Stuck {
            sequence,
            attempts,
            cause,
            ..
        }) = stall.stuck()
        else {
            panic!("not stuck");
        };
        assert_eq!((sequence, attempts), (42, 2));
        assert_eq!(cause, "canceling statement due to statement timeout");
        stall.moved_on();
        assert!(stall.stuck().is_none());
    }

    #[test]
    fn a_failure_within_the_bound_is_not_stuck() {
        let stall = Stall::new(Duration::from_secs(3600));
        stall.failed(7, &"lost the connection");
        assert!(stall.stuck().is_none());
    }

    #[test]
    fn the_cause_shown_is_bounded() {
        let stall = Stall::new(Duration::ZERO);
        stall.failed(1, &"x".repeat(100_000));
        let Some(Stuck { cause, .. }) = stall.stuck() else {
            panic!("not stuck");
        };
        assert!(cause.len() <= CAUSE_MAX_BYTES);
    }
}
