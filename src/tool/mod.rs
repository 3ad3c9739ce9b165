//! `sessionlog`, the offline log tool, as library functions: [`verify`],
//! [`dump`], [`stats`], [`fold`] and [`repair`] each write their report to an
//! `impl Write`, so tests run them in-process and the binary stays a thin shell.
//!
//! Everything here goes through [`walk`], which applies the log's own rules
//! ([`crate::log::recovery`]: the one scanner, the one verdict per segment) to
//! a private snapshot of each segment. So `sessionlog verify` reaches exactly
//! the verdict the server's recovery reaches: a torn tail in the newest
//! segment is what the server would truncate, anything else is corruption the
//! server refuses.
//!
//! Read-only subcommands take no lock and may run while a server appends.
//! Each segment is read with `std::fs::read` (a copy, never a map, so a server
//! truncating a torn tail cannot cause a SIGBUS), and only the complete
//! commits of the newest segment are used: a commit half-written at the moment
//! of the read is seen as a torn tail, re-read, and if the file is still
//! growing, reported as a live append rather than damage.
//!
//! Only [`repair`] changes anything, and only under the directory lock.

pub mod dump;
pub mod fold;
pub mod repair;
pub mod stats;
pub mod verify;

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::log::recovery::{
    self, scan_segment, Corruption, CorruptionKind, DamageKind, ScannedRecord, SegmentScan,
    TornTail,
};
use crate::log::segment;
use crate::log::{Offset, Position};

/// What a subcommand found, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing wrong (exit 0).
    Clean,
    /// Damage found, or a requested repair not done (exit 1).
    Damage,
}

impl Outcome {
    /// The process exit code: 0 clean, 1 damage.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Clean => 0,
            Outcome::Damage => 1,
        }
    }
}

/// Why a subcommand could not run (exit 2), or its output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("no such data directory: {}; pass the DATA_DIR the server uses (for example ./data)", .0.display())]
    NoSuchDir(PathBuf),
    #[error("{} is not a directory; pass the DATA_DIR the server uses (for example ./data)", .0.display())]
    NotADir(PathBuf),
    #[error("{} has no log/ directory, so it is not a sessiond data directory (a server creates DATA_DIR/log on first start)", .0.display())]
    NoLogDir(PathBuf),
    #[error("reading {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} disappeared while it was being read (a server or a repair changed the directory); run the command again", .0.display())]
    Vanished(PathBuf),
    /// Writing the report failed (a closed pipe ends the binary quietly).
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("another process holds {}: stop the server using this directory before repairing it", .lock.display())]
    Locked { lock: PathBuf },
    #[error("repairing {}: {source}", .path.display())]
    Repair {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What is wrong with a data directory, in the order the server's recovery checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Damage in the newest segment with no later commit after it: the server
    /// truncates it on start.
    TornTail(TornTail),
    /// Anything else: the server refuses to start.
    Corrupt(Corruption),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::TornTail(t) => write!(f, "{t}; the server truncates it when it starts"),
            Finding::Corrupt(c) => {
                write!(
                    f,
                    "corruption in {} at byte {} (offset {}): {}",
                    c.file.display(),
                    c.position,
                    c.offset,
                    c.kind
                )?;
                if matches!(c.kind, CorruptionKind::Damage(_)) {
                    write!(
                        f,
                        "; {} intact records of a later commit follow",
                        c.intact_after
                    )?;
                }
                write!(f, "; the server refuses to start")
            }
        }
    }
}

/// One segment as a subcommand sees it during a [`walk`].
#[derive(Debug)]
pub struct SegmentView<'a> {
    pub path: &'a Path,
    pub base: Offset,
    /// The snapshot of the file that was scanned.
    pub bytes: &'a [u8],
    pub scan: &'a SegmentScan,
    pub newest: bool,
    /// How many of `scan.records` belong to the consistent prefix (what the
    /// server would serve after recovery).
    pub usable: usize,
}

