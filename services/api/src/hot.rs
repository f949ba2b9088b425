//! Threads kept in memory, so that a `GET` of a thread read before answers without asking
//! PostgreSQL, and exactly as PostgreSQL would.
//!
//! An entry is a thread's response body and the stream sequence `through` which the read
//! model held every event of the thread when that body was read. It is served only when the
//! thread's last sequence in the log, learnt fresh for each request as every `GET` learns it
//! (read-your-writes, through any replica), is still at most `through`: no event of the
//! thread has been stored since, so the read model would answer the same bytes. Otherwise the
//! thread is read again, once the read model holds its new events.
//!
//! The read model also changes without events when a rebuild replaces it (a fixed fold may
//! render old events differently). The rebuild tells every API replica through PostgreSQL
//! ([`CHANGED_CHANNEL`](threadline_postgres::read_model::CHANGED_CHANNEL)); an entry is kept
//! under the epoch of [`Changes`] current before its read and served only while that epoch
//! lasts. While nothing listens (PostgreSQL unreachable), nothing is kept or served.
//!
//! An erased thread is forgotten as soon as its erasure is heard ([`HotThreads::forget`]);
//! before that, its kept body could not be served anyway: the log, asked for each request,
//! says it does not exist.

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use threadline_ports::Changes;
use uuid::Uuid;

/// What an entry costs beyond its body: the key, the fields and the cache's own slot.
const ENTRY_OVERHEAD: u64 = 96;
/// The average entry the cache is sized for (it holds more smaller ones).
const TYPICAL_ENTRY: u64 = 4 << 10;

/// Threads kept in memory, bounded by bytes; see the module's documentation.
#[derive(Clone)]
pub struct HotThreads {
    entries: Option<std::sync::Arc<Cache<Uuid, Entry, ByBytes>>>,
    changes: Changes,
}

#[derive(Clone)]
struct Entry {
    through: u64,
    epoch: u64,
    body: Bytes,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Uuid, Entry> for ByBytes {
    /// The body's bytes are its allocation: [`HotThreads::keep`] copies it to one of its own.
    fn weight(&self, _: &Uuid, entry: &Entry) -> u64 {
        entry.body.len() as u64 + ENTRY_OVERHEAD
    }
}

/// A thread's body as kept, and the sequence through which it holds the thread's events.
pub struct Kept {
    pub through: u64,
    pub body: Bytes,
}

impl HotThreads {
    /// Keeps up to `bytes` of threads (`None`: keeps nothing), valid while `changes` says so.
    pub fn new(bytes: Option<u64>, changes: Changes) -> Self {
        let entries = bytes.map(|bytes| {
            let items = (bytes / TYPICAL_ENTRY).clamp(16, 1 << 20) as usize;
            std::sync::Arc::new(Cache::with_weighter(items, bytes, ByBytes))
        });
        Self { entries, changes }
    }

    /// Keeps nothing.
    pub fn off() -> Self {
        Self::new(None, Changes::default())
    }

    /// The epoch to pass to [`keep`](Self::keep): taken before the read whose body is kept.
    pub fn epoch(&self) -> u64 {
        self.changes.epoch()
    }

    /// The thread as kept, if it was kept in the current epoch.
    pub fn get(&self, thread: Uuid) -> Option<Kept> {
        let entries = self.entries.as_ref()?;
        let epoch = self.changes.epoch();
        if epoch == 0 {
            return None;
        }
        let entry = entries.get(&thread)?;
        (entry.epoch == epoch).then_some(Kept {
            through: entry.through,
            body: entry.body,
        })
    }

    /// Keeps a thread's body, read in `epoch` once the read model held its events through
    /// `through`, unless the read model has changed since (or it could not be known).
    pub fn keep(&self, thread: Uuid, through: u64, epoch: u64, body: &Bytes) {
        let Some(entries) = &self.entries else {
            return;
        };
        if epoch == 0 || epoch != self.changes.epoch() {
            return;
        }
        // An entry kept through a later sequence by a request that ran meanwhile stays.
        if entries
            .get(&thread)
            .is_some_and(|kept| kept.epoch == epoch && kept.through > through)
        {
            return;
        }
        // A copy of its own, of exactly its length: the body given may hold a larger
        // allocation (a buffer grown by doubling, or a slice of a larger one), and the
        // bound counts the bytes kept in memory, not the bytes of the response.
        entries.insert(
            thread,
            Entry {
                through,
                epoch,
                body: Bytes::copy_from_slice(body),
            },
        );
    }

    /// Forgets a thread: it was erased.
    pub fn forget(&self, thread: Uuid) {
        if let Some(entries) = &self.entries {
            entries.remove(&thread);
        }
    }

    /// Forgets every thread (erasures may have been missed).
    pub fn forget_all(&self) {
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }

