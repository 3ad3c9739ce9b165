//! Recovery: decide, before anything is served, whether the segments on disk
//! are a clean log, a clean log with a torn tail, or corrupt.
//!
//! The rule (DESIGN.md, "Storage architecture"; `log-format.md`, "Recovery"):
//! - a **torn tail** is damage in the newest segment that belongs to the last,
//!   unfinished commit: no intact record of a *later* commit follows it. It can
//!   only hold writes that were never acknowledged, so it is truncated (back to
//!   the end of the last complete commit) and reported;
//! - anything else is **corruption**: damage followed by an intact record of a
//!   later commit, any damage in a sealed segment, a missing or misnamed
//!   segment. Opening refuses with file, byte, offset and the count of intact
//!   later records, and changes nothing.
//!
//! Commit boundaries are visible in every record (its commit's first offset and
//! a commit-end flag), which is what makes the two distinguishable.
//!
//! The checks here work on byte slices, so the server (maps for sealed
//! segments, one read of the newest), `sessionlog` and the fuzz targets share
//! them: [`scan_segment`] is the one scanner.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::{Index, SegmentData, SegmentEntry};
use super::record::{self, FrameError, RecordKind, RECORD_MAGIC};
use super::segment::{self, HeaderError, SEGMENT_HEADER_LEN};
use super::{Offset, OpenError, Position};
use crate::data_dir::DataDir;

/// One intact record found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedRecord {
    pub offset: Offset,
    pub position: Position,
    pub key: u128,
    pub kind: RecordKind,
    pub commit: Offset,
    pub commit_end: bool,
    pub frame_len: u32,
}

/// What is wrong at the first bad byte of a segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DamageKind {
    #[error("{0}")]
    Header(HeaderError),
    #[error("{0}")]
    Frame(FrameError),
    #[error("record claims commit {found} where commit {expected} was expected")]
    CommitChain { expected: Offset, found: Offset },
}

/// The first damage in a segment and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub position: Position,
    /// The offset the damaged record should have had.
    pub offset: Offset,
    pub kind: DamageKind,
    /// Intact records after the damage that belong to a commit later than the
    /// damaged one: any such record makes the damage corruption.
    pub later_records: usize,
    /// Position of the first of them.
    pub first_later: Option<Position>,
    /// Every byte from the damage to the end of the file is zero.
    pub zero_filled: bool,
}

/// The result of scanning one segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub base: Offset,
    pub file_len: u64,
    /// Intact records from the start, contiguous from `base`, up to the first damage.
    pub records: Vec<ScannedRecord>,
    pub damage: Option<Damage>,
    /// How many of `records` belong to complete commits.
    pub committed: usize,
    /// Byte position just after the last complete commit (the header's end if none).
    pub committed_end: Position,
}

impl SegmentScan {
    /// No damage and no unfinished commit.
    pub fn is_clean(&self) -> bool {
        self.damage.is_none()
            && self.committed == self.records.len()
            && self.committed_end == self.file_len
    }

    /// The offset after the last complete commit.
    pub fn committed_next(&self) -> Offset {
        self.base + self.committed as u64
    }

    /// Classifies this segment as the newest one: clean, torn tail or corrupt.
    pub fn verdict_as_newest(&self, file: &Path) -> Result<Option<TornTail>, Corruption> {
        if self.is_clean() {
            return Ok(None);
        }
        if let Some(d) = &self.damage {
            if d.later_records > 0 {
                return Err(Corruption {
                    file: file.to_path_buf(),
                    position: d.position,
                    offset: d.offset,
                    kind: CorruptionKind::Damage(d.kind.clone()),
                    intact_after: d.later_records,
                });
            }
        }
        let dropped_records = (self.records.len() - self.committed) as u64;
        Ok(Some(TornTail {
            file: file.to_path_buf(),
            position: self.committed_end,
            dropped_bytes: self.file_len - self.committed_end,
            first_dropped: self.committed_next(),
            dropped_records,
            damage: self.damage.as_ref().map(|d| d.kind.clone()),
            zero_filled: self.damage.as_ref().is_some_and(|d| d.zero_filled)
                && dropped_records == 0,
            header_rewritten: matches!(
                self.damage,
                Some(Damage {
                    kind: DamageKind::Header(_),
                    ..
                })
            ),
        }))
    }

