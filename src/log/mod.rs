//! The log: a segmented, CRC-checked append log with group commit and crash
//! recovery, behind a narrow interface.
//!
//! - **append** a batch of entries → each gets its offset or a typed rejection
//!   ([`Log::append`], [`Log::append_batch`]);
//! - **read** records from an offset ([`Log::visit`], [`Log::read`]);
//! - **watch** the durable end ([`Log::watch_durable_end`]).
//!
//! Nothing outside this module touches segment files, so another log (a
//! replicated one, say) can stand in behind the same calls.
//!
//! Life of a write: a handler calls [`Log::append`]; the command goes over a
//! bounded channel to the single writer thread ([`writer`]), which batches
//! everything waiting, checks each entry's [`Precondition`] in log order,
//! assigns offsets, writes the batch with one `write` and syncs it per
//! [`FsyncPolicy`]. Only then does it advance the durable end, call the
//! commit hook (the server applies the events to its state and publishes them)
//! and reply to the callers. A failed write or sync is never retried: the log
//! enters a failed state and refuses further appends (see [`writer`]).
//!
//! Opening ([`Log::open`]) takes the directory lock first, then runs
//! [`recovery`], then builds the [`index`] that maps offsets to positions.

pub mod index;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod writer;

#[cfg(test)]
mod tests;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::data_dir::DataDir;
pub use record::RecordKind;
pub use recovery::{Corruption, RecoveryReport, TornTail};

/// A record's place in the log: dense, from 0, never reused.
pub type Offset = u64;
/// A byte location inside a segment file.
pub type Position = u64;

/// When the writer syncs a batch before acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` every batch before acknowledging it (group commit).
    Always,
    /// Acknowledge after the write; sync at most every this often. Events
    /// become visible (state, SSE) only after that sync, so subscribers never
    /// see what a crash could take back; acknowledged writes of the last
    /// interval may be lost in a crash.
    Interval(Duration),
    /// Never sync explicitly (the kernel writes back when it likes). Events
    /// are visible as soon as they are written.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "FSYNC={s} is not valid: use always, never or interval:<ms> (for example interval:50)"
            )
        };
        match s.trim() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => {
                let ms = other.strip_prefix("interval:").ok_or_else(bad)?;
                let ms: u64 = ms.parse().map_err(|_| bad())?;
                if ms == 0 || ms > 60_000 {
                    return Err(format!(
                        "FSYNC={s} is not valid: the interval must be 1..=60000 milliseconds"
                    ));
                }
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// How to open a log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Roll to a new segment once the active one holds this many bytes.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// A condition the writer checks, in log order, before it accepts an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No condition.
    None,
    /// The key must never have been written (a create).
    Absent,
    /// The key must exist and not be deleted.
    Live,
    /// The key must be live and its last record must be at this offset (`If-Match`).
    LiveAt(Offset),
}

/// One entry of an append batch.
#[derive(Debug, Clone)]
pub struct AppendEntry {
    pub key: u128,
    pub kind: RecordKind,
    /// The record body (an encoded [`crate::event::EventBody`]); 1 byte to
    /// [`record::MAX_BODY_LEN`].
    pub body: Vec<u8>,
    pub precondition: Precondition,
}

/// Why an entry was not appended. Nothing of a rejected entry is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("no session with this key")]
    NotFound,
    #[error("the session was deleted at offset {deleted_at}")]
    Deleted { deleted_at: Offset },
    #[error("the session is at offset {current}, not {expected}")]
    Mismatch { expected: Offset, current: Offset },
    #[error("the key already exists")]
    Exists,
    #[error("record body of {len} bytes is empty or over the limit")]
    BadBody { len: usize },
    /// The disk is full; the batch was rolled back and the log still takes writes.
    #[error("the log is out of disk space")]
    DiskFull,
    /// The log cannot be written (failed write or sync, or shut down). It stays
    /// read-only until the process restarts.
    #[error("the log cannot be written: {0}")]
    Unavailable(String),
}