    /// Bytes kept now.
    pub fn weight(&self) -> u64 {
        self.entries.as_ref().map_or(0, |entries| entries.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Bytes {
        Bytes::from(text.to_owned())
    }

    #[test]
    fn a_thread_is_served_only_in_the_epoch_it_was_read_in() {
        let changes = Changes::fixed(1);
        let hot = HotThreads::new(Some(1 << 20), changes.clone());
        let thread = Uuid::new_v4();
        let epoch = hot.epoch();
        hot.keep(thread, 7, epoch, &body("seven"));
        let kept = hot.get(thread).expect("kept");
        assert_eq!((kept.through, kept.body), (7, body("seven")));

        changes.heard();
        assert!(
            hot.get(thread).is_none(),
            "served after the read model changed"
        );
        // Read before the change, kept after it: not kept.
        hot.keep(thread, 8, epoch, &body("eight"));
        assert!(hot.get(thread).is_none());
        hot.keep(thread, 8, hot.epoch(), &body("eight"));
        assert_eq!(hot.get(thread).map(|k| k.through), Some(8));
    }

    #[test]
    fn nothing_is_kept_while_changes_cannot_be_heard_or_without_memory() {
        let thread = Uuid::new_v4();
        let deaf = HotThreads::new(Some(1 << 20), Changes::fixed(0));
        deaf.keep(thread, 1, deaf.epoch(), &body("x"));
        assert!(deaf.get(thread).is_none());
        let off = HotThreads::new(None, Changes::fixed(1));
        off.keep(thread, 1, 1, &body("x"));
        assert!(off.get(thread).is_none());
    }

    #[test]
    fn an_erased_thread_is_forgotten() {
        let hot = HotThreads::new(Some(1 << 20), Changes::fixed(1));
        let (erased, kept) = (Uuid::new_v4(), Uuid::new_v4());
        hot.keep(erased, 1, 1, &body("erased"));
        hot.keep(kept, 2, 1, &body("kept"));
        hot.forget(erased);
        assert!(hot.get(erased).is_none());
        assert!(hot.get(kept).is_some());
        hot.forget_all();
        assert!(hot.get(kept).is_none());
        assert_eq!(hot.weight(), 0);
    }

    #[test]
    fn an_older_read_does_not_replace_a_newer_one() {
        let hot = HotThreads::new(Some(1 << 20), Changes::fixed(3));
        let thread = Uuid::new_v4();
        hot.keep(thread, 20, 3, &body("twenty"));
        hot.keep(thread, 10, 3, &body("ten"));
        assert_eq!(hot.get(thread).map(|k| k.body), Some(body("twenty")));
    }

    /// Counts the bytes each thread has allocated and not freed, so that a test sees what it
    /// allocated whatever the other tests do meanwhile.
    struct Counting;

    thread_local! {
        static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    }

    fn count(bytes: isize) {
        let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
    }

    fn live() -> isize {
        LIVE.with(|live| live.get())
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            count(layout.size() as isize);
            std::alloc::System.alloc(layout)
        }

        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            count(layout.size() as isize);
            std::alloc::System.alloc_zeroed(layout)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            count(-(layout.size() as isize));
            std::alloc::System.dealloc(ptr, layout)
        }

        unsafe fn realloc(
            &self,
            ptr: *mut u8,
            layout: std::alloc::Layout,
            new_size: usize,
        ) -> *mut u8 {
            count(new_size as isize - layout.size() as isize);
            std::alloc::System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    #[test]
    fn memory_is_bounded_in_bytes_allocated() {
        let bound: u64 = 1 << 20;
        let before = live();
        let hot = HotThreads::new(Some(bound), Changes::fixed(1));
        for through in 0..500 {
            // As the read model builds a body: in a buffer grown by doubling, half full.
            let mut buffer = Vec::with_capacity(16 << 10);
            buffer.resize((8 << 10) + 1, b'x');
            hot.keep(Uuid::new_v4(), through, 1, &Bytes::from(buffer));
        }
        let held = (live() - before) as u64;
        assert!(hot.weight() <= bound, "{}", hot.weight());
        assert!(
            held <= bound + bound / 10,
            "{held} bytes held for a bound of {bound}"
        );
    }

    #[test]
    fn memory_is_bounded_by_the_bytes_given() {
        let hot = HotThreads::new(Some(64 << 10), Changes::fixed(1));
        let page = Bytes::from(vec![b'x'; 4 << 10]);
        for through in 0..100 {
            hot.keep(Uuid::new_v4(), through, 1, &page);
        }
        assert!(hot.weight() <= 64 << 10, "{}", hot.weight());
        assert!(hot.weight() >= 32 << 10, "{}", hot.weight());
    }
}
