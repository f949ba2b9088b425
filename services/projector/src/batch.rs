//! How events are grouped into writes, shared by the live projector and a replay: batches
//! bounded by count and by bytes, and a batch that PostgreSQL refuses split in halves until
//! the events it refuses are found, so that every other event is applied.

use std::future::Future;
use std::ops::Range;

/// The bounds of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most events.
    pub events: usize,
    /// Most bytes (as received from NATS); one event larger than this is a batch of its own.
    pub bytes: usize,
}

/// The ranges of consecutive items (of these sizes in bytes) that make batches within
/// `limits`, in order; each holds at least one item.
pub fn ranges(sizes: &[usize], limits: Limits) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, size) in sizes.iter().enumerate() {
        let full = i - start >= limits.events.max(1)
            || (i > start && bytes.saturating_add(*size) > limits.bytes);
        if full {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(*size);
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// A write that failed for a reason other than the data: the whole batch is to be tried again.
#[derive(Debug)]
pub struct Failed<E> {
    /// The index of the first item of the part that failed.
    pub at: usize,
    pub error: E,
}

/// The parts of a batch of `len` events still to write: the whole batch first; a part that
/// PostgreSQL refuses is split in halves, down to single events, the left half first, so
/// that refused events come out in stream order. [`isolate`] drives it.
#[derive(Debug)]
struct Split {
    /// The next part last.
    parts: Vec<Range<usize>>,
}

impl Split {
    fn new(len: usize) -> Self {
        let whole = 0..len;
        Self { parts: vec![whole] }
    }

    /// The next part to write, if any is left.
    fn next_part(&mut self) -> Option<Range<usize>> {
        loop {
            let part = self.parts.pop()?;
            if !part.is_empty() {
                return Some(part);
            }
        }
    }

    /// PostgreSQL refused `part`. `true` if it is a single event, refused on its own;
    /// otherwise its halves are the next parts.
    fn refused(&mut self, part: Range<usize>) -> bool {
        if part.len() <= 1 {
            return true;
        }
        let middle = part.start + part.len() / 2;
        self.parts.push(middle..part.end);
        self.parts.push(part.start..middle);
        false
    }
}

/// Writes a part of a batch, all of it or none (one transaction, one COPY): the items whose
/// indexes are in `part`. A closure `|part| async { ... }` is one; a writer that holds a
/// connection across the writes (a replay) is a type of its own.
pub trait WritePart {
    type Error;

    fn write_part(&mut self, part: Range<usize>) -> impl Future<Output = Result<(), Self::Error>>;
}

impl<F, Fut, E> WritePart for F
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    type Error = E;

    fn write_part(&mut self, part: Range<usize>) -> impl Future<Output = Result<(), E>> {
        self(part)
    }
}

/// Writes `len` items with `write`, splitting the batch as [`Split`] does where PostgreSQL
/// refuses the data (`refused(&error)`). Returns the items refused on their own, in order,
/// with the refusal; every other item has been written. Stops at the first error that is
/// not a refusal (a lost connection: sending the same rows later may well succeed), after
/// which some parts may be written already; writes are idempotent, so the caller tries the
/// whole batch again.
pub async fn isolate<W: WritePart>(
    len: usize,
    refused: impl Fn(&W::Error) -> bool,
    mut write: W,
) -> Result<Vec<(usize, W::Error)>, Failed<W::Error>> {
    let mut refusals = Vec::new();
    let mut split = Split::new(len);
    while let Some(part) = split.next_part() {
        match write.write_part(part.clone()).await {
            Ok(()) => {}
            Err(error) if refused(&error) => {
                if split.refused(part.clone()) {
                    refusals.push((part.start, error));
                }
            }
            Err(error) => {
                return Err(Failed {
                    at: part.start,
                    error,
                })
            }
        }
    }
    Ok(refusals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Debug, PartialEq)]
    enum Error {
        Refused(usize),
        Lost,
    }

    /// A store that refuses any write holding one of `bad`, and otherwise loses its
    /// connection on any write holding one of `lost`; it records what it wrote.
    struct Store {
        bad: Vec<usize>,
        lost: Vec<usize>,
        written: RefCell<Vec<usize>>,
        attempts: RefCell<usize>,
    }

    impl Store {
        fn new(bad: &[usize], lost: &[usize]) -> Self {
            Store {
                bad: bad.to_vec(),
                lost: lost.to_vec(),
                written: RefCell::default(),
                attempts: RefCell::default(),
            }
        }

        async fn apply(&self, part: Range<usize>) -> Result<(), Error> {
            *self.attempts.borrow_mut() += 1;
            if let Some(bad) = self.bad.iter().find(|b| part.contains(b)) {
                return Err(Error::Refused(*bad));
            }
            if self.lost.iter().any(|l| part.contains(l)) {
                return Err(Error::Lost);
            }
            self.written.borrow_mut().extend(part);
            Ok(())
        }

        async fn isolate(&self, len: usize) -> Result<Vec<(usize, Error)>, Failed<Error>> {
            isolate(
                len,
                |e| matches!(e, Error::Refused(_)),
                |part| self.apply(part),
            )
            .await
        }

        fn written(&self) -> Vec<usize> {
            let mut written = self.written.borrow().clone();
            written.sort();
            written
        }
    }

    fn run<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    #[test]
    fn a_batch_that_is_not_refused_is_written_at_once() {
        let store = Store::new(&[], &[]);
        assert_eq!(run(store.isolate(500)).unwrap(), []);
        assert_eq!(store.written(), (0..500).collect::<Vec<_>>());
        assert_eq!(*store.attempts.borrow(), 1);
    }

    #[test]
    fn one_refused_event_is_found_and_every_other_one_is_written() {
        for bad in [0, 1, 250, 498, 499] {
            let store = Store::new(&[bad], &[]);
            let refused = run(store.isolate(500)).unwrap();
            assert_eq!(refused, [(bad, Error::Refused(bad))]);
            let expected: Vec<usize> = (0..500).filter(|i| *i != bad).collect();
            assert_eq!(store.written(), expected);
            // Halving: about two writes per level of a tree of depth log2(500) = 9.
            assert!(*store.attempts.borrow() <= 2 * 9 + 1, "bad {bad}");
        }
    }

    #[test]
    fn several_refused_events_come_out_in_order() {
        let store = Store::new(&[7, 3, 8], &[]);
        let refused = run(store.isolate(10)).unwrap();
        let at: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, [3, 7, 8]);
        assert_eq!(store.written(), [0, 1, 2, 4, 5, 6, 9]);
    }

    #[test]
    fn a_single_refused_event_is_refused_alone() {
        let store = Store::new(&[0], &[]);
        assert_eq!(run(store.isolate(1)).unwrap(), [(0, Error::Refused(0))]);
        assert!(store.written().is_empty());
    }

    #[test]
    fn an_error_that_is_not_a_refusal_stops_the_batch_where_it_happened() {
        let store = Store::new(&[], &[6]);
        let failed = run(store.isolate(8)).unwrap_err();
        assert_eq!(failed.error, Error::Lost);
        assert_eq!(failed.at, 0);
        assert!(store.written().is_empty());

        let store = Store::new(&[1], &[6]);
        let failed = run(store.isolate(8)).unwrap_err();
        // Only the part with the lost write fails that way: the refusal split the batch first.
        assert_eq!(failed.at, 4);
        assert_eq!(store.written(), [0, 2, 3]);
    }

    #[test]
    fn nothing_to_write_writes_nothing() {
        let store = Store::new(&[], &[]);
        assert_eq!(run(store.isolate(0)).unwrap(), []);
        assert_eq!(*store.attempts.borrow(), 0);
    }

    #[test]
    fn batches_are_cut_by_count_and_by_bytes() {
        let limits = Limits {
            events: 3,
            bytes: 10,
        };
        let sizes = |items: Vec<usize>| -> Vec<Vec<usize>> {
            ranges(&items, limits)
                .into_iter()
                .map(|range| items[range].to_vec())
                .collect()
        };
        assert_eq!(sizes(vec![1; 7]), [vec![1; 3], vec![1; 3], vec![1]]);
        assert_eq!(sizes(vec![4, 4, 4, 4]), [vec![4, 4], vec![4, 4]]);
        // An event over the bound is a batch of its own; nothing is lost or reordered.
        assert_eq!(sizes(vec![2, 30, 2, 2]), [vec![2], vec![30], vec![2, 2]]);
        assert_eq!(sizes(vec![10, 1]), [vec![10], vec![1]]);
        assert!(sizes(vec![]).is_empty());
        assert_eq!(ranges(&[5, 5, 5], limits), [0..2, 2..3]);
    }
}
