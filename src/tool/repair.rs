//! `sessionlog repair DIR`: cut the log at its first damage, deliberately.
//!
//! The one place besides recovery that shortens a segment. It takes the
//! directory lock first (so it refuses while a server runs), finds the first
//! damage with the same [`walk`] as `verify`, shows exactly what will be
//! dropped, and acts only after confirmation. Nothing is thrown away: the cut
//! tail bytes and every dropped or misnamed segment are moved into
//! `DATA_DIR/repair-<unix time>/`, so an operator can still inspect them.
//!
//! What a repair does at the damage ([`Cut`]):
//! - damage inside a segment: truncate it at the end of its last complete
//!   commit (the records before the damage stay, as recovery would keep them);
//! - a damaged segment header: keep the file as an empty segment with a fresh
//!   header (the base offset in its name stays, so offsets are never reused);
//! - a segment that does not continue the log (a gap): move it aside;
//! - every later segment and every misnamed `*.seg` file: move aside.
//!
//! Later segments go first, newest first, and the cut comes last, so a repair
//! interrupted half-way leaves a directory that `repair` handles again.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use super::{file_name, log_dir_of, walk, Cut, Outcome, ToolError, Walk};
use crate::data_dir::DataDir;
use crate::log::segment;
use crate::log::OpenError;

/// What `repair` did.
#[derive(Debug)]
pub struct RepairReport {
    /// The directory as found, under the lock.
    pub before: Walk,
    /// The directory after the repair (`None` when nothing was changed).
    pub after: Option<Walk>,
    /// Where the dropped bytes were moved.
    pub saved_to: Option<PathBuf>,
    pub declined: bool,
}

impl RepairReport {
    /// Clean when there was nothing to do or the repaired log is clean.
    pub fn outcome(&self) -> Outcome {
        match &self.after {
            Some(after) if after.is_clean() => Outcome::Clean,
            None if self.before.is_clean() => Outcome::Clean,
            _ => Outcome::Damage,
        }
    }
}

/// One step of a repair.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    MoveAside(PathBuf),
    Truncate { path: PathBuf, position: u64 },
    RewriteHeader { path: PathBuf, base: u64 },
}

