//! NATS subject names. Every event of a thread lives under that thread's own subjects:
//!
//! - `<prefix>.thread.<thread_id>.created`: the thread's one `ThreadCreated` event;
//! - `<prefix>.thread.<thread_id>.message`: its `MessagePosted` events;
//! - `<prefix>.thread.<thread_id>.erased`: its `ThreadErased`, once an operator has erased it
//!   (what stays of an erased thread in the stream; its other subjects are purged);
//! - `<prefix>.deadletter.<reason>`: events set aside by a consumer, outside the event stream;
//! - `<prefix>.stored.<thread_id>.message`: each `MessagePosted` event once the event stream
//!   has stored it, republished by the NATS server itself with its stream sequence (the
//!   subjects websocket gateways listen on; only the server may publish there).
//!
//! The prefix is `chat` unless configured otherwise.

use crate::event::EventKind;
use uuid::Uuid;

/// Why a prefix or a subject was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectsError {
    #[error("subject prefix {0:?} must be one or more dot-separated tokens of letters, digits, '-' or '_'")]
    BadPrefix(String),
    #[error("subject {0:?} is not a threadline event subject")]
    NotAnEventSubject(String),
}

/// The subject names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub const DEFAULT_PREFIX: &'static str = "chat";

    pub fn new(prefix: &str) -> Result<Self, SubjectsError> {
        let valid_token = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if prefix.split('.').all(valid_token) {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(SubjectsError::BadPrefix(prefix.to_owned()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject of a thread's `ThreadCreated` event.
    pub fn thread_created(&self, thread: Uuid) -> String {
        self.event(thread, EventKind::ThreadCreated)
    }

    /// The subject of a thread's `MessagePosted` events.
    pub fn message_posted(&self, thread: Uuid) -> String {
        self.event(thread, EventKind::MessagePosted)
    }

    /// The subject of a thread's `ThreadErased`.
    pub fn thread_erased(&self, thread: Uuid) -> String {
        self.event(thread, EventKind::ThreadErased)
    }

    /// The subjects of a thread's own events, which erasing it purges: its `created` and
    /// `message` subjects (its `erased` subject stays).
    pub fn thread_contents(&self, thread: Uuid) -> [String; 2] {
        [self.thread_created(thread), self.message_posted(thread)]
    }

    /// Every subject of a thread's events.
    pub fn thread_subjects(&self, thread: Uuid) -> [String; 3] {
        [
            self.thread_created(thread),
            self.message_posted(thread),
            self.thread_erased(thread),
        ]
    }

    /// The `erased` subjects of every thread: where the erasures are read.
    pub fn erasures(&self) -> String {
        format!(
            "{}.thread.*.{}",
            self.prefix,
            EventKind::ThreadErased.subject_token()
        )
    }

    /// The subject of one kind of event of one thread.
    pub fn event(&self, thread: Uuid, kind: EventKind) -> String {
        format!(
            "{}.thread.{}.{}",
            self.prefix,
            thread.hyphenated(),
            kind.subject_token()
        )
    }

    /// The subjects the event stream captures.
    pub fn stream_subjects(&self) -> Vec<String> {
        [
            EventKind::ThreadCreated,
            EventKind::MessagePosted,
            EventKind::ThreadErased,
        ]
        .iter()
        .map(|kind| format!("{}.thread.*.{}", self.prefix, kind.subject_token()))
        .collect()
    }

    /// The subject on which the NATS server republishes a thread's `MessagePosted` events
    /// once the event stream has stored them.
    pub fn stored_messages(&self, thread: Uuid) -> String {
        format!("{}.stored.{}.message", self.prefix, thread.hyphenated())
    }

    /// The event stream's republish rule: the source subjects and the destination pattern
    /// that yields [`Subjects::stored_messages`].
    pub fn stored_republish(&self) -> (String, String) {
        (
            format!(
                "{}.thread.*.{}",
                self.prefix,
                EventKind::MessagePosted.subject_token()
            ),
            format!("{}.stored.{{{{wildcard(1)}}}}.message", self.prefix),
        )
    }

    /// The subject a set-aside event is republished on.
    pub fn dead_letter(&self, reason_code: &str) -> String {
        format!("{}.deadletter.{}", self.prefix, reason_code)
    }

    /// The subjects of the dead-letter stream.
    pub fn dead_letter_subjects(&self) -> Vec<String> {
        vec![format!("{}.deadletter.>", self.prefix)]
    }

    /// Reads the thread id and event kind out of an event subject.
    pub fn parse(&self, subject: &str) -> Result<(Uuid, EventKind), SubjectsError> {
        let bad = || SubjectsError::NotAnEventSubject(subject.to_owned());
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(".thread."))
            .ok_or_else(bad)?;
        let (thread, kind) = rest.split_once('.').ok_or_else(bad)?;
        let token = thread;
        let thread = Uuid::try_parse(token).map_err(|_| bad())?;
        // Only the canonical spelling: gateways listen on it, and the log is searched by it.
        if thread.hyphenated().to_string() != token {
            return Err(bad());
        }
        let kind = EventKind::from_subject_token(kind).ok_or_else(bad)?;
        Ok((thread, kind))
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: Self::DEFAULT_PREFIX.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREAD: &str = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";

    #[test]
    fn names_per_thread_subjects() {
        let s = Subjects::default();
        let id = Uuid::parse_str(THREAD).unwrap();
        assert_eq!(
            s.thread_created(id),
            format!("chat.thread.{THREAD}.created")
        );
        assert_eq!(
            s.message_posted(id),
            format!("chat.thread.{THREAD}.message")
        );
        assert_eq!(
            s.stream_subjects(),
            vec![
                "chat.thread.*.created",
                "chat.thread.*.message",
                "chat.thread.*.erased"
            ]
        );
        assert_eq!(s.thread_erased(id), format!("chat.thread.{THREAD}.erased"));
        assert_eq!(s.erasures(), "chat.thread.*.erased");
        assert_eq!(
            s.thread_contents(id),
            [s.thread_created(id), s.message_posted(id)]
        );
        assert_eq!(s.thread_subjects(id)[2], s.thread_erased(id));
        assert_eq!(s.dead_letter("invalid"), "chat.deadletter.invalid");
        assert_eq!(
            s.stored_messages(id),
            format!("chat.stored.{THREAD}.message")
        );
        assert_eq!(
            s.stored_republish(),
            (
                "chat.thread.*.message".to_owned(),
                "chat.stored.{{wildcard(1)}}.message".to_owned()
            )
        );
    }

    #[test]
    fn parses_its_own_subjects_back() {
        let s = Subjects::new("acme.support").unwrap();
        let id = Uuid::parse_str(THREAD).unwrap();
        assert_eq!(
            s.parse(&s.message_posted(id)),
            Ok((id, EventKind::MessagePosted))
        );
        assert_eq!(
            s.parse(&s.thread_created(id)),
            Ok((id, EventKind::ThreadCreated))
        );
        assert_eq!(
            s.parse(&s.thread_erased(id)),
            Ok((id, EventKind::ThreadErased))
        );
    }

    #[test]
    fn refuses_foreign_subjects() {
        let s = Subjects::default();
        for subject in [
            "chat.thread.not-a-uuid.message",
            &format!("chat.thread.{THREAD}.deleted"),
            &format!("other.thread.{THREAD}.message"),
            "chat.thread",
            &format!("chat.thread.{}.message", THREAD.to_uppercase()),
            &format!("chat.thread.{}.message", THREAD.replace('-', "")),
        ] {
            assert!(s.parse(subject).is_err(), "{subject}");
        }
    }

    #[test]
    fn refuses_bad_prefixes() {
        for prefix in ["", "a..b", "a.*", "a.>", "a b"] {
            assert!(Subjects::new(prefix).is_err(), "{prefix:?}");
        }
    }
}