    /// Classifies this segment as a sealed one: anything but clean is corruption.
    pub fn verdict_as_sealed(&self, file: &Path) -> Result<(), Corruption> {
        if self.is_clean() {
            if self.records.is_empty() {
                return Err(Corruption {
                    file: file.to_path_buf(),
                    position: SEGMENT_HEADER_LEN as u64,
                    offset: self.base,
                    kind: CorruptionKind::EmptySealed,
                    intact_after: 0,
                });
            }
            return Ok(());
        }
        let (position, offset, kind, intact_after) = match &self.damage {
            Some(d) => (
                d.position,
                d.offset,
                CorruptionKind::Damage(d.kind.clone()),
                d.later_records,
            ),
            None => (
                self.committed_end,
                self.committed_next(),
                CorruptionKind::UnfinishedCommitInSealed,
                0,
            ),
        };
        Err(Corruption {
            file: file.to_path_buf(),
            position,
            offset,
            kind,
            intact_after,
        })
    }
}

/// Scans a segment's bytes: header, then records until the first damage, then
/// (if damaged) looks past the damage for intact records of later commits.
///
/// Never panics and never allocates more than a small record per intact frame,
/// whatever the bytes: this is the fuzz target for segment recovery.
pub fn scan_segment(bytes: &[u8], base: Offset) -> SegmentScan {
    let mut scan = SegmentScan {
        base,
        file_len: bytes.len() as u64,
        records: Vec::new(),
        damage: None,
        committed: 0,
        committed_end: SEGMENT_HEADER_LEN as u64,
    };
    if let Err(e) = segment::decode_header(bytes, base) {
        scan.committed_end = 0;
        scan.damage = Some(damage_after(bytes, 0, base, base, DamageKind::Header(e)));
        return scan;
    }
    let mut pos = SEGMENT_HEADER_LEN;
    let mut expected = base;
    // First offset of the commit the next record belongs to.
    let mut commit = base;
    while pos < bytes.len() {
        let problem = match record::decode(&bytes[pos..]) {
            Err(e) => DamageKind::Frame(e),
            Ok((h, _)) if h.offset != expected => DamageKind::Frame(FrameError::WrongOffset {
                expected,
                found: h.offset,
            }),
            Ok((h, _)) if h.commit != commit => DamageKind::CommitChain {
                expected: commit,
                found: h.commit,
            },
            Ok((h, _)) => {
                scan.records.push(ScannedRecord {
                    offset: h.offset,
                    position: pos as u64,
                    key: h.key,
                    kind: h.kind,
                    commit: h.commit,
                    commit_end: h.commit_end,
                    frame_len: h.frame_len() as u32,
                });
                pos += h.frame_len();
                expected += 1;
                if h.commit_end {
                    commit = expected;
                    scan.committed = scan.records.len();
                    scan.committed_end = pos as u64;
                }
                continue;
            }
        };
        scan.damage = Some(damage_after(bytes, pos, expected, commit, problem));
        break;
    }
    scan
}

/// Describes damage at `pos`, counting intact records of commits after `commit` past it.
fn damage_after(
    bytes: &[u8],
    pos: usize,
    offset: Offset,
    commit: Offset,
    kind: DamageKind,
) -> Damage {
    let zero_filled = bytes[pos..].iter().all(|&b| b == 0);
    let mut later_records = 0;
    let mut first_later = None;
    if !zero_filled {
        let mut at = pos + 1;
        while let Some(found) = find_magic(&bytes[at.min(bytes.len())..]) {
            let cand = at + found;
            // Cheap header checks first; the CRC only for plausible candidates.
            let later = record::decode_header(&bytes[cand..])
                .is_ok_and(|h| h.commit > commit && h.offset >= h.commit)
                && record::decode(&bytes[cand..]).is_ok();
            if later {
                later_records += 1;
                first_later.get_or_insert(cand as u64);
            }
            at = cand + 1;
        }
    }
    Damage {
        position: pos as u64,
        offset,
        kind,
        later_records,
        first_later,
        zero_filled,
    }
}

