//! The single writer: group commit, the FSYNC policy, preconditions in log
//! order, and the failed state after a write or sync error.
//!
//! One `std::thread` owns the active segment. Each turn it takes every command
//! waiting on the channel (up to [`MAX_BATCH`]), checks each entry's
//! precondition against the key states *including the entries accepted earlier
//! in the same batch*, encodes the accepted entries into one buffer (the last
//! one carries the commit-end flag), writes it with one positioned write and
//! syncs it once. Then, in this order: the index learns the new positions, the
//! durable end advances, the commit hook runs (the server applies and publishes
//! the events), and the callers get their offsets.
//!
//! Errors (the "fsyncgate" rule): a failed sync, or a failed write that cannot
//! be rolled back, is never retried: the writer enters the failed state
//! ([`WriterState::failed`]) and answers every later append with
//! [`AppendError::Unavailable`] until the process restarts and recovery reads
//! what is really on disk. One exception, chosen deliberately: a *write* that
//! fails with ENOSPC/EDQUOT is rolled back (the file is cut back to the last
//! commit and that cut is synced); if the rollback succeeds the batch is
//! rejected with [`AppendError::DiskFull`] and the log keeps taking writes, so
//! freeing disk space is enough to recover. No sync had failed, so no
//! acknowledged page can have been dropped by the kernel.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use super::index::{Index, SegmentData, SegmentEntry};
use super::record::{self, RecordHeader, HEADER_LEN, MAX_BODY_LEN};
use super::recovery::{ActiveSegment, KeyState};
use super::segment::{self, SEGMENT_HEADER_LEN};
use super::{
    AppendEntry, AppendError, CommitHook, FsyncPolicy, LogOptions, Offset, Position, Precondition,
    RecordKind, RecordView,
};
use crate::data_dir::DataDir;

/// Most commands taken into one batch.
pub const MAX_BATCH: usize = 1024;
/// Commands that may wait for the writer before appenders wait to send.
pub const QUEUE_DEPTH: usize = 8192;

pub(crate) type Reply = oneshot::Sender<Vec<Result<Offset, AppendError>>>;

pub(crate) enum Command {
    Append {
        entries: Vec<AppendEntry>,
        reply: Reply,
    },
    /// Sync now if anything is unsynced (interval policy).
    Tick,
}

/// An I/O failure the tests can make the next write or sync suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next batch write writes half its bytes, then fails with this errno.
    Write(i32),
    /// The next sync fails with this errno.
    Sync(i32),
}

/// Faults armed by tests; shared between the log handle and the writer.
pub(crate) type Faults = Arc<Mutex<Vec<Fault>>>;

pub(crate) struct WriterState {
    dir: DataDir,
    options: LogOptions,
    index: Arc<Index>,
    keys: HashMap<u128, KeyState>,
    active: ActiveSegment,
    /// The offset the next accepted entry gets.
    next: Offset,
    /// Records written but not yet synced under the interval policy, kept
    /// here until the next sync publishes them.
    unsynced: Unsynced,
    /// Set after a write or sync error that could not be rolled back; once set,
    /// it is never cleared and no further byte is written.
    failed: Option<String>,
    faults: Faults,
}

/// Frames written but not yet handed to the commit hook.
#[derive(Default)]
struct Unsynced {
    frames: Vec<u8>,
    /// (offset, key, kind, body range in `frames`).
    records: Vec<(Offset, u128, RecordKind, std::ops::Range<usize>)>,
}

pub(crate) struct WriterHandle {
    thread: JoinHandle<()>,
}

impl WriterHandle {
    pub(crate) fn join(self) {
        // A panic in the writer has already been reported by the panic hook.
        let _ = self.thread.join();
    }
}

impl WriterState {
    pub(crate) fn new(
        dir: DataDir,
        options: LogOptions,
        index: Arc<Index>,
        keys: HashMap<u128, KeyState>,
        active: ActiveSegment,
        next: Offset,
        faults: Faults,
    ) -> Self {
        WriterState {
            dir,
            options,
            index,
            keys,
            active,
            next,
            unsynced: Unsynced::default(),
            failed: None,
            faults,
        }
    }
}