/// Repairs the data directory at `root`: lock, find the first damage, show the
/// plan on `out`, ask `confirm` (skipped when `yes`), then cut.
///
/// # Errors
/// [`ToolError::Locked`] while a server holds the directory; other
/// [`ToolError`]s when the directory cannot be read or changed.
pub fn repair(
    root: &Path,
    yes: bool,
    out: &mut impl Write,
    progress: &ProgressBar,
    confirm: impl FnOnce() -> io::Result<bool>,
) -> Result<RepairReport, ToolError> {
    // Check first: taking the lock would create a missing directory.
    log_dir_of(root)?;
    let _lock = DataDir::lock(root).map_err(|e| match e {
        OpenError::Locked { lock } => ToolError::Locked { lock },
        OpenError::Io { path, source } => ToolError::Io { path, source },
        OpenError::Corrupt(c) => unreachable!("taking the lock reads no segment: {c}"),
    })?;
    let before = walk(root, progress, |_| Ok(ControlFlow::Continue(())))?;
    let mut report = RepairReport {
        before,
        after: None,
        saved_to: None,
        declined: false,
    };
    let before = &report.before;
    if before.is_clean() {
        writeln!(
            out,
            "nothing to repair: {} segments, offsets {}..{}",
            before.segments.len(),
            before.first_offset,
            before.next_offset
        )?;
        return Ok(report);
    }
    let steps = plan(before);
    let problem = before
        .first_problem()
        .expect("a damaged walk has a problem");
    writeln!(out, "found: {problem}")?;
    writeln!(out, "repair plan:")?;
    for step in &steps {
        match step {
            Step::MoveAside(p) => writeln!(out, "  move {} aside", file_name(p))?,
            Step::Truncate { path, position } => {
                let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(*position);
                writeln!(
                    out,
                    "  truncate {} at byte {position} (dropping {} bytes)",
                    file_name(path),
                    len.saturating_sub(*position)
                )?
            }
            Step::RewriteHeader { path, .. } => writeln!(
                out,
                "  keep {} as an empty segment with a fresh header (its damaged contents are saved)",
                file_name(path)
            )?,
        }
    }
    if before.finding.is_some() {
        writeln!(
            out,
            "this drops offsets {} and later ({} intact records); offsets {}..{} stay",
            before.next_offset,
            before.records_beyond(),
            before.first_offset,
            before.next_offset
        )?;
    }
    out.flush()?;
    if !yes && !confirm()? {
        writeln!(out, "nothing was changed")?;
        report.declined = true;
        return Ok(report);
    }
    let saved_to = save_dir(root)?;
    writeln!(out, "saving what is dropped in {}", saved_to.display())?;
    for step in &steps {
        apply(step, &saved_to)?;
    }
    let log_dir = &before.log_dir;
    for dir in [log_dir.as_path(), saved_to.as_path()] {
        segment::sync_dir(dir).map_err(|source| ToolError::Repair {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let after = walk(root, progress, |_| Ok(ControlFlow::Continue(())))?;
    if after.is_clean() {
        writeln!(
            out,
            "repaired: the log is clean, offsets {}..{}; the next append gets offset {}",
            after.first_offset, after.next_offset, after.next_offset
        )?;
    } else if let Some(p) = after.first_problem() {
        writeln!(out, "still damaged after the repair: {p}")?;
    }
    report.saved_to = Some(saved_to);
    report.after = Some(after);
    Ok(report)
}

/// The steps that cut `walk` at its first damage, in the order they run.
fn plan(walk: &Walk) -> Vec<Step> {
    let mut steps: Vec<Step> = walk.misnamed.iter().cloned().map(Step::MoveAside).collect();
    let Some(cut) = &walk.cut else {
        return steps;
    };
    let at = cut.segment();
    steps.extend(
        walk.segments[at + 1..]
            .iter()
            .rev()
            .map(|s| Step::MoveAside(s.path.clone())),
    );
    let seg = &walk.segments[at];
    steps.push(match *cut {
        Cut::DropSegment { .. } => Step::MoveAside(seg.path.clone()),
        Cut::Truncate { position, .. } => Step::Truncate {
            path: seg.path.clone(),
            position,
        },
        Cut::RewriteHeader { .. } => Step::RewriteHeader {
            path: seg.path.clone(),
            base: seg.base,
        },
    });
    steps
}

/// Creates `root/repair-<unix time>` (or `-2`, `-3`, … if taken).
fn save_dir(root: &Path) -> Result<PathBuf, ToolError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for n in 1.. {
        let name = if n == 1 {
            format!("repair-{secs}")
        } else {
            format!("repair-{secs}-{n}")
        };
        let dir = root.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(ToolError::Repair { path: dir, source }),
        }
    }
    unreachable!("some repair directory name is free")
}

fn apply(step: &Step, saved_to: &Path) -> Result<(), ToolError> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ToolError::Repair { path, source }
    };
    match step {
        Step::MoveAside(path) => {
            let to = saved_to.join(file_name(path));
            std::fs::rename(path, &to).map_err(fail(path))?;
        }
        Step::Truncate { path, position } => {
            let bytes = std::fs::read(path).map_err(fail(path))?;
            let tail = &bytes[(*position as usize).min(bytes.len())..];
            let copy = saved_to.join(format!("{}.from-byte-{position}", file_name(path)));
            write_synced(&copy, tail).map_err(fail(&copy))?;
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(fail(path))?;
            file.set_len(*position).map_err(fail(path))?;
            file.sync_all().map_err(fail(path))?;
        }
        Step::RewriteHeader { path, base } => {
            let bytes = std::fs::read(path).map_err(fail(path))?;
            let copy = saved_to.join(format!("{}.damaged", file_name(path)));
            write_synced(&copy, &bytes).map_err(fail(&copy))?;
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(fail(path))?;
            file.set_len(0).map_err(fail(path))?;
            file.write_all_at(&segment::encode_header(*base), 0)
                .map_err(fail(path))?;
            file.sync_all().map_err(fail(path))?;
        }
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(i: u64, newest: bool) -> super::super::SegmentSummary {
        super::super::SegmentSummary {
            path: PathBuf::from(segment::file_name(i * 10)),
            base: i * 10,
            bytes: 100,
            records: 10,
            records_beyond: 0,
            newest,
        }
    }

    #[test]
    fn later_segments_go_newest_first_and_the_cut_comes_last() {
        let walk = Walk {
            root: PathBuf::from("d"),
            log_dir: PathBuf::from("d/log"),
            misnamed: vec![PathBuf::from("7.seg")],
            segments: (0..4).map(|i| seg(i, i == 3)).collect(),
            finding: None,
            cut: Some(Cut::Truncate {
                segment: 1,
                position: 64,
            }),
            first_offset: 0,
            next_offset: 12,
            live_append: false,
        };
        assert_eq!(
            plan(&walk),
            vec![
                Step::MoveAside(PathBuf::from("7.seg")),
                Step::MoveAside(PathBuf::from(segment::file_name(30))),
                Step::MoveAside(PathBuf::from(segment::file_name(20))),
                Step::Truncate {
                    path: PathBuf::from(segment::file_name(10)),
                    position: 64
                },
            ]
        );
    }
}
