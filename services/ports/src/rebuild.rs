//! What `rebuild` and `verify` ask of the store they fold a fresh read model into: tables
//! beside the serving ones, loaded in bulk ([`BulkLoad`]), then written as the live projector
//! writes ([`WriteRows`]) and put in place of the serving ones ([`RebuildTarget`]), or
//! compared with them ([`VerifyTarget`]). The projector folds the stream and orders the steps;
//! the adapter (threadline-postgres) knows the SQL.
//!
//! The methods are generic rather than `dyn`: the bulk load's rows are gathered in the
//! adapter's own form ([`BulkRows`]) without a call through a pointer per row.

use crate::{AppliedMessage, AppliedThread, StoreError};
use serde::Serialize;
use std::future::Future;
use std::ops::Range;
use std::time::Duration;
use uuid::Uuid;

/// A table of the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Threads,
    Messages,
}

impl Table {
    /// Every table, in the order a bulk load fills them.
    pub const ALL: [Table; 2] = [Table::Threads, Table::Messages];
}

/// Folded rows gathered in the form the store loads in bulk (PostgreSQL: `COPY` text), each
/// table's in the order pushed.
pub trait BulkRows: Default + Send + Sync + 'static {
    fn push_thread(&mut self, thread: &AppliedThread);
    fn push_message(&mut self, message: &AppliedMessage);
    /// Bytes gathered, of every table.
    fn bytes(&self) -> usize;
    /// Rows gathered for `table`.
    fn rows(&self, table: Table) -> usize;
    /// The stream sequence of row `at` of `table`, to name a row the store refused.
    fn sequence(&self, table: Table, at: usize) -> Option<u64>;
}

/// Empty tables without indexes, made when the adapter opens them, loaded in bulk.
pub trait BulkLoad: Send + 'static {
    type Rows: BulkRows;

    /// Loads rows `part` of `table` from `rows`, all of them or none;
    /// [`StoreError::Refused`] if the store refuses the data of one of them.
    fn load(
        &mut self,
        rows: &Self::Rows,
        table: Table,
        part: Range<usize>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Rows written as the live projector writes them: for each id, the row from the lowest
/// stream sequence wins.
pub trait WriteRows: Send {
    /// Writes the rows in a transaction of their own (a savepoint within a switch-over's):
    /// all of them or none; [`StoreError::Refused`] if the store refuses the data of one.
    fn write(
        &mut self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes every row of these threads, erased meanwhile, in a transaction of its own (a
    /// savepoint within a switch-over's), as the live projector does when it folds their
    /// `ThreadErased`.
    fn erase(&mut self, threads: &[Uuid]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A new read model built beside the serving one, then put in its place in one transaction.
/// Until that commits the serving read model is untouched.
pub trait RebuildTarget: BulkLoad + WriteRows {
    /// A try at the switch-over, under way.
    type Switch<'a>: SwitchOver
    where
        Self: 'a;

    /// Ends the bulk load: gives the new tables the serving ones' keys and indexes. From
    /// here on [`WriteRows::write`] writes the new tables.
    fn build_indexes(&mut self) -> impl Future<Output = Result<(), RebuildError>> + Send;

    /// Begins a try at the switch-over, in one transaction in which each lock waits at most
    /// `wait`: takes the switch lock, so that no transaction of the live projector is in
    /// flight and the next ones wait for the switch-over. Rows written to the try go into the
    /// new tables with it, or are rolled back with it.
    fn begin_switch(
        &mut self,
        wait: Duration,
    ) -> impl Future<Output = Result<Result<Self::Switch<'_>, GaveWay>, RebuildError>> + Send;

    /// Lets the read model go for the next rebuild, and closes.
    fn close(self) -> impl Future<Output = Result<(), RebuildError>> + Send;
}

/// A try at the switch-over (see [`RebuildTarget::begin_switch`]). Dropped, it rolls back.
pub trait SwitchOver: WriteRows {
    /// Locks the serving tables, gives the new ones their owner and rights, moves the serving
    /// ones out of the way (kept in a schema of their own with `keep_old`, dropped otherwise)
    /// and the new ones into their place, and commits.
    fn complete(
        self,
        keep_old: bool,
    ) -> impl Future<Output = Result<Result<(), GaveWay>, RebuildError>> + Send;
}

/// A try at the switch-over gave way: a lock was not granted within its wait, held by what
/// this says. The try has rolled back, every lock it held or asked for is released, and the
/// rows written to it are not in the new tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaveWay(pub &'static str);

/// A fresh fold of the stream beside the serving read model, to compare with it.
pub trait VerifyTarget: BulkLoad {
    /// The rows that the serving read model has wrong, leaving out serving rows from events
    /// after `through`.
    fn differences(
        &mut self,
        through: u64,
    ) -> impl Future<Output = Result<Vec<Difference>, StoreError>> + Send;
}

/// A row that the serving read model has wrong.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    /// `thread` or `message`.
    pub kind: String,
    pub id: Uuid,
    /// `missing` (the stream has it, the read model not), `extra` (the other way round) or
    /// `different`.
    pub problem: String,
    /// The columns that differ, for `different`.
    pub fields: Vec<String>,
}

/// Why a rebuild's store could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another rebuild holds the read model.
    #[error("another rebuild is running against this database")]
    Busy,
    /// The serving tables are not as a rebuild can copy them (an index it cannot move, rights
    /// it cannot read).
    #[error("{0}")]
    Tables(String),
}