fn find_magic(hay: &[u8]) -> Option<usize> {
    hay.windows(RECORD_MAGIC.len())
        .position(|w| w == RECORD_MAGIC)
}

/// What makes a log corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptionKind {
    #[error("{0}")]
    Damage(DamageKind),
    #[error("sealed segment ends inside a commit")]
    UnfinishedCommitInSealed,
    #[error("sealed segment holds no records")]
    EmptySealed,
    #[error("segment file name is not 20 digits + .seg")]
    Misnamed,
    #[error("segment starts at offset {found}, but the previous one ends at {expected} (missing or misnamed segment)")]
    Gap { expected: Offset, found: Offset },
}

/// Damage that recovery will not repair by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "log corrupt in {} at byte {position} (offset {offset}): {kind}; {intact_after} intact records of a later commit follow; nothing was changed. Inspect with: sessionlog verify DATA_DIR. To drop offsets {offset} and later: sessionlog repair DATA_DIR",
    .file.display()
)]
pub struct Corruption {
    pub file: PathBuf,
    pub position: Position,
    pub offset: Offset,
    pub kind: CorruptionKind,
    pub intact_after: usize,
}

/// A torn tail found in the newest segment (and, during recovery, truncated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Where the segment is cut: the end of its last complete commit.
    pub position: Position,
    pub dropped_bytes: u64,
    /// The first offset dropped (= the next offset after recovery).
    pub first_dropped: Offset,
    /// Intact records of the unfinished commit that were dropped with it.
    pub dropped_records: u64,
    pub damage: Option<DamageKind>,
    /// The dropped bytes were all zero (nothing but zero fill was lost).
    pub zero_filled: bool,
    /// The segment header itself was damaged and has been rewritten.
    pub header_rewritten: bool,
}

impl std::fmt::Display for TornTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.zero_filled {
            write!(
                f,
                "zero-filled tail of {} bytes in {} at byte {}",
                self.dropped_bytes,
                self.file.display(),
                self.position
            )
        } else {
            write!(
                f,
                "torn tail in {} at byte {}: {} bytes dropped, {} intact records of the unfinished commit dropped from offset {}",
                self.file.display(),
                self.position,
                self.dropped_bytes,
                self.dropped_records,
                self.first_dropped
            )?;
            if let Some(d) = &self.damage {
                write!(f, " ({d})")?;
            }
            Ok(())
        }
    }
}

/// What recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The torn tail that was truncated, if any.
    pub torn_tail: Option<TornTail>,
    /// The segment that was created because the directory was empty.
    pub created: Option<PathBuf>,
}

/// Per-key facts the writer needs for preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    pub last: Offset,
    pub deleted: bool,
}

/// The active segment handed to the writer.
pub(crate) struct ActiveSegment {
    pub path: PathBuf,
    pub file: Arc<std::fs::File>,
    pub len: u64,
}

pub(crate) struct Recovered {
    pub index: Index,
    pub keys: HashMap<u128, KeyState>,
    pub active: ActiveSegment,
    pub next_offset: Offset,
    pub report: RecoveryReport,
}

/// Checks the set of segment files: names parse and no file is out of place.
///
/// # Errors
/// [`Corruption`] with [`CorruptionKind::Misnamed`] for a `.seg` file whose name is not a base offset.
pub fn check_names(files: &[segment::SegmentFile]) -> Result<Vec<(Offset, PathBuf)>, Corruption> {
    files
        .iter()
        .map(|f| match f.base {
            Some(base) => Ok((base, f.path.clone())),
            None => Err(Corruption {
                file: f.path.clone(),
                position: 0,
                offset: 0,
                kind: CorruptionKind::Misnamed,
                intact_after: 0,
            }),
        })
        .collect()
}

