//! Offset → (segment, position): the in-memory index.
//!
//! Rebuilt from the segments at every open (segments are the truth; there is
//! no side file to go stale). Offsets are dense, so a segment's index is a
//! plain vector of record positions: the record at offset `o` of a segment
//! with base `b` starts at `positions[o - b]`. That costs 8 bytes per record.
//!
//! Only the writer adds to the index (after writing a batch, before it is
//! durable); readers never look past the durable end they were given, so they
//! never see a position whose bytes are not on disk yet.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use memmap2::Mmap;

use super::{Offset, Position};

/// How a segment's bytes are read.
#[derive(Clone)]
pub enum SegmentData {
    /// Sealed: immutable and mapped for its whole length.
    Sealed(Arc<Mmap>),
    /// Active: read with positioned reads, never mapped (it grows, and recovery may shorten it).
    Active(Arc<File>),
}

/// One segment in the index.
pub struct SegmentEntry {
    pub base: Offset,
    pub path: PathBuf,
    pub positions: Vec<Position>,
    /// Bytes written to the segment (header included).
    pub len: u64,
    pub data: SegmentData,
}

/// A slice of one segment, copied out so the lock is not held while decoding.
pub struct Span {
    pub path: PathBuf,
    pub first: Offset,
    pub positions: Vec<Position>,
    /// Byte position just after the last record of the span.
    pub end: Position,
    pub data: SegmentData,
}

/// All segments, oldest first.
pub struct Index {
    segments: RwLock<Vec<SegmentEntry>>,
}

impl Index {
    pub(crate) fn new(segments: Vec<SegmentEntry>) -> Self {
        Index {
            segments: RwLock::new(segments),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<SegmentEntry>> {
        self.segments.read().expect("index lock poisoned")
    }

    /// Oldest offset held.
    pub fn first_offset(&self) -> Offset {
        self.read().first().map_or(0, |s| s.base)
    }

    /// (segments, bytes).
    pub fn size(&self) -> (usize, u64) {
        let segs = self.read();
        (segs.len(), segs.iter().map(|s| s.len).sum())
    }

    /// Up to `max` records from `from`, but not at or past `to`, within one segment.
    /// `None` when `from` is not in the index.
    pub fn span(&self, from: Offset, to: Offset, max: usize) -> Option<Span> {
        let segs = self.read();
        let i = segs.partition_point(|s| s.base <= from).checked_sub(1)?;
        let seg = &segs[i];
        let start = usize::try_from(from - seg.base).ok()?;
        if start >= seg.positions.len() || from >= to {
            return None;
        }
        let wanted = usize::try_from(to - from).unwrap_or(usize::MAX).min(max);
        let stop = (start + wanted).min(seg.positions.len());
        let end = seg.positions.get(stop).copied().unwrap_or(seg.len);
        Some(Span {
            path: seg.path.clone(),
            first: from,
            positions: seg.positions[start..stop].to_vec(),
            end,
            data: seg.data.clone(),
        })
    }

    /// Records the positions of a batch just written to the active segment.
    pub(crate) fn append(&self, positions: &[Position], new_len: u64) {
        let mut segs = self.segments.write().expect("index lock poisoned");
        let active = segs.last_mut().expect("an active segment");
        active.positions.extend_from_slice(positions);
        active.len = new_len;
    }

    /// Seals the active segment (now mapped) and makes `next` the active one.
    pub(crate) fn roll(&self, sealed: Mmap, next: SegmentEntry) {
        let mut segs = self.segments.write().expect("index lock poisoned");
        let last = segs.last_mut().expect("an active segment");
        last.data = SegmentData::Sealed(Arc::new(sealed));
        segs.push(next);
    }
}
