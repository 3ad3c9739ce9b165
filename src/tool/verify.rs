//! `sessionlog verify DIR`: every segment checked with the server's own rules
//! (framing, CRC, offsets contiguous across segments, commit boundaries,
//! names vs contents), and every record body decoded and folded with
//! [`Sessions::apply`], as the server does before it listens.
//!
//! The verdict is the server's: a torn tail (what recovery would truncate) and
//! corruption (what recovery refuses) are both damage (exit 1), told apart in
//! the report with file, byte position and offset.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use super::{file_name, walk, Finding, Outcome, ToolError, Walk};
use crate::event::BodyError;
use crate::fold::{ApplyError, Sessions};
use crate::log::{Offset, Position};

/// A record whose frame is intact but whose body does not decode: the
/// server's fold would stop there.
#[derive(Debug)]
pub struct BodyDamage {
    pub file: PathBuf,
    pub position: Position,
    pub offset: Offset,
    pub error: BodyError,
}

/// What `verify` found.
#[derive(Debug)]
pub struct VerifyReport {
    pub walk: Walk,
    pub body: Option<BodyDamage>,
    /// An event the fold refuses (the server would not start).
    pub fold: Option<ApplyError>,
    pub records: u64,
}

impl VerifyReport {
    /// Clean only when the server would start without changing anything.
    pub fn outcome(&self) -> Outcome {
        if self.walk.is_clean() && self.body.is_none() && self.fold.is_none() {
            Outcome::Clean
        } else {
            Outcome::Damage
        }
    }

    /// One line naming the first problem, for stderr; `None` when clean.
    pub fn problem(&self) -> Option<String> {
        let dir = self.walk.root.display();
        if let Some(p) = self.walk.first_problem() {
            let fix = match p {
                Finding::TornTail(_) => format!(
                    "start the server to truncate it, or run: sessionlog repair {dir}"
                ),
                Finding::Corrupt(_) => format!(
                    "nothing was changed; to drop everything from the damage on, run: sessionlog repair {dir}"
                ),
            };
            return Some(format!("{p}. {fix}"));
        }
        if let Some(b) = &self.body {
            return Some(format!(
                "record at offset {} in {} at byte {} has an intact frame but its body does not decode ({}); the server cannot fold it",
                b.offset,
                b.file.display(),
                b.position,
                b.error
            ));
        }
        self.fold
            .as_ref()
            .map(|e| format!("the server cannot fold the log: {e}"))
    }
}

/// Verifies the data directory at `root`, writing a per-segment report to `out`.
///
/// # Errors
/// [`ToolError`] when the directory cannot be read or the report cannot be written.
pub fn verify(
    root: &Path,
    out: &mut impl Write,
    progress: &ProgressBar,
) -> Result<VerifyReport, ToolError> {
    let mut body = None;
    let mut fold = None;
    let mut sessions = Sessions::new();
    let mut records = 0u64;
    let walk = walk(root, progress, |seg| {
        for r in &seg.scan.records[..seg.usable] {
            records += 1;
            if body.is_some() || fold.is_some() {
                continue;
            }
            match seg.event(r) {
                Ok(event) => fold = sessions.apply(&event).err(),
                Err(damage) => body = Some(damage),
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    for p in &walk.misnamed {
        writeln!(
            out,
            "{}: misnamed: a segment name must be 20 digits + .seg (its base offset)",
            file_name(p)
        )?;
    }
    let stop = walk.cut.as_ref().map(|c| c.segment());
    for (i, s) in walk.segments.iter().enumerate() {
        let role = if s.newest { "newest" } else { "sealed" };
        let range = if s.records == 0 {
            "no records".to_string()
        } else {
            format!(
                "offsets {}..={} ({} records)",
                s.base,
                s.base + s.records as u64 - 1,
                s.records
            )
        };
        let state = match stop {
            Some(k) if i == k => "DAMAGED",
            Some(k) if i > k => "after the damage",
            _ => "ok",
        };
        writeln!(
            out,
            "{}: {role}, {range}, {} bytes: {state}",
            file_name(&s.path),
            s.bytes
        )?;
    }
    let report = VerifyReport {
        walk,
        body,
        fold,
        records,
    };
    let w = &report.walk;
    match report.problem() {
        None => {
            let live = if w.live_append {
                " (a server is appending: checked up to its last complete commit)"
            } else {
                ""
            };
            writeln!(
                out,
                "clean: {} segments, {} records, offsets {}..{}, {} bytes{live}",
                w.segments.len(),
                report.records,
                w.first_offset,
                w.next_offset,
                w.total_bytes()
            )?;
        }
        Some(problem) => {
            writeln!(out, "damaged: {problem}")?;
            if w.finding.is_some() {
                writeln!(
                    out,
                    "consistent prefix: offsets {}..{}; a repair drops offsets {} and later ({} intact records)",
                    w.first_offset,
                    w.next_offset,
                    w.next_offset,
                    w.records_beyond()
                )?;
            }
        }
    }
    Ok(report)
}