/// One record as read back from the log, body borrowed from a map or buffer.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: Offset,
    pub key: u128,
    pub kind: RecordKind,
    pub body: &'a [u8],
}

/// A record handed to the commit hook once its batch is durable.
pub type Committed<'a> = RecordView<'a>;

/// Called by the writer thread, in offset order, once records are durable
/// (and before their appenders are answered). The server applies them to its
/// state and publishes them here.
pub type CommitHook = Box<dyn FnMut(&[Committed<'_>]) + Send + 'static>;

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("another process holds {}: stop it or set DATA_DIR to another directory", .lock.display())]
    Locked { lock: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is not in the log (durable end {durable_end})")]
    OutOfRange { offset: Offset, durable_end: Offset },
    #[error("reading {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("record at offset {offset} in {} at byte {position} is damaged: {error}", .path.display())]
    Damaged {
        path: PathBuf,
        position: Position,
        offset: Offset,
        error: record::FrameError,
    },
}

/// Figures about the log, for `/status` and `sessionlog stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    pub first_offset: Offset,
    pub next_offset: Offset,
    pub segments: usize,
    pub bytes: u64,
}

/// A handle to an open log; cheap to clone.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

struct Inner {
    dir: DataDir,
    options: LogOptions,
    index: Arc<index::Index>,
    durable_tx: watch::Sender<Offset>,
    durable_rx: watch::Receiver<Offset>,
    writer: std::sync::Mutex<Option<writer::WriterHandle>>,
    commands: std::sync::RwLock<Option<mpsc::Sender<writer::Command>>>,
    state: std::sync::Mutex<Option<writer::WriterState>>,
    #[cfg_attr(not(any(test, feature = "fault-injection")), allow(dead_code))]
    faults: writer::Faults,
}

impl Log {
    /// Opens (creating if needed) the log under `data_dir`: takes the lock,
    /// recovers the newest segment, validates the rest and builds the index.
    /// The log is readable at once; call [`Log::start_writer`] to take writes.
    ///
    /// # Errors
    /// [`OpenError::Locked`] when another process holds the directory,
    /// [`OpenError::Corrupt`] when the segments are damaged beyond a torn tail
    /// (nothing is changed on disk then), [`OpenError::Io`] otherwise.
    pub fn open(data_dir: &Path, options: LogOptions) -> Result<(Log, RecoveryReport), OpenError> {
        let dir = DataDir::lock(data_dir)?;
        let recovered = recovery::recover(&dir)?;
        let next = recovered.next_offset;
        let index = Arc::new(recovered.index);
        let (durable_tx, durable_rx) = watch::channel(next);
        let faults = writer::Faults::default();
        let state = writer::WriterState::new(
            dir.clone(),
            options.clone(),
            index.clone(),
            recovered.keys,
            recovered.active,
            next,
            faults.clone(),
        );
        let log = Log {
            inner: Arc::new(Inner {
                dir,
                options,
                index,
                durable_tx,
                durable_rx,
                writer: std::sync::Mutex::new(None),
                commands: std::sync::RwLock::new(None),
                state: std::sync::Mutex::new(Some(state)),
                faults,
            }),
        };
        Ok((log, recovered.report))
    }

    /// Starts the writer thread; from now on appends are accepted. `hook` runs
    /// on the writer thread for every batch once it is durable.
    ///
    /// # Panics
    /// If called twice.
    pub fn start_writer(&self, hook: CommitHook) {
        let state = self
            .inner
            .state
            .lock()
            .expect("writer state lock")
            .take()
            .expect("start_writer called twice");
        let (tx, handle) = writer::spawn(state, hook, self.inner.durable_tx.clone());
        *self.inner.commands.write().expect("commands lock") = Some(tx);
        *self.inner.writer.lock().expect("writer lock") = Some(handle);
    }

