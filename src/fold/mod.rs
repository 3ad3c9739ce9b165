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

/// Folds every record below the durable end into a fresh [`Sessions`].
///
/// On one thread, deliberately: a two-thread pipeline (decode on one, apply
/// on the other) was measured slower on two cores, 4.2 s of CPU and 4.3-5.1 s
/// for 1M events against 2.3-3.0 s and 2.6-3.9 s here (`benches/e2e.rs`,
/// `startup`): handing each event's freshly allocated JSON to another core
/// costs more than decoding it.
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
            .and_then(|e| sessions.apply_owned(e).map_err(FoldError::from));
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
        sessions.apply_owned(e)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBody;
    use crate::log::{AppendEntry, FsyncPolicy, LogOptions, Precondition, RecordKind};

    fn entry(key: u128, kind: RecordKind, json: &str) -> AppendEntry {
        AppendEntry {
            key,
            kind,
            body: EventBody {
                json: json.into(),
                username: "u".into(),
                at_ms: 0,
            }
            .encode(),
            precondition: Precondition::None,
        }
    }

    /// Writes `entries` (unchecked) into a fresh log and opens it again.
    async fn log_of(dir: &std::path::Path, entries: Vec<AppendEntry>) -> Log {
        let options = LogOptions {
            fsync: FsyncPolicy::Never,
            ..LogOptions::default()
        };
        {
            let (log, _) = Log::open(dir, options.clone()).unwrap();
            log.start_writer(Box::new(|_| {}));
            for r in log.append_batch(entries).await {
                r.unwrap();
            }
            log.shutdown();
        }
        Log::open(dir, options).unwrap().0
    }

    #[tokio::test]
    async fn the_fold_applies_every_event_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (1u128, 2u128);
        let mut entries = vec![
            entry(a, RecordKind::Created, r#"{"n":0}"#),
            entry(b, RecordKind::Created, r#"{"n":0}"#),
        ];
        // Alternating sessions, across several index spans.
        let n = 3 * 1024 + 7;
        for i in 1..=n {
            let key = if i % 2 == 0 { a } else { b };
            entries.push(entry(key, RecordKind::Patched, &format!(r#"{{"n":{i}}}"#)));
        }
        let log = log_of(dir.path(), entries).await;
        let sessions = fold_log(&log).unwrap();
        let (sa, sb) = (
            sessions.get(&Ulid(a)).unwrap(),
            sessions.get(&Ulid(b)).unwrap(),
        );
        assert_eq!(sa.events.len() + sb.events.len(), n + 2);
        let last = (n + 1) as u64;
        assert_eq!(sa.offset.max(sb.offset), last);
        let (even, odd) = if n % 2 == 0 { (n, n - 1) } else { (n - 1, n) };
        assert_eq!(sa.data["n"], even);
        assert_eq!(sb.data["n"], odd);
    }

    #[tokio::test]
    async fn the_first_impossible_event_is_reported_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = vec![entry(1, RecordKind::Created, "{}")];
        for _ in 0..2048 {
            entries.push(entry(1, RecordKind::Patched, "{}"));
        }
        // Offset 2049: a change of a session that was never created.
        entries.push(entry(9, RecordKind::Patched, "{}"));
        entries.push(entry(1, RecordKind::Patched, "{}"));
        let log = log_of(dir.path(), entries).await;
        match fold_log(&log) {
            Err(FoldError::Apply(ApplyError::Unknown { offset, .. })) => {
                assert_eq!(offset, 2049)
            }
            other => panic!("{:?}", other.map(|s| s.live_count())),
        }
    }
}
