//! `sessionlog dump DIR`: one record per line, in offset order, human-readable
//! or as JSON lines (`--json`), filtered by session, offset range and kind.
//!
//! Only the consistent prefix is dumped: the records the server would serve
//! after its recovery. Damage ends the dump and is reported by the caller.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use indicatif::ProgressBar;
use ulid::Ulid;

use super::verify::BodyDamage;
use super::{file_name, walk, Outcome, ToolError, Walk};
use crate::event::RecordKind;
use crate::log::Offset;

/// Which records to print, and how.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// JSON lines instead of the human format.
    pub json: bool,
    pub session: Option<Ulid>,
    /// First offset to print (inclusive).
    pub from: Option<Offset>,
    /// Last offset to print (inclusive).
    pub to: Option<Offset>,
    pub kind: Option<RecordKind>,
}

/// What `dump` found besides the records it printed.
#[derive(Debug)]
pub struct DumpReport {
    pub walk: Walk,
    pub body: Option<BodyDamage>,
    pub printed: u64,
}

impl DumpReport {
    /// Damage (of the log or of a body) makes the dump incomplete.
    pub fn outcome(&self) -> Outcome {
        if self.walk.is_clean() && self.body.is_none() {
            Outcome::Clean
        } else {
            Outcome::Damage
        }
    }
}

/// Prints the records of the data directory at `root` that match `opts`.
///
/// # Errors
/// [`ToolError`] when the directory cannot be read or `out` fails (a closed
/// pipe shows up as [`ToolError::Output`] with `BrokenPipe`).
pub fn dump(
    root: &Path,
    opts: &DumpOptions,
    out: &mut impl Write,
    progress: &ProgressBar,
) -> Result<DumpReport, ToolError> {
    let mut body = None;
    let mut printed = 0u64;
    let from = opts.from.unwrap_or(0);
    let to = opts.to.unwrap_or(Offset::MAX);
    let walk = walk(root, progress, |seg| {
        let segment = file_name(seg.path);
        for r in &seg.scan.records[..seg.usable] {
            if r.offset > to {
                return Ok(ControlFlow::Break(()));
            }
            if r.offset < from
                || opts.session.is_some_and(|s| s.0 != r.key)
                || opts.kind.is_some_and(|k| k != r.kind)
            {
                continue;
            }
            let event = match seg.event(r) {
                Ok(e) => e,
                Err(damage) => {
                    body = Some(damage);
                    return Ok(ControlFlow::Break(()));
                }
            };
            if opts.json {
                let mut obj = event.to_json();
                let map = obj.as_object_mut().expect("an event is a JSON object");
                map.insert("segment".into(), segment.clone().into());
                map.insert("position".into(), r.position.into());
                serde_json::to_writer(&mut *out, &obj).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
            } else {
                let payload = event
                    .json
                    .as_ref()
                    .map(|j| j.to_string())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:>8} {}:{} {} {:<8} {} {:?} {}",
                    event.offset,
                    segment,
                    r.position,
                    event.at_rfc3339(),
                    event.kind.as_str(),
                    event.session,
                    event.username,
                    payload
                )?;
            }
            printed += 1;
        }
        Ok(ControlFlow::Continue(()))
    })?;
    out.flush()?;
    Ok(DumpReport {
        walk,
        body,
        printed,
    })
}