pub(crate) fn spawn(
    mut state: WriterState,
    mut hook: CommitHook,
    durable: watch::Sender<Offset>,
) -> (mpsc::Sender<Command>, WriterHandle) {
    let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
    if let FsyncPolicy::Interval(every) = state.options.fsync {
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("sessiond-sync-tick".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(tx) = weak.upgrade() else { return };
                if tx.blocking_send(Command::Tick).is_err() {
                    return;
                }
            })
            .expect("spawn the sync ticker thread");
    }
    let thread = std::thread::Builder::new()
        .name("sessiond-writer".into())
        .spawn(move || {
            let mut commands = Vec::with_capacity(MAX_BATCH);
            let mut last_batch = 0;
            while rx.blocking_recv_many(&mut commands, MAX_BATCH) > 0 {
                if state.options.fsync == FsyncPolicy::Always {
                    gather(&mut rx, &mut commands, last_batch);
                }
                last_batch = commands.len();
                state.turn(&mut commands, &mut hook, &durable);
            }
            // Shut down: make whatever was written durable and visible.
            state.publish_unsynced(&mut hook, &durable);
        })
        .expect("spawn the log writer thread");
    (tx, WriterHandle { thread })
}

/// Group commit under `always`: when fewer commands arrived than the last
/// batch held, the appenders just answered are probably being scheduled to
/// send their next ones. Yield the CPU a few times to let them, so one sync
/// covers them all instead of a lone command paying for a sync of its own.
/// Costs a few microseconds when nobody else is runnable.
fn gather(rx: &mut mpsc::Receiver<Command>, commands: &mut Vec<Command>, last_batch: usize) {
    for _ in 0..4 {
        if commands.len() >= last_batch.min(MAX_BATCH) {
            return;
        }
        std::thread::yield_now();
        while commands.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => commands.push(c),
                Err(_) => break,
            }
        }
    }
}

impl WriterState {
    /// One group commit over every command taken from the channel.
    fn turn(
        &mut self,
        commands: &mut Vec<Command>,
        hook: &mut CommitHook,
        durable: &watch::Sender<Offset>,
    ) {
        let mut batch = Vec::with_capacity(commands.len());
        let mut tick = false;
        for c in commands.drain(..) {
            match c {
                Command::Append { entries, reply } => batch.push((entries, reply)),
                Command::Tick => tick = true,
            }
        }
        if !batch.is_empty() {
            self.commit(batch, hook, durable);
        }
        if tick {
            self.publish_unsynced(hook, durable);
        }
    }

    fn commit(
        &mut self,
        batch: Vec<(Vec<AppendEntry>, Reply)>,
        hook: &mut CommitHook,
        durable: &watch::Sender<Offset>,
    ) {
        let mut results: Vec<Vec<Result<Offset, AppendError>>> = batch
            .iter()
            .map(|(entries, _)| Vec::with_capacity(entries.len()))
            .collect();
        if let Some(why) = &self.failed {
            for (r, (entries, _)) in results.iter_mut().zip(&batch) {
                r.extend(
                    entries
                        .iter()
                        .map(|_| Err(AppendError::Unavailable(why.clone()))),
                );
            }
            return reply_all(batch, results);
        }

        // Preconditions in log order; `overlay` holds this batch's effects.
        let mut overlay: HashMap<u128, KeyState> = HashMap::new();
        let mut accepted: Vec<(usize, usize)> = Vec::new();
        let mut bytes = 0u64;
        for (c, (entries, _)) in batch.iter().enumerate() {
            for (e, entry) in entries.iter().enumerate() {
                let current = overlay
                    .get(&entry.key)
                    .or_else(|| self.keys.get(&entry.key));
                let verdict = check(entry, current);
                let result = verdict.map(|()| {
                    let offset = self.next + accepted.len() as u64;
                    overlay.insert(
                        entry.key,
                        KeyState {
                            last: offset,
                            deleted: entry.kind == RecordKind::Deleted,
                        },
                    );
                    accepted.push((c, e));
                    bytes += (HEADER_LEN + entry.body.len()) as u64;
                    offset
                });
                results[c].push(result);
            }
        }
        if accepted.is_empty() {
            return reply_all(batch, results);
        }

        if let Err(error) = self.write_batch(&batch, &accepted, bytes, hook, durable) {
            for &(c, e) in &accepted {
                results[c][e] = Err(error.clone());
            }
            return reply_all(batch, results);
        }
        for (key, state) in overlay {
            self.keys.insert(key, state);
        }
        let first = self.next;
        self.next += accepted.len() as u64;

        match self.options.fsync {
            FsyncPolicy::Interval(_) => {
                // Acknowledged now; visible at the next tick's sync.
                self.stash_unsynced(&batch, &accepted, first);
                reply_all(batch, results);
            }
            FsyncPolicy::Always | FsyncPolicy::Never => {
                let views: Vec<RecordView<'_>> = accepted
                    .iter()
                    .enumerate()
                    .map(|(n, &(c, e))| {
                        let entry = &batch[c].0[e];
                        RecordView {
                            offset: first + n as u64,
                            key: entry.key,
                            kind: entry.kind,
                            body: &entry.body,
                        }
                    })
                    .collect();
                durable.send_replace(self.next);
                hook(&views);
                drop(views);
                reply_all(batch, results);
            }
        }
    }