impl SegmentView<'_> {
    /// The body of a record the scan found intact.
    pub fn body(&self, r: &ScannedRecord) -> &[u8] {
        let start = r.position as usize;
        let (_, body) =
            crate::log::record::decode(&self.bytes[start..start + r.frame_len as usize])
                .expect("the scanner only reports records that decode");
        body
    }

    /// A body that does not decode, located in this segment.
    pub fn damage(&self, r: &ScannedRecord, error: crate::event::BodyError) -> verify::BodyDamage {
        verify::BodyDamage {
            file: self.path.to_path_buf(),
            position: r.position,
            offset: r.offset,
            error,
        }
    }

    /// The event of a record the scan found intact.
    ///
    /// # Errors
    /// [`verify::BodyDamage`] when its body does not decode.
    pub fn event(&self, r: &ScannedRecord) -> Result<crate::event::Event, verify::BodyDamage> {
        crate::event::Event::from_record(r.offset, r.key, r.kind, self.body(r))
            .map_err(|error| self.damage(r, error))
    }
}

/// Summary of one segment after a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub base: Offset,
    pub bytes: u64,
    /// Records in the consistent prefix.
    pub records: usize,
    /// Intact records in the file beyond the consistent prefix (lost by a repair).
    pub records_beyond: u64,
    pub newest: bool,
}

/// Where the consistent prefix ends and what a repair does there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// Truncate this segment (index into [`Walk::segments`]) at this position.
    Truncate { segment: usize, position: Position },
    /// The segment's header is damaged: rewrite it as an empty segment.
    RewriteHeader { segment: usize },
    /// The segment does not continue the log: drop it whole.
    DropSegment { segment: usize },
}

impl Cut {
    /// The segment the cut is in; every later segment is dropped too.
    pub fn segment(&self) -> usize {
        match *self {
            Cut::Truncate { segment, .. }
            | Cut::RewriteHeader { segment }
            | Cut::DropSegment { segment } => segment,
        }
    }
}

/// The result of walking a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    pub root: PathBuf,
    pub log_dir: PathBuf,
    /// Files named `*.seg` that are not 20 digits + `.seg` (the server refuses them).
    pub misnamed: Vec<PathBuf>,
    /// Every correctly named segment, in offset order.
    pub segments: Vec<SegmentSummary>,
    /// The first damage among the correctly named segments.
    pub finding: Option<Finding>,
    /// Where a repair cuts (set exactly when `finding` is).
    pub cut: Option<Cut>,
    /// First offset held (the first segment's base, 0 for an empty log).
    pub first_offset: Offset,
    /// End of the consistent prefix: the next offset the server would assign.
    pub next_offset: Offset,
    /// The newest segment kept changing while it was read: a server is appending.
    pub live_append: bool,
}

impl Walk {
    /// The server would start on this directory without truncating anything.
    pub fn is_clean(&self) -> bool {
        self.misnamed.is_empty() && self.finding.is_none()
    }

    /// The first problem in the order the server's recovery reports it.
    pub fn first_problem(&self) -> Option<Finding> {
        if let Some(path) = self.misnamed.first() {
            return Some(Finding::Corrupt(Corruption {
                file: path.clone(),
                position: 0,
                offset: 0,
                kind: CorruptionKind::Misnamed,
                intact_after: 0,
            }));
        }
        self.finding.clone()
    }

    /// Intact records a repair would drop.
    pub fn records_beyond(&self) -> u64 {
        self.segments.iter().map(|s| s.records_beyond).sum()
    }

    /// Bytes in all correctly named segments.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// Checks that `root` is a data directory and returns its log directory.
///
/// # Errors
/// [`ToolError::NoSuchDir`], [`ToolError::NotADir`], [`ToolError::NoLogDir`].
pub fn log_dir_of(root: &Path) -> Result<PathBuf, ToolError> {
    match std::fs::metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ToolError::NoSuchDir(root.to_path_buf()))
        }
        Err(source) => {
            return Err(ToolError::Io {
                path: root.to_path_buf(),
                source,
            })
        }
        Ok(m) if !m.is_dir() => return Err(ToolError::NotADir(root.to_path_buf())),
        Ok(_) => {}
    }
    let log_dir = crate::data_dir::log_dir(root);
    if !log_dir.is_dir() {
        return Err(ToolError::NoLogDir(root.to_path_buf()));
    }
    Ok(log_dir)
}

