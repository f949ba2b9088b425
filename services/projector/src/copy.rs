//! Rows into PostgreSQL at bulk speed: the COPY text format of the read model's rows, and a
//! writer that loads them on a task of its own while the next ones are folded.

use crate::batch::Split;
use crate::ProjectorError;
use sqlx::{Connection, PgConnection};
use threadline_infra::{AppliedMessage, AppliedThread, StoreError};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Bytes of COPY text gathered before they are handed to the writer.
const CHUNK_BYTES: usize = 4 << 20;

/// Rows in PostgreSQL's COPY text format, for the `threads` and `messages` tables, with
/// where each row ends (so that a chunk PostgreSQL refuses can be split).
#[derive(Default)]
pub struct CopyChunk {
    pub threads: Vec<u8>,
    pub messages: Vec<u8>,
    thread_ends: Vec<usize>,
    message_ends: Vec<usize>,
}

/// The columns, in the order `CopyChunk` writes them.
pub const THREAD_COLUMNS: &str = "id, user_json, created_at, stream_seq";
pub const MESSAGE_COLUMNS: &str =
    "id, thread_id, user_json, body, send_by_user, created_at, stream_seq, json";

impl CopyChunk {
    pub fn len(&self) -> usize {
        self.threads.len() + self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_thread(&mut self, t: &AppliedThread) {
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

    pub fn push_message(&mut self, m: &AppliedMessage) {
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
        match m.json() {
            Some(json) => push_field(out, &json),
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\n');
        self.message_ends.push(out.len());
    }
}

/// Appends a timestamp as the events write it (microseconds, `Z`), which PostgreSQL reads.
fn push_timestamp(out: &mut Vec<u8>, timestamp: &proto_events::Timestamp) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{timestamp}");
}

fn push_number(out: &mut Vec<u8>, value: u64) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{value}");
}

/// Appends `text` escaped for COPY's text format (backslash, tab, newline, carriage return).
fn push_field(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut plain = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..at]);
        out.extend_from_slice(escaped);
        plain = at + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
}

/// Loads COPY chunks into `<schema>.threads` and `<schema>.messages` on a task of its own, so
/// that PostgreSQL writes one chunk while the next is folded. At most two chunks wait; the
/// reader then waits for PostgreSQL. A chunk that PostgreSQL refuses is split in halves until
/// the rows it refuses are found; those are passed over (the live projector set their events
/// aside) and counted, the others loaded.
pub struct CopyWriter {
    chunks: mpsc::Sender<CopyChunk>,
    task: Option<tokio::task::JoinHandle<Result<(PgConnection, u64), ProjectorError>>>,
    pending: CopyChunk,
}

impl CopyWriter {
    pub fn start(mut conn: PgConnection, schema: &str) -> Self {
        let (chunks, mut rx) = mpsc::channel::<CopyChunk>(2);
        let threads_copy = format!("COPY {schema}.threads ({THREAD_COLUMNS}) FROM STDIN");
        let messages_copy = format!("COPY {schema}.messages ({MESSAGE_COLUMNS}) FROM STDIN");
        let task = tokio::spawn(async move {
            let mut refused = 0;
            while let Some(chunk) = rx.recv().await {
                for (statement, data, ends) in [
                    (&threads_copy, chunk.threads, chunk.thread_ends),
                    (&messages_copy, chunk.messages, chunk.message_ends),
                ] {
                    refused += copy_rows(&mut conn, statement, &data, &ends).await?;
                }
            }
            Ok((conn, refused))
        });
        Self {
            chunks,
            task: Some(task),
            pending: CopyChunk::default(),
        }
    }

    /// Adds rows; hands them to PostgreSQL whenever enough have gathered.
    pub async fn write(
        &mut self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> Result<(), ProjectorError> {
        for t in threads {
            self.pending.push_thread(t);
            if self.pending.len() >= CHUNK_BYTES {
                self.flush().await?;
            }
        }
        for m in messages {
            self.pending.push_message(m);
            if self.pending.len() >= CHUNK_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ProjectorError> {
        let chunk = std::mem::take(&mut self.pending);
        if chunk.is_empty() {
            return Ok(());
        }
        if self.chunks.send(chunk).await.is_err() {
            // The writer stopped on an error: report it.
            self.join().await?;
        }
        Ok(())
    }

    /// Writes what is left and gives the connection back, with how many rows PostgreSQL
    /// refused.
    pub async fn finish(mut self) -> Result<(PgConnection, u64), ProjectorError> {
        self.flush().await?;
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.chunks, closed));
        self.join().await
    }

    async fn join(&mut self) -> Result<(PgConnection, u64), ProjectorError> {
        let task = self
            .task
            .take()
            .ok_or_else(|| ProjectorError::Replay("the COPY writer has stopped".into()))?;
        task.await
            .map_err(|e| ProjectorError::Replay(format!("the COPY writer failed: {e}")))?
    }
}

/// COPYs the rows of `data` (each ending at its offset in `ends`) with `statement`, splitting
/// them where PostgreSQL refuses some; how many rows it refused.
async fn copy_rows(
    conn: &mut PgConnection,
    statement: &str,
    data: &[u8],
    ends: &[usize],
) -> Result<u64, ProjectorError> {
    let mut refused = 0;
    let mut split = Split::new(ends.len());
    while let Some(part) = split.next_part() {
        let start = part.start.checked_sub(1).map_or(0, |i| ends[i]);
        let rows = &data[start..ends[part.end - 1]];
        match copy_in(conn, statement, rows).await {
            Ok(()) => {}
            Err(StoreError::Refused { code, cause }) => {
                if split.refused(part) {
                    refused += 1;
                    tracing::warn!(
                        sequence = row_sequence(rows),
                        "passing over a row PostgreSQL refuses ({code}: {cause}); \
                         the live projector set its event aside"
                    );
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(refused)
}

async fn copy_in(conn: &mut PgConnection, statement: &str, rows: &[u8]) -> Result<(), StoreError> {
    let mut copy = conn.copy_in_raw(statement).await.map_err(StoreError::sql)?;
    if let Err(e) = copy.send(rows).await {
        // The server may still be waiting for the rest: end the COPY before going on.
        let _ = copy.abort("the rows could not be sent").await;
        return Err(StoreError::sql(e));
    }
    copy.finish().await.map(|_| ()).map_err(StoreError::sql)
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
    settings: &threadline_infra::DatabaseSettings,
) -> Result<PgConnection, ProjectorError> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(&settings.database_url)
        .map_err(ProjectorError::database)?
        .options([("statement_timeout", "0")]);
    PgConnection::connect_with(&options)
        .await
        .map_err(ProjectorError::database)
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
}
