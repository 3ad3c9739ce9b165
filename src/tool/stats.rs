//! `sessionlog stats DIR`: what a data directory holds: segments, records,
//! bytes, the offset range, sessions (live and deleted), records per kind, the
//! largest session and the time range. Counts cover the consistent prefix.

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use indicatif::ProgressBar;
use ulid::Ulid;

use super::verify::BodyDamage;
use super::{walk, Outcome, ToolError, Walk};
use crate::event::{rfc3339_millis, EventBody, RecordKind};

/// Per-session figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionFigures {
    pub records: u64,
    /// Bytes of its record frames.
    pub bytes: u64,
    pub deleted: bool,
}

/// The figures `stats` prints.
#[derive(Debug)]
pub struct Stats {
    pub walk: Walk,
    pub records: u64,
    /// Records per kind: created, replaced, patched, deleted.
    pub per_kind: [u64; 4],
    pub sessions: HashMap<Ulid, SessionFigures>,
    /// Earliest and latest event time (ms since the epoch).
    pub time_range: Option<(i64, i64)>,
    pub body: Option<BodyDamage>,
}

impl Stats {
    /// Live and deleted session counts.
    pub fn session_counts(&self) -> (usize, usize) {
        let deleted = self.sessions.values().filter(|s| s.deleted).count();
        (self.sessions.len() - deleted, deleted)
    }

    /// The session with the most record bytes (ties: the smaller id).
    pub fn largest(&self) -> Option<(Ulid, SessionFigures)> {
        self.sessions
            .iter()
            .max_by(|a, b| a.1.bytes.cmp(&b.1.bytes).then(b.0.cmp(a.0)))
            .map(|(id, f)| (*id, *f))
    }

    /// Damage makes the figures cover only the consistent prefix.
    pub fn outcome(&self) -> Outcome {
        if self.walk.is_clean() && self.body.is_none() {
            Outcome::Clean
        } else {
            Outcome::Damage
        }
    }
}

const KINDS: [RecordKind; 4] = [
    RecordKind::Created,
    RecordKind::Replaced,
    RecordKind::Patched,
    RecordKind::Deleted,
];

/// Gathers and prints the figures of the data directory at `root`.
///
/// # Errors
/// [`ToolError`] when the directory cannot be read or `out` fails.
pub fn stats(
    root: &Path,
    out: &mut impl Write,
    progress: &ProgressBar,
) -> Result<Stats, ToolError> {
    let mut records = 0u64;
    let mut per_kind = [0u64; 4];
    let mut sessions: HashMap<Ulid, SessionFigures> = HashMap::new();
    let mut time_range: Option<(i64, i64)> = None;
    let mut body = None;
    let walk = walk(root, progress, |seg| {
        for r in &seg.scan.records[..seg.usable] {
            records += 1;
            per_kind[r.kind as usize - 1] += 1;
            let s = sessions.entry(Ulid(r.key)).or_default();
            s.records += 1;
            s.bytes += u64::from(r.frame_len);
            s.deleted |= r.kind == RecordKind::Deleted;
            match EventBody::decode(seg.body(r)) {
                Ok(b) => {
                    time_range = Some(match time_range {
                        None => (b.at_ms, b.at_ms),
                        Some((lo, hi)) => (lo.min(b.at_ms), hi.max(b.at_ms)),
                    });
                }
                Err(error) if body.is_none() => {
                    body = Some(seg.damage(r, error));
                }
                Err(_) => {}
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    let stats = Stats {
        walk,
        records,
        per_kind,
        sessions,
        time_range,
        body,
    };
    let w = &stats.walk;
    writeln!(out, "segments: {}", w.segments.len())?;
    writeln!(out, "records: {}", stats.records)?;
    writeln!(out, "bytes: {}", w.total_bytes())?;
    writeln!(
        out,
        "offsets: {}..{} (first offset, next offset)",
        w.first_offset, w.next_offset
    )?;
    let (live, deleted) = stats.session_counts();
    writeln!(out, "sessions: {live} live, {deleted} deleted")?;
    for (k, n) in KINDS.iter().zip(stats.per_kind) {
        writeln!(out, "{}: {n}", k.as_str())?;
    }
    match stats.largest() {
        Some((id, f)) => writeln!(
            out,
            "largest session: {id} ({} records, {} bytes{})",
            f.records,
            f.bytes,
            if f.deleted { ", deleted" } else { "" }
        )?,
        None => writeln!(out, "largest session: none")?,
    }
    match stats.time_range {
        Some((lo, hi)) => writeln!(
            out,
            "time: {} .. {}",
            rfc3339_millis(lo),
            rfc3339_millis(hi)
        )?,
        None => writeln!(out, "time: no records")?,
    }
    if w.live_append {
        writeln!(
            out,
            "note: a server is appending; figures stop at its last complete commit"
        )?;
    }
    Ok(stats)
}