    /// Writes (and under `always`, syncs) the accepted entries as one commit,
    /// rolling the segment first if it is full.
    fn write_batch(
        &mut self,
        batch: &[(Vec<AppendEntry>, Reply)],
        accepted: &[(usize, usize)],
        bytes: u64,
        hook: &mut CommitHook,
        durable: &watch::Sender<Offset>,
    ) -> Result<(), AppendError> {
        if self.active.len > SEGMENT_HEADER_LEN as u64
            && self.active.len + bytes > self.options.segment_bytes
        {
            self.roll(hook, durable)?;
        }
        let mut buf = Vec::with_capacity(bytes as usize);
        let mut positions: Vec<Position> = Vec::with_capacity(accepted.len());
        let last = accepted.len() - 1;
        for (n, &(c, e)) in accepted.iter().enumerate() {
            let entry = &batch[c].0[e];
            positions.push(self.active.len + buf.len() as u64);
            record::encode_into(
                &mut buf,
                &RecordHeader {
                    body_len: entry.body.len() as u32,
                    offset: self.next + n as u64,
                    commit: self.next,
                    key: entry.key,
                    kind: entry.kind,
                    commit_end: n == last,
                },
                &entry.body,
            );
        }
        if let Err(e) = self.write_at(&buf, self.active.len) {
            return Err(self.roll_back_write(e));
        }
        if self.options.fsync == FsyncPolicy::Always {
            if let Err(e) = self.sync() {
                return Err(self.fail(format!(
                    "sync of {} failed: {e}",
                    self.active.path.display()
                )));
            }
        }
        let new_len = self.active.len + buf.len() as u64;
        self.index.append(&positions, new_len);
        self.active.len = new_len;
        Ok(())
    }

    fn write_at(&self, buf: &[u8], at: u64) -> std::io::Result<()> {
        let fault = self.take_fault(|f| matches!(f, Fault::Write(_)));
        if let Some(Fault::Write(errno)) = fault {
            let half = &buf[..buf.len() / 2];
            self.active.file.write_all_at(half, at)?;
            return Err(std::io::Error::from_raw_os_error(errno));
        }
        self.active.file.write_all_at(buf, at)
    }

    fn sync(&self) -> std::io::Result<()> {
        if let Some(Fault::Sync(errno)) = self.take_fault(|f| matches!(f, Fault::Sync(_))) {
            return Err(std::io::Error::from_raw_os_error(errno));
        }
        self.active.file.sync_data()
    }

    fn take_fault(&self, which: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut faults = self.faults.lock().expect("faults lock");
        let i = faults.iter().position(which)?;
        Some(faults.remove(i))
    }

    /// After a failed write: cut the file back to the last commit. Disk full
    /// with a clean rollback keeps the log writable; anything else fails it.
    fn roll_back_write(&mut self, error: std::io::Error) -> AppendError {
        let path = self.active.path.display().to_string();
        let disk_full = matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        let rolled_back = self
            .active
            .file
            .set_len(self.active.len)
            .and_then(|()| self.active.file.sync_data());
        match rolled_back {
            Ok(()) if disk_full => {
                tracing::warn!(segment = %path, "append rejected: disk full; the batch was rolled back and the log still takes writes");
                AppendError::DiskFull
            }
            Ok(()) => self.fail(format!("write to {path} failed: {error}")),
            Err(e) => self.fail(format!(
                "write to {path} failed: {error}; cutting the partial batch off failed too: {e}"
            )),
        }
    }

    /// Enters the failed state for good.
    fn fail(&mut self, why: String) -> AppendError {
        tracing::error!(reason = %why, "the log stops taking writes until sessiond is restarted");
        self.failed = Some(why.clone());
        AppendError::Unavailable(why)
    }

