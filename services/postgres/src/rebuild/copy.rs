//! Rows into PostgreSQL at bulk speed: the read model's rows in COPY's text format, and a
//! COPY of some of them.

use crate::sql_error;
use sqlx::{Connection, PgConnection};
use std::ops::Range;
use threadline_ports::rebuild::{BulkRows, Table};
use threadline_ports::{AppliedMessage, AppliedThread, StoreError};
use uuid::Uuid;

/// Rows in PostgreSQL's COPY text format, for the `threads` and `messages` tables, with
/// where each row ends (so that a chunk PostgreSQL refuses can be split).
#[derive(Default)]
pub struct CopyChunk {
    threads: Vec<u8>,
    messages: Vec<u8>,
    thread_ends: Vec<usize>,
    message_ends: Vec<usize>,
    /// A message's JSON before it is escaped into `messages`, kept between messages.
    scratch: Vec<u8>,
}

/// The columns, in the order `CopyChunk` writes them.
pub const THREAD_COLUMNS: &str = "id, user_json, created_at, stream_seq";
pub const MESSAGE_COLUMNS: &str =
    "id, thread_id, user_json, body, send_by_user, created_at, stream_seq, json";

impl CopyChunk {
    /// The text of rows `part` (not empty) of `table`.
    pub(crate) fn part(&self, table: Table, part: Range<usize>) -> &[u8] {
        let (data, ends) = self.table(table);
        let start = part.start.checked_sub(1).map_or(0, |i| ends[i]);
        &data[start..ends[part.end - 1]]
    }

    fn table(&self, table: Table) -> (&[u8], &[usize]) {
        match table {
            Table::Threads => (&self.threads, &self.thread_ends),
            Table::Messages => (&self.messages, &self.message_ends),
        }
    }
}

impl BulkRows for CopyChunk {
    fn bytes(&self) -> usize {
        self.threads.len() + self.messages.len()
    }

    fn rows(&self, table: Table) -> usize {
        self.table(table).1.len()
    }

    fn sequence(&self, table: Table, at: usize) -> Option<u64> {
        // `stream_seq` is a thread's last column, and a message's last but one (before `json`).
        let row = self.part(table, at..at + 1);
        match table {
            Table::Threads => row_sequence(row),
            Table::Messages => {
                let json = row.iter().rposition(|b| *b == b'\t')?;
                row_sequence(&row[..json])
            }
        }
    }

    fn push_thread(&mut self, t: &AppliedThread) {
        let out = &mut self.threads;
        push_field(
            out,
            t.id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        );
        out.push(b'\t');
        push_field(out, t.user.get());
        out.push(b'\t');
        push_timestamp(out, &t.timestamp);
        out.push(b'\t');
        push_number(out, t.stream_seq);
        out.push(b'\n');
        self.thread_ends.push(out.len());
    }

    fn push_message(&mut self, m: &AppliedMessage) {
        let out = &mut self.messages;
        push_field(
            out,
            m.id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        );
        out.push(b'\t');
        push_field(
            out,
            m.thread
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer()),
        );
        out.push(b'\t');
        push_field(out, m.user.get());
        out.push(b'\t');
        push_field(out, m.body.as_str());
        out.push(b'\t');
        out.push(if m.send_by_user { b't' } else { b'f' });
        out.push(b'\t');
        push_timestamp(out, &m.timestamp);
        out.push(b'\t');
        push_number(out, m.stream_seq);
        out.push(b'\t');
        push_json(out, &mut self.scratch, &m.json_fields());
        out.push(b'\n');
        self.message_ends.push(out.len());
    }
}

/// Appends a timestamp as the events write it (microseconds, `Z`), which PostgreSQL reads.
fn push_timestamp(out: &mut Vec<u8>, timestamp: &proto_events::Timestamp) {
    use std::io::Write;
    match timestamp.ascii() {
        Some(text) => out.extend_from_slice(&text),
        // Writing to a Vec cannot fail.
        None => {
            let _ = write!(out, "{timestamp}");
        }
    }
}

