//! One segment file: its name ⇄ base offset, its header, creating one, and
//! mapping a sealed one.
//!
//! Layout of the header: `log-format.md`, "Segment header". Sealed segments
//! are read through `memmap2` maps; the active segment is never mapped (it is
//! read with positioned reads bounded by the durable end, see [`super::reader`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap};

use super::Offset;

/// First eight bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SESSLOG\0";
/// Format version written by this build; the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Body encoding id: 1 = bincode 2.0.1 `standard()` (little-endian, varint).
pub const BODY_ENCODING: u32 = 1;
/// Length of the segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// File name suffix of a segment.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// `00000000000000000042.seg` for base offset 42.
pub fn file_name(base: Offset) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// The base offset named by a segment file name: exactly 20 ASCII digits and `.seg`.
pub fn parse_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("segment header cut short ({0} of {SEGMENT_HEADER_LEN} bytes)")]
    Truncated(usize),
    #[error("bad segment magic")]
    BadMagic,
    #[error("segment header CRC mismatch")]
    Crc,
    #[error("unsupported format version {0} (this build reads {FORMAT_VERSION})")]
    Version(u32),
    #[error("unsupported body encoding {0} (this build reads {BODY_ENCODING})")]
    Encoding(u32),
    #[error("header says base offset {header}, file name says {name}")]
    BaseMismatch { name: Offset, header: Offset },
}

/// The 32-byte header of a segment with this base offset.
pub fn encode_header(base: Offset) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&BODY_ENCODING.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks the header at the start of `bytes` against the base offset in the file name.
///
/// # Errors
/// [`HeaderError`] for anything but a valid header naming `name_base`.
pub fn decode_header(bytes: &[u8], name_base: Offset) -> Result<(), HeaderError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Truncated(bytes.len()));
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let stored = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    if stored != crc32fast::hash(&bytes[0..24]) || bytes[28..32] != [0; 4] {
        return Err(HeaderError::Crc);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    let encoding = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if encoding != BODY_ENCODING {
        return Err(HeaderError::Encoding(encoding));
    }
    let header = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if header != name_base {
        return Err(HeaderError::BaseMismatch {
            name: name_base,
            header,
        });
    }
    Ok(())
}

/// A file in the log directory that looks like a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub path: PathBuf,
    /// Base offset from the name, `None` when the name is not 20 digits + `.seg`.
    pub base: Option<Offset>,
}

/// Lists `*.seg` files (and anything named like one but malformed), sorted by name.
///
/// # Errors
/// I/O errors reading the directory.
pub fn list(log_dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(log_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(SEGMENT_SUFFIX) {
            out.push(SegmentFile {
                path: entry.path(),
                base: parse_file_name(name),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Creates a new, empty segment: writes and syncs its header, then syncs the
/// directory so the new name is durable. Refuses to overwrite an existing file.
///
/// # Errors
/// I/O errors (including `AlreadyExists`).
pub fn create(log_dir: &Path, base: Offset) -> std::io::Result<File> {
    let path = log_dir.join(file_name(base));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let written = file
        .write_all(&encode_header(base))
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_dir(log_dir));
    if let Err(e) = written {
        // Leave no half-made segment behind (for example on ENOSPC).
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// Makes a directory's entries (created, renamed, removed files) durable.
///
/// # Errors
/// I/O errors from opening or syncing the directory.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Maps a sealed segment read-only.
///
/// # Errors
/// I/O errors from the map.
pub fn map_sealed(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: only sealed segments are mapped. A sealed segment is never
    // written, truncated or rewritten in place while the directory lock is
    // held (recovery only shortens the *newest* segment, before anything is
    // mapped; `sessionlog repair` takes the same lock), and the map covers
    // exactly the file's length at map time, so no page past EOF is touched.
    let map = unsafe { Mmap::map(file)? };
    // Advice is a hint; a kernel that ignores it changes nothing.
    let _ = map.advise(Advice::Sequential);
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_numerically() {
        assert_eq!(file_name(0), "00000000000000000000.seg");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        for bad in [
            "0.seg",
            "0000000000000000000a.seg",
            "00000000000000000000.log",
            "000000000000000000000.seg",
            "99999999999999999999.seg",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = encode_header(4096);
        assert_eq!(decode_header(&h, 4096), Ok(()));
        assert_eq!(
            decode_header(&h, 0),
            Err(HeaderError::BaseMismatch {
                name: 0,
                header: 4096
            })
        );
        assert_eq!(
            decode_header(&[0; SEGMENT_HEADER_LEN], 0),
            Err(HeaderError::BadMagic)
        );
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(decode_header(&bad, 4096), Err(HeaderError::Crc));
        assert_eq!(
            decode_header(&h[..10], 4096),
            Err(HeaderError::Truncated(10))
        );
    }
}
