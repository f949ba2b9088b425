//! Rows into the new tables at bulk speed: a writer that gathers folded rows in the store's
//! bulk form and loads them on a task of its own while the next ones are folded.

use crate::batch::{self, WritePart};
use crate::ProjectorError;
use std::ops::Range;
use threadline_ports::rebuild::{BulkLoad, BulkRows, Table};
use threadline_ports::{AppliedMessage, AppliedThread, StoreError};
use tokio::sync::mpsc;

/// Bytes of rows gathered before they are handed to the writer.
const CHUNK_BYTES: usize = 4 << 20;

/// Loads chunks of rows into the tables of `L` on a task of its own, so that the store writes
/// one chunk while the next is folded. At most two chunks wait; the reader then waits for the
/// store. A chunk that the store refuses is split in halves until the rows it refuses are
/// found (see [`batch::isolate`]); those are passed over (the live projector set their events
/// aside) and counted, the others loaded.
pub struct BulkWriter<L: BulkLoad> {
    chunks: mpsc::Sender<L::Rows>,
    task: Option<tokio::task::JoinHandle<Result<(L, u64), ProjectorError>>>,
    pending: L::Rows,
}

impl<L: BulkLoad> BulkWriter<L> {
    pub fn start(mut target: L) -> Self {
        let (chunks, mut rx) = mpsc::channel::<L::Rows>(2);
        let task = tokio::spawn(async move {
            let mut refused = 0;
            while let Some(chunk) = rx.recv().await {
                for table in Table::ALL {
                    refused += load_rows(&mut target, &chunk, table).await?;
                }
            }
            Ok((target, refused))
        });
        Self {
            chunks,
            task: Some(task),
            pending: L::Rows::default(),
        }
    }

    /// Adds rows; hands them to the store whenever enough have gathered.
    pub async fn write(
        &mut self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> Result<(), ProjectorError> {
        for t in threads {
            self.pending.push_thread(t);
            if self.pending.bytes() >= CHUNK_BYTES {
                self.flush().await?;
            }
        }
        for m in messages {
            self.pending.push_message(m);
            if self.pending.bytes() >= CHUNK_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ProjectorError> {
        let chunk = std::mem::take(&mut self.pending);
        if chunk.bytes() == 0 {
            return Ok(());
        }
        if self.chunks.send(chunk).await.is_err() {
            // The writer stopped on an error: report it.
            self.join().await?;
        }
        Ok(())
    }

    /// Writes what is left and gives the tables back, with how many rows the store refused.
    pub async fn finish(mut self) -> Result<(L, u64), ProjectorError> {
        self.flush().await?;
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.chunks, closed));
        self.join().await
    }

    async fn join(&mut self) -> Result<(L, u64), ProjectorError> {
        let task = self
            .task
            .take()
            .ok_or_else(|| ProjectorError::Replay("the COPY writer has stopped".into()))?;
        task.await
            .map_err(|e| ProjectorError::Replay(format!("the COPY writer failed: {e}")))?
    }
}

/// Loads the rows of `table` in `rows`, splitting them where the store refuses some (see
/// [`batch::isolate`]); how many rows it refused, each logged and passed over.
async fn load_rows<L: BulkLoad>(
    target: &mut L,
    rows: &L::Rows,
    table: Table,
) -> Result<u64, ProjectorError> {
    let refusals = batch::isolate(
        rows.rows(table),
        |e| matches!(e, StoreError::Refused { .. }),
        Load {
            target,
            rows,
            table,
        },
    )
    .await
    .map_err(|failed| ProjectorError::from(failed.error))?;
    for (at, refusal) in &refusals {
        if let StoreError::Refused { code, cause } = refusal {
            tracing::warn!(
                sequence = rows.sequence(table, *at),
                "passing over a row PostgreSQL refuses ({code}: {cause}); \
                 the live projector set its event aside"
            );
        }
    }
    Ok(refusals.len() as u64)
}

/// Rows of one table loaded a part at a time, each part a load of its own.
struct Load<'a, L: BulkLoad> {
    target: &'a mut L,
    rows: &'a L::Rows,
    table: Table,
}

impl<L: BulkLoad> WritePart for Load<'_, L> {
    type Error = StoreError;

    async fn write_part(&mut self, part: Range<usize>) -> Result<(), StoreError> {
        self.target.load(self.rows, self.table, part).await
    }
}
