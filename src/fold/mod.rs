//! The fold: replaying the log into [`Sessions`] at startup, and a session's
//! state as of an offset (time travel).
//!
//! Both go through [`Sessions::apply`], so the live server, a restart and
//! `?at=` can never disagree on what an event means.

pub mod state;

use std::ops::ControlFlow;

use ulid::Ulid;

use crate::event::{BodyError, Event};
use crate::log::{Log, Offset, ReadError};
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

/// Folds every record below the durable end into a fresh [`Sessions`].
///
/// # Errors
/// [`FoldError`] on a read error, an undecodable body, or an event sequence
/// the writer could never have produced.
pub fn fold_log(log: &Log) -> Result<Sessions, FoldError> {
    let mut sessions = Sessions::new();
    let mut failed: Option<FoldError> = None;
    let first = log.stats().first_offset;
    log.visit(first, log.durable_end(), |r| {
        let step = Event::from_record(r.offset, r.key, r.kind, r.body)
            .map_err(|error| FoldError::Body {
                offset: r.offset,
                error,
            })
            .and_then(|e| sessions.apply(&e).map_err(FoldError::from));
        match step {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(sessions),
    }
}

/// Reads the events at `offsets` (ascending) from the log.
///
/// # Errors
/// [`FoldError`] on a read error or an undecodable body.
pub fn read_events(log: &Log, offsets: &[Offset]) -> Result<Vec<Event>, FoldError> {
    offsets
        .iter()
        .map(|&offset| {
            log.read(offset, |r| {
                Event::from_record(r.offset, r.key, r.kind, r.body)
            })?
            .map_err(|error| FoldError::Body { offset, error })
        })
        .collect()
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
