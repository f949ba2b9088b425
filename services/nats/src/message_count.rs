//! How many messages the event stream holds of a thread, for the api's bound on a thread's
//! messages (`THREAD_MAX_MESSAGES`), at the cost of one small request per post.
//!
//! The stream can count a subject's messages (`STREAM.INFO` with a subject filter), but
//! nats-server 2.9 answers that by reading the per-subject index of every block the subject
//! spans: 1.3 to 1.9 ms for a thread of 100 messages spread over a stream of 100,000, 75 to
//! 85 ms for one of 200 spread over 1,000,000 (nats-server 2.9.10 on a 2-core machine,
//! docs/behaviour.md). A request for one message by subject takes 0.15 to 0.18 ms there,
//! whatever the stream's size. So each process keeps a tally per thread: a count, and the
//! stream sequence of the latest message it counted. A count asks the stream leader for the
//! thread's next message after the tally (`STREAM.MSG.GET` with `next_by_subj`, the request
//! of [`next_on_subject`]), once per message stored since, and once more to find none; past
//! [`MOST_STEPS`] messages, or for a thread it has no tally of, it asks for the count itself
//! and then for the latest message's sequence.
//!
//! A message stored between those two requests is in neither the count nor after the tally,
//! so a tally may count fewer messages than the stream holds (by what was stored within that
//! moment): the bound is then passed by as many, never applied early. With `STREAM_MAX_AGE`,
//! messages that expire are still counted by a tally until it is made again.

use crate::existence::next_on_subject;
use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;
use quick_cache::unsync::Cache;
use std::sync::Mutex;
use threadline_ports::StoreError;
use uuid::Uuid;

/// How many threads each process keeps a tally of; past it, those used least of late go first
/// (and are counted afresh when asked about again).
pub const TALLIES_CAPACITY: usize = 10_000;

/// How many messages stored since a tally are stepped over, one request each, before the
/// stream is asked for the count instead.
pub const MOST_STEPS: usize = 32;

/// A thread's messages as a process last counted them: `count` of them through stream
/// sequence `through` (the latest of them; 0 when there were none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    count: u64,
    through: u64,
}

/// The tallies of one process.
pub struct Tallies {
    tallies: Mutex<Cache<Uuid, Tally>>,
}

impl Default for Tallies {
    fn default() -> Self {
        Self {
            tallies: Mutex::new(Cache::new(TALLIES_CAPACITY)),
        }
    }
}

impl Tallies {
    fn get(&self, thread: Uuid) -> Option<Tally> {
        self.lock().get(&thread).copied()
    }

    /// Keeps `tally` unless one that has counted further is kept already (a concurrent count).
    fn keep(&self, thread: Uuid, tally: Tally) {
        let mut tallies = self.lock();
        if tallies
            .peek(&thread)
            .is_some_and(|kept| kept.through > tally.through)
        {
            return;
        }
        tallies.insert(thread, tally);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache<Uuid, Tally>> {
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many messages the stream holds on `subject`, the messages of `thread` (see the
    /// module's documentation for how, and for when it may count fewer).
    pub async fn count(
        &self,
        jetstream: &jetstream::Context,
        stream: &stream::Stream,
        stream_name: &str,
        thread: Uuid,
        subject: &str,
    ) -> Result<u64, StoreError> {
        if let Some(mut tally) = self.get(thread) {
            for _ in 0..=MOST_STEPS {
                match next_on_subject(jetstream, stream_name, subject, tally.through + 1).await? {
                    None => {
                        self.keep(thread, tally);
                        return Ok(tally.count);
                    }
                    Some(stored) => {
                        tally.count += 1;
                        tally.through = stored.sequence;
                    }
                }
            }
        }
        // The count first, then the latest message: what is stored between the two is left
        // out of both, so the tally counts too few rather than too many.
        let count = subject_count(stream, subject).await?;
        let through = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => message.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(StoreError::nats(e)),
        };
        self.keep(thread, Tally { count, through });
        Ok(count)
    }
}

/// The stream's count of `subject`'s messages: its info filtered to that subject.
async fn subject_count(stream: &stream::Stream, subject: &str) -> Result<u64, StoreError> {
    let mut subjects = stream
        .info_with_subjects(subject)
        .await
        .map_err(StoreError::nats)?;
    // One literal subject: its count is on the first page, or it has no message; either way
    // no second page is asked for.
    match subjects.try_next().await.map_err(StoreError::nats)? {
        Some((_, count)) => Ok(count as u64),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_that_counted_further_is_kept() {
        let tallies = Tallies::default();
        let thread = Uuid::from_u128(1);
        tallies.keep(
            thread,
            Tally {
                count: 5,
                through: 50,
            },
        );
        tallies.keep(
            thread,
            Tally {
                count: 4,
                through: 40,
            },
        );
        assert_eq!(tallies.get(thread).map(|t| t.count), Some(5));
        tallies.keep(
            thread,
            Tally {
                count: 6,
                through: 60,
            },
        );
        assert_eq!(
            tallies.get(thread),
            Some(Tally {
                count: 6,
                through: 60
            })
        );
    }
}