/// Checks that a segment starts where the previous one ended.
///
/// # Errors
/// [`CorruptionKind::Gap`] otherwise.
pub fn check_continuity(path: &Path, base: Offset, expected: Offset) -> Result<(), Corruption> {
    if base == expected {
        return Ok(());
    }
    Err(Corruption {
        file: path.to_path_buf(),
        position: 0,
        offset: expected,
        kind: CorruptionKind::Gap {
            expected,
            found: base,
        },
        intact_after: 0,
    })
}

/// Runs recovery on a locked data directory.
pub(crate) fn recover(dir: &DataDir) -> Result<Recovered, OpenError> {
    let log_dir = dir.log_dir();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OpenError::Io { path, source }
    };
    let files = segment::list(&log_dir).map_err(io(&log_dir))?;
    let mut report = RecoveryReport::default();
    let mut segments = check_names(&files)?;
    if segments.is_empty() {
        segment::create(&log_dir, 0).map_err(io(&log_dir))?;
        let path = log_dir.join(segment::file_name(0));
        report.created = Some(path.clone());
        segments.push((0, path));
    }
    let mut keys = HashMap::new();
    let mut entries = Vec::with_capacity(segments.len());
    let mut expected = segments[0].0;
    let newest = segments.len() - 1;
    for (i, (base, path)) in segments.iter().enumerate() {
        check_continuity(path, *base, expected)?;
        if i < newest {
            let file = std::fs::File::open(path).map_err(io(path))?;
            let map = segment::map_sealed(&file).map_err(io(path))?;
            let scan = scan_segment(&map, *base);
            scan.verdict_as_sealed(path)?;
            note_keys(&mut keys, &scan.records);
            expected = scan.committed_next();
            entries.push(SegmentEntry {
                base: *base,
                path: path.clone(),
                positions: scan.records.iter().map(|r| r.position).collect(),
                len: scan.file_len,
                data: SegmentData::Sealed(Arc::new(map)),
            });
            continue;
        }
        // The newest segment: read it (never map it), decide, maybe truncate.
        let bytes = std::fs::read(path).map_err(io(path))?;
        let scan = scan_segment(&bytes, *base);
        drop(bytes);
        let torn = scan.verdict_as_newest(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        let mut len = scan.file_len;
        if let Some(torn) = torn {
            if torn.header_rewritten {
                use std::os::unix::fs::FileExt;
                file.set_len(0).map_err(io(path))?;
                file.write_all_at(&segment::encode_header(*base), 0)
                    .map_err(io(path))?;
                len = SEGMENT_HEADER_LEN as u64;
            } else {
                file.set_len(torn.position).map_err(io(path))?;
                len = torn.position;
            }
            file.sync_all().map_err(io(path))?;
            report.torn_tail = Some(torn);
        }
        let records = &scan.records[..scan.committed];
        note_keys(&mut keys, records);
        expected = scan.committed_next();
        let file = Arc::new(file);
        entries.push(SegmentEntry {
            base: *base,
            path: path.clone(),
            positions: records.iter().map(|r| r.position).collect(),
            len,
            data: SegmentData::Active(file.clone()),
        });
        let active = ActiveSegment {
            path: path.clone(),
            file,
            len,
        };
        return Ok(Recovered {
            index: Index::new(entries),
            keys,
            active,
            next_offset: expected,
            report,
        });
    }
    unreachable!("the segment list is never empty here")
}

fn note_keys(keys: &mut HashMap<u128, KeyState>, records: &[ScannedRecord]) {
    for r in records {
        keys.insert(
            r.key,
            KeyState {
                last: r.offset,
                deleted: r.kind == RecordKind::Deleted,
            },
        );
    }
}