/// Appends a message's JSON as one field, serialized into `scratch` (no string of its own per
/// message) and escaped from there in one pass; `\N` (NULL: a reader renders the row from its
/// columns) if serde_json refuses it, which these fields never make it do.
fn push_json(out: &mut Vec<u8>, scratch: &mut Vec<u8>, json: &proto_events::MessageJson<'_>) {
    scratch.clear();
    match serde_json::to_writer(&mut *scratch, json) {
        Ok(()) => push_escaped(out, scratch),
        Err(_) => out.extend_from_slice(b"\\N"),
    }
}

fn push_number(out: &mut Vec<u8>, value: u64) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{value}");
}

/// Appends `text` escaped for COPY's text format (backslash, tab, newline, carriage return).
fn push_field(out: &mut Vec<u8>, text: &str) {
    push_escaped(out, text.as_bytes());
}

fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    // Most fields have nothing to escape: the search for the next byte that needs it is
    // memchr's vectorised one. Each byte is searched at most twice (once for `\r`).
    let find_others = |from: usize| {
        from + memchr::memchr3(b'\\', b'\t', b'\n', &bytes[from..]).unwrap_or(bytes.len() - from)
    };
    let mut plain = 0;
    let mut others = find_others(0);
    loop {
        if others < plain {
            others = find_others(plain);
        }
        let next = memchr::memchr(b'\r', &bytes[plain..others]).map_or(others, |i| plain + i);
        let Some(&special) = bytes.get(next) else {
            out.extend_from_slice(&bytes[plain..]);
            return;
        };
        out.extend_from_slice(&bytes[plain..next]);
        out.extend_from_slice(match special {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        plain = next + 1;
    }
}

/// COPYs `rows` of COPY text with `statement`, all of them or none.
pub(crate) async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    rows: &[u8],
) -> Result<(), StoreError> {
    let mut copy = conn.copy_in_raw(statement).await.map_err(sql_error)?;
    if let Err(e) = copy.send(rows).await {
        // The server may still be waiting for the rest: end the COPY before going on.
        let _ = copy.abort("the rows could not be sent").await;
        return Err(sql_error(e));
    }
    copy.finish().await.map(|_| ()).map_err(sql_error)
}

/// The stream sequence of a COPY text row: its last column.
fn row_sequence(row: &[u8]) -> Option<u64> {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    let start = row.iter().rposition(|b| *b == b'\t').map_or(0, |i| i + 1);
    std::str::from_utf8(&row[start..]).ok()?.parse().ok()
}

