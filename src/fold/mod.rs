//! The fold: replaying the log into [`Sessions`] at startup, and a session's
//! state as of an offset (time travel).
//!
//! Both go through [`Sessions::apply`], so the live server, a restart and
//! `?at=` can never disagree on what an event means.

pub mod state;

use std::ops::ControlFlow;

use ulid::Ulid;

use crate::event::{BodyError, Event};
use crate::log::{Log, Offset, ReadError, RecordView};
pub use state::{ApplyError, SessionState, Sessions};

/// Why the log could not be folded.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("reading the log: {0}")]
    Read(#[from] ReadError),
    #[error("record at offset {offset} has a body that does not decode: {error}")]
    Body { offset: Offset, error: BodyError },
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// Events decoded per batch handed from the fold's reader to its applier.
const FOLD_BATCH: usize = 1024;
/// Batches in flight between them: bounds the fold's extra memory.
const FOLD_QUEUE: usize = 4;

/// Folds every record below the durable end into a fresh [`Sessions`].
///
/// Two threads: one reads records and decodes them into events (CRC, bincode,
/// JSON parse), the other applies them in offset order. Decoding is about
/// half of the work, so on a machine with two cores a fold takes about half
/// as long as on one thread; a single thread would be simpler, but the fold
/// stands between a restart and the first request.
///
/// # Errors
/// [`FoldError`] on a read error, an undecodable body, or an event sequence
/// the writer could never have produced: the first of them in offset order.
pub fn fold_log(log: &Log) -> Result<Sessions, FoldError> {
    let first = log.stats().first_offset;
    let end = log.durable_end();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Event>>(FOLD_QUEUE);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<(), FoldError> {
            let mut batch = Vec::with_capacity(FOLD_BATCH);
            let mut failed = None;
            log.visit(first, end, |r| {
                match Event::from_record(r.offset, r.key, r.kind, r.body) {
                    Ok(e) => batch.push(e),
                    Err(error) => {
                        failed = Some(FoldError::Body {
                            offset: r.offset,
                            error,
                        });
                        return ControlFlow::Break(());
                    }
                }
                if batch.len() == FOLD_BATCH
                    && tx
                        .send(std::mem::replace(
                            &mut batch,
                            Vec::with_capacity(FOLD_BATCH),
                        ))
                        .is_err()
                {
                    // The applier stopped at an error of its own.
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })?;
            if !batch.is_empty() {
                let _applier_may_have_stopped = tx.send(batch);
            }
            failed.map_or(Ok(()), Err)
        });
        let mut sessions = Sessions::new();
        let mut applied = Ok(());
        'batches: for batch in rx.iter() {
            for e in &batch {
                if let Err(e) = sessions.apply(e) {
                    applied = Err(FoldError::from(e));
                    break 'batches;
                }
            }
        }
        // Dropping the receiver stops a reader that is still sending.
        drop(rx);
        let read = reader.join().expect("the fold's reader thread panicked");
        // Every event before a read error was applied, so an apply error
        // comes first in offset order.
        applied?;
        read?;
        Ok(sessions)
    })
}

/// Reads the events at `offsets` (ascending) from the log.
///
/// # Errors
/// [`FoldError`] on a read error or an undecodable body.
pub fn read_events(log: &Log, offsets: &[Offset]) -> Result<Vec<Event>, FoldError> {
    read_with(log, offsets, |r| {
        Event::from_record(r.offset, r.key, r.kind, r.body)
    })
}

/// A run of wanted offsets is read with one sequential visit when it spans at
/// most this many records per wanted one; otherwise record by record.
const DENSE_SPAN: u64 = 8;

/// Reads the records at `offsets` (ascending) and maps each with `f`.
///
/// A session's events are often close together (one busy session, or a
/// catch-up of a session that had the log to itself): then one visit over
/// the span reads them, with one positioned read per MiB of the active
/// segment and one index lookup per 4096 records, instead of one of each per
/// record. Scattered offsets are read one by one, so a sparse session never
/// pays for decoding the records of the others.
///
/// # Errors
/// [`FoldError`] on a read error or when `f` fails.
pub fn read_with<T>(
    log: &Log,
    offsets: &[Offset],
    mut f: impl FnMut(RecordView<'_>) -> Result<T, BodyError>,
) -> Result<Vec<T>, FoldError> {
    let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
        return Ok(Vec::new());
    };
    if last - first >= DENSE_SPAN.saturating_mul(offsets.len() as u64) {
        return offsets
            .iter()
            .map(|&offset| {
                log.read(offset, &mut f)?
                    .map_err(|error| FoldError::Body { offset, error })
            })
            .collect();
    }
    let mut out = Vec::with_capacity(offsets.len());
    let mut wanted = offsets.iter().copied().peekable();
    let mut failed = None;
    log.visit(first, last + 1, |r| {
        if wanted.peek() == Some(&r.offset) {
            wanted.next();
            match f(r) {
                Ok(t) => out.push(t),
                Err(error) => {
                    failed = Some(FoldError::Body {
                        offset: r.offset,
                        error,
                    });
                    return ControlFlow::Break(());
                }
            }
        }
        if wanted.peek().is_some() {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    match wanted.next() {
        // The visit stops at the durable end: an offset beyond it was not read.
        Some(offset) => Err(FoldError::Read(ReadError::OutOfRange {
            offset,
            durable_end: log.durable_end(),
        })),
        None => Ok(out),
    }
}

/// What a session looked like right after the event at `at` (or the last of
/// its events before `at`).
#[derive(Debug, Clone, PartialEq)]
pub enum StateAt {
    /// The session did not exist yet at that offset.
    NotYetCreated,
    /// The session was already deleted at that offset.
    Deleted { deleted_at: Offset },
    /// The session's state then.
    Live(SessionState),
}

/// Folds the session `id` (whose event offsets are `events`) up to and
/// including offset `at`, reading its events from the log.
///
/// # Errors
/// [`FoldError`] on a read error or an undecodable body.
pub fn state_at(log: &Log, id: Ulid, events: &[Offset], at: Offset) -> Result<StateAt, FoldError> {
    let upto = events.partition_point(|&o| o <= at);
    if upto == 0 {
        return Ok(StateAt::NotYetCreated);
    }
    let mut sessions = Sessions::new();
    for e in read_events(log, &events[..upto])? {
        sessions.apply(&e)?;
    }
    let state = sessions
        .get(&id)
        .cloned()
        .expect("the first event of a session creates it");
    Ok(match state.deleted {
        Some(deleted_at) => StateAt::Deleted { deleted_at },
        None => StateAt::Live(state),
    })
}