    /// Seals the active segment and starts the next one at `self.next`.
    fn roll(
        &mut self,
        hook: &mut CommitHook,
        durable: &watch::Sender<Offset>,
    ) -> Result<(), AppendError> {
        // A sealed segment must be wholly durable: recovery treats any damage
        // in one as corruption.
        self.publish_unsynced(hook, durable);
        if let Some(why) = &self.failed {
            return Err(AppendError::Unavailable(why.clone()));
        }
        let log_dir = self.dir.log_dir();
        let file = match segment::create(&log_dir, self.next) {
            Ok(file) => file,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                tracing::warn!(offset = self.next, "cannot start a new segment: disk full");
                return Err(AppendError::DiskFull);
            }
            Err(e) => {
                return Err(self.fail(format!(
                    "creating segment {} in {} failed: {e}",
                    segment::file_name(self.next),
                    log_dir.display()
                )))
            }
        };
        let map = match segment::map_sealed(&self.active.file) {
            Ok(map) => map,
            Err(e) => {
                return Err(self.fail(format!(
                    "mapping {} failed: {e}",
                    self.active.path.display()
                )))
            }
        };
        let path = log_dir.join(segment::file_name(self.next));
        let file = Arc::new(file);
        self.index.roll(
            map,
            SegmentEntry {
                base: self.next,
                path: path.clone(),
                positions: Vec::new(),
                len: SEGMENT_HEADER_LEN as u64,
                data: SegmentData::Active(file.clone()),
            },
        );
        tracing::debug!(segment = %path.display(), "rolled to a new segment");
        self.active = ActiveSegment {
            path,
            file,
            len: SEGMENT_HEADER_LEN as u64,
        };
        Ok(())
    }

    fn stash_unsynced(
        &mut self,
        batch: &[(Vec<AppendEntry>, Reply)],
        accepted: &[(usize, usize)],
        first: Offset,
    ) {
        for (n, &(c, e)) in accepted.iter().enumerate() {
            let entry = &batch[c].0[e];
            let start = self.unsynced.frames.len();
            self.unsynced.frames.extend_from_slice(&entry.body);
            self.unsynced.records.push((
                first + n as u64,
                entry.key,
                entry.kind,
                start..self.unsynced.frames.len(),
            ));
        }
    }

    /// Syncs and publishes what the interval (or never) policy left unsynced;
    /// with `never`, only syncs (its records were published at write time).
    fn publish_unsynced(&mut self, hook: &mut CommitHook, durable: &watch::Sender<Offset>) {
        if self.failed.is_some() {
            return;
        }
        if self.options.fsync == FsyncPolicy::Never {
            if let Err(e) = self.sync() {
                self.fail(format!(
                    "sync of {} failed: {e}",
                    self.active.path.display()
                ));
            }
            return;
        }
        if self.unsynced.records.is_empty() {
            return;
        }
        if let Err(e) = self.sync() {
            self.fail(format!(
                "sync of {} failed: {e}",
                self.active.path.display()
            ));
            return;
        }
        let unsynced = std::mem::take(&mut self.unsynced);
        let views: Vec<RecordView<'_>> = unsynced
            .records
            .iter()
            .map(|(offset, key, kind, range)| RecordView {
                offset: *offset,
                key: *key,
                kind: *kind,
                body: &unsynced.frames[range.clone()],
            })
            .collect();
        durable.send_replace(self.next);
        hook(&views);
    }
}

/// Checks one entry against its key's state (after earlier entries of the batch).
fn check(entry: &AppendEntry, current: Option<&KeyState>) -> Result<(), AppendError> {
    if entry.body.is_empty() || entry.body.len() > MAX_BODY_LEN as usize {
        return Err(AppendError::BadBody {
            len: entry.body.len(),
        });
    }
    match (entry.precondition, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => Err(AppendError::Exists),
        (Precondition::Live | Precondition::LiveAt(_), None) => Err(AppendError::NotFound),
        (Precondition::Live | Precondition::LiveAt(_), Some(s)) if s.deleted => {
            Err(AppendError::Deleted { deleted_at: s.last })
        }
        (Precondition::Live, Some(_)) => Ok(()),
        (Precondition::LiveAt(expected), Some(s)) if s.last == expected => Ok(()),
        (Precondition::LiveAt(expected), Some(s)) => Err(AppendError::Mismatch {
            expected,
            current: s.last,
        }),
    }
}

fn reply_all(
    batch: Vec<(Vec<AppendEntry>, Reply)>,
    results: Vec<Vec<Result<Offset, AppendError>>>,
) {
    for ((_, reply), result) in batch.into_iter().zip(results) {
        // The caller may have gone away (request dropped); its write stands.
        let _ = reply.send(result);
    }
}