/// A progress bar over `total` bytes on stderr, drawn only when stderr is a
/// terminal and the run is long enough to be worth one.
pub fn progress_bar(total: u64) -> ProgressBar {
    const WORTH_A_BAR: u64 = 32 << 20;
    if total < WORTH_A_BAR {
        return ProgressBar::hidden();
    }
    // `ProgressBar::new` draws on stderr and hides itself when stderr is not a terminal.
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({eta})",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar
}

/// Total size of the `*.seg` files under `root/log`, for sizing a progress bar.
///
/// # Errors
/// As [`log_dir_of`], and I/O errors listing the directory.
pub fn segment_bytes(root: &Path) -> Result<u64, ToolError> {
    let log_dir = log_dir_of(root)?;
    let files = segment::list(&log_dir).map_err(|source| ToolError::Io {
        path: log_dir.clone(),
        source,
    })?;
    Ok(files
        .iter()
        .filter_map(|f| std::fs::metadata(&f.path).ok())
        .map(|m| m.len())
        .sum())
}

/// How many times the newest segment is re-read when it looks torn, to tell a
/// commit being written right now from a real torn tail.
const LIVE_REREADS: usize = 3;

/// Walks the segments of a data directory in offset order, applying the
/// server's recovery rules, and hands each segment's snapshot to `f` (until
/// `f` breaks). Segments after the first damage are scanned only to count the
/// records a repair would drop; `f` does not see them.
///
/// # Errors
/// [`ToolError`] when the directory is not a data directory, a file cannot be
/// read, or `f` fails.
pub fn walk(
    root: &Path,
    progress: &ProgressBar,
    mut f: impl FnMut(&SegmentView<'_>) -> Result<ControlFlow<()>, ToolError>,
) -> Result<Walk, ToolError> {
    let log_dir = log_dir_of(root)?;
    let files = segment::list(&log_dir).map_err(|source| ToolError::Io {
        path: log_dir.clone(),
        source,
    })?;
    progress.reset();
    let misnamed: Vec<PathBuf> = files
        .iter()
        .filter(|s| s.base.is_none())
        .map(|s| s.path.clone())
        .collect();
    let named: Vec<segment::SegmentFile> = files.into_iter().filter(|s| s.base.is_some()).collect();
    let named = recovery::check_names(&named).expect("only correctly named files are left");
    let mut walk = Walk {
        root: root.to_path_buf(),
        log_dir,
        misnamed,
        segments: Vec::with_capacity(named.len()),
        finding: None,
        cut: None,
        first_offset: named.first().map_or(0, |s| s.0),
        next_offset: named.first().map_or(0, |s| s.0),
        live_append: false,
    };
    let newest = named.len().saturating_sub(1);
    let mut expected = walk.first_offset;
    let mut visiting = true;
    for (i, (base, path)) in named.iter().enumerate() {
        let is_newest = i == newest;
        progress.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let mut bytes = read_segment(path)?;
        let mut scan = scan_segment(&bytes, *base);
        let mut summary = SegmentSummary {
            path: path.clone(),
            base: *base,
            bytes: bytes.len() as u64,
            records: 0,
            records_beyond: 0,
            newest: is_newest,
        };
        if walk.finding.is_some() {
            // Past the damage: only count what a repair would drop.
            summary.records_beyond = intact_records(&scan);
            progress.inc(summary.bytes);
            walk.segments.push(summary);
            continue;
        }
        if let Err(c) = recovery::check_continuity(path, *base, expected) {
            summary.records_beyond = intact_records(&scan);
            walk.finding = Some(Finding::Corrupt(c));
            walk.cut = Some(Cut::DropSegment { segment: i });
            progress.inc(summary.bytes);
            walk.segments.push(summary);
            continue;
        }
        let verdict = if is_newest {
            let mut verdict = scan.verdict_as_newest(path).map_err(Finding::Corrupt);
            let mut rereads = 0;
            while !matches!(verdict, Ok(None)) && rereads < LIVE_REREADS {
                let again = read_segment(path)?;
                if again == bytes {
                    break;
                }
                rereads += 1;
                bytes = again;
                scan = scan_segment(&bytes, *base);
                verdict = scan.verdict_as_newest(path).map_err(Finding::Corrupt);
            }
            if rereads == LIVE_REREADS && !matches!(verdict, Ok(None)) {
                // Still changing after every re-read: a server is appending.
                // Its complete commits are a consistent prefix; the rest is in flight.
                walk.live_append = true;
                verdict = Ok(None);
            }
            summary.bytes = bytes.len() as u64;
            verdict.map(|t| t.map(Finding::TornTail))
        } else {
            scan.verdict_as_sealed(path)
                .map(|()| None)
                .map_err(Finding::Corrupt)
        };
        let finding = match verdict {
            Ok(f) => f,
            Err(f) => Some(f),
        };
        summary.records = scan.committed;
        if let Some(finding) = finding {
            summary.records_beyond = intact_records(&scan) - scan.committed as u64;
            let header_damaged = matches!(
                scan.damage.as_ref().map(|d| &d.kind),
                Some(DamageKind::Header(_))
            );
            walk.cut = Some(if header_damaged {
                Cut::RewriteHeader { segment: i }
            } else {
                Cut::Truncate {
                    segment: i,
                    position: scan.committed_end,
                }
            });
            walk.finding = Some(finding);
        }
        expected = scan.committed_next();
        walk.next_offset = expected;
        if visiting {
            let view = SegmentView {
                path,
                base: *base,
                bytes: &bytes,
                scan: &scan,
                newest: is_newest,
                usable: scan.committed,
            };
            visiting = f(&view)?.is_continue();
        }
        progress.inc(summary.bytes);
        walk.segments.push(summary);
    }
    progress.finish_and_clear();
    Ok(walk)
}

/// Intact records in a scan: those before the damage plus the later-commit
/// records found past it.
fn intact_records(scan: &SegmentScan) -> u64 {
    scan.records.len() as u64 + scan.damage.as_ref().map_or(0, |d| d.later_records as u64)
}

/// Reads a whole segment into memory: a private snapshot, never a map.
fn read_segment(path: &Path) -> Result<Vec<u8>, ToolError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ToolError::Vanished(path.to_path_buf())
        } else {
            ToolError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// The file name of a path, for compact reports.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_progress() -> ProgressBar {
        ProgressBar::hidden()
    }

    #[test]
    fn an_empty_log_is_clean_and_starts_at_offset_zero() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("log")).unwrap();
        let w = walk(tmp.path(), &no_progress(), |_| {
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert!(w.is_clean());
        assert_eq!((w.first_offset, w.next_offset, w.segments.len()), (0, 0, 0));
    }

    #[test]
    fn wrong_directories_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        assert!(matches!(log_dir_of(&missing), Err(ToolError::NoSuchDir(p)) if p == missing));
        assert!(matches!(
            log_dir_of(tmp.path()),
            Err(ToolError::NoLogDir(_))
        ));
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(log_dir_of(&file), Err(ToolError::NotADir(_))));
    }

    #[test]
    fn a_header_only_newest_segment_after_a_sealed_one_is_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        std::fs::create_dir(&log).unwrap();
        // The seed segment: base 0, six records in four commits.
        let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds/segment_scan/clean-multi-record-commit");
        std::fs::copy(seed, log.join(segment::file_name(0))).unwrap();
        std::fs::write(log.join(segment::file_name(6)), segment::encode_header(6)).unwrap();
        let mut seen = Vec::new();
        let w = walk(tmp.path(), &no_progress(), |s| {
            seen.push((s.base, s.usable, s.newest));
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert!(w.is_clean(), "{:?}", w.first_problem());
        assert_eq!(seen, vec![(0, 6, false), (6, 0, true)]);
        assert_eq!(w.next_offset, 6);
    }
}