/// Opens a connection of its own for long statements (COPY, index builds): the pool's
/// statement timeout, meant for requests, does not apply.
pub async fn bulk_connection(
    settings: &crate::DatabaseSettings,
) -> Result<PgConnection, StoreError> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(settings.database_url.expose())
        .map_err(StoreError::database)?
        .options([("statement_timeout", "0")]);
    PgConnection::connect_with(&options)
        .await
        .map_err(StoreError::database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_row_is_named_by_its_sequence() {
        assert_eq!(row_sequence(b"a\tb\t42\n"), Some(42));
        assert_eq!(row_sequence(b"7"), Some(7));
        assert_eq!(row_sequence(b"a\tb\\t\tx\n"), None);
    }

    #[test]
    fn copy_text_escapes_what_the_format_reserves() {
        let mut out = Vec::new();
        push_field(&mut out, "a\tb\nc\\d\re");
        assert_eq!(out, b"a\\tb\\nc\\\\d\\re");
        out.clear();
        push_field(&mut out, "\t\tplain ünïcode\\");
        assert_eq!(out, "\\t\\tplain ünïcode\\\\".as_bytes());
        out.clear();
        push_field(&mut out, "");
        assert!(out.is_empty());
    }

    /// The field as the byte-by-byte rule escapes it.
    fn escaped_one_by_one(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in text.as_bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => out.push(b),
            }
        }
        out
    }

    #[test]
    fn every_mix_of_reserved_bytes_is_escaped_as_byte_by_byte() {
        let pieces = ["\\", "\t", "\n", "\r", "a", "é", "\r\r", "xyz"];
        // Every sequence of up to four pieces, and long runs around them.
        let mut texts = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = texts
                .iter()
                .flat_map(|t| pieces.iter().map(move |p| format!("{t}{p}")))
                .collect();
            texts.extend(longer);
        }
        texts.push(format!("{}\\{}", "\r".repeat(5_000), "b".repeat(5_000)));
        texts.push(format!("{}\n", "plain text ".repeat(1_000)));
        for text in texts {
            let mut out = Vec::new();
            push_field(&mut out, &text);
            assert_eq!(out, escaped_one_by_one(&text), "{text:?}");
        }
    }

    #[test]
    fn a_message_json_is_the_stored_json_escaped() {
        let message = threadline_ports::AppliedMessage {
            id: uuid::Uuid::from_u128(7),
            thread: uuid::Uuid::from_u128(8),
            user: proto_events::UserJson::from_json(r#"{"name":"A\\B\tC"}"#).expect("user"),
            timestamp: proto_events::Timestamp::parse("2026-11-24T03:22:40.123456Z")
                .expect("timestamp"),
            body: proto_events::MessageBody::new("line\nnext \"quoted\" \\ tab\t".into())
                .expect("body"),
            send_by_user: true,
            stream_seq: 9,
        };
        let mut out = Vec::new();
        push_json(&mut out, &mut Vec::new(), &message.json_fields());
        let mut expected = Vec::new();
        push_field(&mut expected, &message.json().expect("json"));
        assert_eq!(out, expected);
        assert!(!out.contains(&b'\t') && !out.contains(&b'\n'));
    }

    #[test]
    fn rows_become_copy_text_in_column_order() {
        let thread = Uuid::from_u128(1);
        let id = Uuid::from_u128(7);
        let mut chunk = CopyChunk::default();
        chunk.push_thread(&AppliedThread {
            id: thread,
            user: proto_events::UserJson::from_json(r#""tab\there""#).expect("user"),
            timestamp: proto_events::Timestamp::parse("2026-11-24T03:22:40.123456Z")
                .expect("timestamp"),
            stream_seq: 1,
        });
        chunk.push_message(&AppliedMessage {
            id,
            thread,
            user: proto_events::UserJson::from_json(r#""a""#).expect("user"),
            timestamp: proto_events::Timestamp::parse("2026-11-24T03:22:41.000000Z")
                .expect("timestamp"),
            body: proto_events::MessageBody::new("hi".into()).expect("body"),
            send_by_user: true,
            stream_seq: 2,
        });
        assert_eq!(
            String::from_utf8_lossy(&chunk.threads),
            format!("{thread}\t\"tab\\\\there\"\t2026-11-24T03:22:40.123456Z\t1\n")
        );
        assert_eq!(
            String::from_utf8_lossy(&chunk.messages),
            format!(
                "{id}\t{thread}\t\"a\"\thi\tt\t2026-11-24T03:22:41.000000Z\t2\t\
                 {{\"id\":\"{id}\",\"user\":\"a\",\"timestamp\":\"2026-11-24T03:22:41.000000Z\",\
                 \"body\":\"hi\",\"send_by_user\":true}}\n"
            )
        );
        assert_eq!(
            (chunk.rows(Table::Threads), chunk.rows(Table::Messages)),
            (1, 1)
        );
        assert_eq!(chunk.sequence(Table::Messages, 0), Some(2));
        assert_eq!(chunk.part(Table::Threads, 0..1), chunk.threads.as_slice());
    }
}
