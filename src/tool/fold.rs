//! `sessionlog fold DIR SESSION [--at OFFSET]`: one session's state as the
//! server would serve it (`GET /sessions/{id}`, or `?at=OFFSET`), folded from
//! the consistent prefix of the log with the server's own
//! [`Sessions::apply`](crate::fold::Sessions::apply).
//!
//! The output is the server's session object without `clients` (the number of
//! open streams is not in the log): `{"id","data","offset","createdAt","updatedAt"}`.
//! The same refusals as the server's, with the same meaning: an offset beyond
//! the end of the log (400 there), a session that did not exist yet (404) or
//! was deleted (410) at that offset.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use indicatif::ProgressBar;
use ulid::Ulid;

use super::verify::BodyDamage;
use super::{walk, ToolError, Walk};
use crate::event::rfc3339_millis;
use crate::fold::{ApplyError, SessionState, Sessions};
use crate::log::Offset;

/// What folding one session gave.
#[derive(Debug)]
pub enum FoldOutcome {
    /// The state, printed as JSON.
    State(Box<SessionState>),
    /// No event of the session at or before the offset.
    NotYetCreated,
    /// The session was deleted at this offset.
    Deleted { deleted_at: Offset },
    /// `--at` is not below the end of the consistent prefix.
    BeyondEnd { next_offset: Offset },
    /// The log is damaged inside this session's history.
    BadBody(BodyDamage),
    /// The log holds an event sequence the writer could not have produced.
    Apply(ApplyError),
}

/// The walk and what the fold gave.
#[derive(Debug)]
pub struct FoldReport {
    pub walk: Walk,
    pub outcome: FoldOutcome,
}

impl FoldReport {
    /// One line for stderr when no state was printed.
    pub fn problem(&self, id: Ulid, at: Option<Offset>) -> Option<String> {
        let at_text = at.map(|a| format!(" at offset {a}")).unwrap_or_default();
        match &self.outcome {
            FoldOutcome::State(_) => None,
            FoldOutcome::NotYetCreated => Some(match at {
                Some(a) => format!("session {id} did not exist yet at offset {a}"),
                None => format!(
                    "no session {id} in {} (offsets {}..{}); list sessions with: sessionlog stats or sessionlog dump --kind created",
                    self.walk.root.display(),
                    self.walk.first_offset,
                    self.walk.next_offset
                ),
            }),
            FoldOutcome::Deleted { deleted_at } => Some(format!(
                "session {id} was deleted at offset {deleted_at}{at_text}; see its history with: sessionlog dump {} --session {id}",
                self.walk.root.display()
            )),
            FoldOutcome::BeyondEnd { next_offset } => Some(format!(
                "--at {} is beyond the end of the log (the next offset is {next_offset})",
                at.unwrap_or_default()
            )),
            FoldOutcome::BadBody(b) => Some(format!(
                "record at offset {} in {} at byte {} has a body that does not decode: {}",
                b.offset,
                b.file.display(),
                b.position,
                b.error
            )),
            FoldOutcome::Apply(e) => Some(format!("the log cannot be folded: {e}")),
        }
    }
}

/// The server's session object (without `clients`).
pub fn state_json(s: &SessionState) -> serde_json::Value {
    serde_json::json!({
        "id": s.id.to_string(),
        "data": *s.data,
        "offset": s.offset,
        "createdAt": rfc3339_millis(s.created_at_ms),
        "updatedAt": rfc3339_millis(s.updated_at_ms),
    })
}

/// Folds session `id` up to and including offset `at` (default: the end of
/// the consistent prefix) and prints its state as one JSON line on `out`.
///
/// # Errors
/// [`ToolError`] when the directory cannot be read or `out` fails.
pub fn fold(
    root: &Path,
    id: Ulid,
    at: Option<Offset>,
    out: &mut impl Write,
    progress: &ProgressBar,
) -> Result<FoldReport, ToolError> {
    let mut sessions = Sessions::new();
    let mut failed: Option<FoldOutcome> = None;
    let upto = at.unwrap_or(Offset::MAX);
    let walk = walk(root, progress, |seg| {
        for r in &seg.scan.records[..seg.usable] {
            if r.offset > upto {
                return Ok(ControlFlow::Break(()));
            }
            if r.key != id.0 {
                continue;
            }
            let step = seg
                .event(r)
                .map_err(FoldOutcome::BadBody)
                .and_then(|e| sessions.apply(&e).map_err(FoldOutcome::Apply));
            if let Err(e) = step {
                failed = Some(e);
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    let outcome = if let Some(f) = failed {
        f
    } else if at.is_some_and(|a| a >= walk.next_offset) {
        FoldOutcome::BeyondEnd {
            next_offset: walk.next_offset,
        }
    } else {
        match sessions.get(&id) {
            None => FoldOutcome::NotYetCreated,
            Some(s) => match s.deleted {
                Some(deleted_at) => FoldOutcome::Deleted { deleted_at },
                None => {
                    serde_json::to_writer(&mut *out, &state_json(s))
                        .map_err(std::io::Error::from)?;
                    out.write_all(b"\n")?;
                    out.flush()?;
                    FoldOutcome::State(Box::new(s.clone()))
                }
            },
        }
    };
    Ok(FoldReport { walk, outcome })
}