    /// Appends one entry and waits until it is acknowledged per the FSYNC policy.
    ///
    /// # Errors
    /// [`AppendError`] when a precondition fails or the log cannot be written.
    pub async fn append(&self, entry: AppendEntry) -> Result<Offset, AppendError> {
        self.append_batch(vec![entry])
            .await
            .pop()
            .expect("one result per entry")
    }

    /// Appends entries in order as part of one commit; each gets its own result.
    /// Entries rejected by their precondition are skipped, the rest are written.
    pub async fn append_batch(
        &self,
        entries: Vec<AppendEntry>,
    ) -> Vec<Result<Offset, AppendError>> {
        let n = entries.len();
        let unavailable = |why: &str| {
            (0..n)
                .map(|_| Err(AppendError::Unavailable(why.into())))
                .collect()
        };
        let tx = match self.inner.commands.read().expect("commands lock").clone() {
            Some(tx) => tx,
            None => return unavailable("the log is not taking writes (not started or shut down)"),
        };
        let (reply, rx) = oneshot::channel();
        if tx
            .send(writer::Command::Append { entries, reply })
            .await
            .is_err()
        {
            return unavailable("the log writer has stopped");
        }
        rx.await
            .unwrap_or_else(|_| unavailable("the log writer has stopped"))
    }

    /// Every offset below this is durable (readable, published, acknowledged).
    pub fn durable_end(&self) -> Offset {
        *self.inner.durable_rx.borrow()
    }

    /// A receiver that changes whenever the durable end advances.
    pub fn watch_durable_end(&self) -> watch::Receiver<Offset> {
        self.inner.durable_rx.clone()
    }

    /// Visits records from `from` (inclusive) up to `to` (exclusive, clamped to
    /// the durable end) in offset order until `f` breaks.
    ///
    /// # Errors
    /// [`ReadError`] on an I/O error or a damaged record.
    pub fn visit(
        &self,
        from: Offset,
        to: Offset,
        f: impl FnMut(RecordView<'_>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        let to = to.min(self.durable_end());
        reader::visit(&self.inner.index, from, to, f)
    }

    /// Reads one record and passes it to `f`.
    ///
    /// # Errors
    /// [`ReadError::OutOfRange`] when `offset` is not below the durable end.
    pub fn read<T>(
        &self,
        offset: Offset,
        f: impl FnOnce(RecordView<'_>) -> T,
    ) -> Result<T, ReadError> {
        let durable_end = self.durable_end();
        if offset >= durable_end {
            return Err(ReadError::OutOfRange {
                offset,
                durable_end,
            });
        }
        let mut f = Some(f);
        let mut out = None;
        reader::visit(&self.inner.index, offset, offset + 1, |r| {
            out = Some((f.take().expect("visited once"))(r));
            ControlFlow::Break(())
        })?;
        out.ok_or(ReadError::OutOfRange {
            offset,
            durable_end,
        })
    }

    /// Offsets, segment count and bytes held.
    pub fn stats(&self) -> LogStats {
        let (segments, bytes) = self.inner.index.size();
        LogStats {
            first_offset: self.inner.index.first_offset(),
            next_offset: self.durable_end(),
            segments,
            bytes,
        }
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.inner.options
    }

    /// The data directory (held locked while this log is open).
    pub fn dir(&self) -> &DataDir {
        &self.inner.dir
    }

    /// Arms an I/O fault for the writer's next write or sync: the seam through
    /// which tests inject ENOSPC and failed syncs.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_fault(&self, fault: writer::Fault) {
        self.inner.faults.lock().expect("faults lock").push(fault);
    }

    /// Stops taking writes, lets the writer finish and sync what it has, and
    /// waits for it. Appends after this get [`AppendError::Unavailable`].
    pub fn shutdown(&self) {
        self.inner.commands.write().expect("commands lock").take();
        if let Some(handle) = self.inner.writer.lock().expect("writer lock").take() {
            handle.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.commands.get_mut().map(Option::take).ok();
        if let Ok(Some(handle)) = self.writer.get_mut().map(Option::take) {
            handle.join();
        }
    }
}
