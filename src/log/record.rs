//! The record frame: encode, validate and decode one record. The only decoder of
//! record bytes in the crate; recovery, readers, `sessionlog` and the fuzz
//! targets all come through [`decode`].
//!
//! The byte layout is documented once, in `log-format.md` ("Record frame"); the
//! constants below name its fields. The invariant that matters: a frame is
//! accepted only if its magic, length, kind, flags and reserved bytes are
//! well-formed *and* the CRC32 over the header fields and the body matches, so
//! an all-zero region (whose CRC32 would be 0) never decodes as a record.

use super::Offset;

/// First four bytes of every record: `b"SRec"` (`0x63655253` little-endian).
pub const RECORD_MAGIC: [u8; 4] = *b"SRec";
/// Length of the fixed record header that precedes the body.
pub const HEADER_LEN: usize = 48;
/// Largest body a record may carry (256 MiB). Checked before any slice is
/// taken, so a hostile length can never make a reader allocate or over-read.
pub const MAX_BODY_LEN: u32 = 256 << 20;

const OFF_BODY_LEN: usize = 4;
const OFF_OFFSET: usize = 8;
const OFF_COMMIT: usize = 16;
const OFF_KEY: usize = 24;
const OFF_KIND: usize = 40;
const OFF_FLAGS: usize = 41;
const OFF_RESERVED: usize = 42;
const OFF_CRC: usize = 44;

/// Flag bit: this record is the last one of its commit.
pub const FLAG_COMMIT_END: u8 = 0x01;
const KNOWN_FLAGS: u8 = FLAG_COMMIT_END;

/// What an event does to its session; stored in the record header so the log
/// can track which sessions exist (for preconditions) without decoding bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    Created = 1,
    Replaced = 2,
    Patched = 3,
    Deleted = 4,
}

impl RecordKind {
    /// Parses the kind byte of a header.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => RecordKind::Created,
            2 => RecordKind::Replaced,
            3 => RecordKind::Patched,
            4 => RecordKind::Deleted,
            _ => return None,
        })
    }

    /// The API name of the kind: `created`, `replaced`, `patched`, `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Created => "created",
            RecordKind::Replaced => "replaced",
            RecordKind::Patched => "patched",
            RecordKind::Deleted => "deleted",
        }
    }

    /// Parses an API name (`created`, …).
    pub fn parse(s: &str) -> Option<Self> {
        [
            RecordKind::Created,
            RecordKind::Replaced,
            RecordKind::Patched,
            RecordKind::Deleted,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The decoded fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub body_len: u32,
    pub offset: Offset,
    /// Offset of the first record of the commit this record belongs to.
    pub commit: Offset,
    pub key: u128,
    pub kind: RecordKind,
    /// True for the last record of its commit (the commit marker).
    pub commit_end: bool,
}

impl RecordHeader {
    /// Bytes the whole frame occupies.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame cut short: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("bad record magic {found:02x?}")]
    BadMagic { found: [u8; 4] },
    #[error("record body length {0} is out of range 1..={MAX_BODY_LEN}")]
    BadLength(u32),
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("unknown record flags {0:#04x} or non-zero reserved bytes")]
    BadFlags(u8),
    #[error("record commit {commit} is after its offset {offset}")]
    BadCommit { offset: Offset, commit: Offset },
    /// Offset `u64::MAX` has no next offset, so no log can hold it.
    #[error("record offset {0} is out of range (the largest offset is 2^64-2)")]
    OffsetOutOfRange(Offset),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    /// An intact frame in the wrong place (found by scanners and readers, not by [`decode`]).
    #[error("record has offset {found} where {expected} was expected")]
    WrongOffset { expected: Offset, found: Offset },
}

/// Appends one encoded frame to `buf`.
///
/// # Panics
/// If `body` is empty or longer than [`MAX_BODY_LEN`]; the writer checks both
/// before it assigns an offset.
pub fn encode_into(buf: &mut Vec<u8>, header: &RecordHeader, body: &[u8]) {
    assert!(
        !body.is_empty() && body.len() <= MAX_BODY_LEN as usize,
        "record body length {} out of range",
        body.len()
    );
    let start = buf.len();
    buf.extend_from_slice(&RECORD_MAGIC);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&header.offset.to_le_bytes());
    buf.extend_from_slice(&header.commit.to_le_bytes());
    buf.extend_from_slice(&header.key.to_le_bytes());
    buf.push(header.kind as u8);
    buf.push(if header.commit_end {
        FLAG_COMMIT_END
    } else {
        0
    });
    buf.extend_from_slice(&[0, 0]);
    let crc = crc_of(&buf[start..start + OFF_CRC], body);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(body);
}

fn crc_of(header_fields: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header_fields);
    h.update(body);
    h.finalize()
}

/// Reads and checks only the fixed header fields (not the CRC) of the frame at
/// the start of `buf`. Cheap; used to skip candidates quickly when resyncing.
///
/// # Errors
/// [`FrameError`] for anything but a well-formed header.
pub fn decode_header(buf: &[u8]) -> Result<RecordHeader, FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    let magic: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
    if magic != RECORD_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let body_len = u32_at(buf, OFF_BODY_LEN);
    if body_len == 0 || body_len > MAX_BODY_LEN {
        return Err(FrameError::BadLength(body_len));
    }
    let kind = RecordKind::from_byte(buf[OFF_KIND]).ok_or(FrameError::BadKind(buf[OFF_KIND]))?;
    let flags = buf[OFF_FLAGS];
    if flags & !KNOWN_FLAGS != 0 || buf[OFF_RESERVED] != 0 || buf[OFF_RESERVED + 1] != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    let offset = u64_at(buf, OFF_OFFSET);
    if offset == Offset::MAX {
        return Err(FrameError::OffsetOutOfRange(offset));
    }
    let commit = u64_at(buf, OFF_COMMIT);
    if commit > offset {
        return Err(FrameError::BadCommit { offset, commit });
    }
    Ok(RecordHeader {
        body_len,
        offset,
        commit,
        key: u128::from_le_bytes(buf[OFF_KEY..OFF_KEY + 16].try_into().expect("16 bytes")),
        kind,
        commit_end: flags & FLAG_COMMIT_END != 0,
    })
}

/// Validates and decodes the frame at the start of `buf`, returning its header
/// and a borrowed body. Bytes after the frame are ignored (they belong to the
/// next record).
///
/// # Errors
/// [`FrameError`] when the bytes are not a whole, intact record.
pub fn decode(buf: &[u8]) -> Result<(RecordHeader, &[u8]), FrameError> {
    let header = decode_header(buf)?;
    let end = header.frame_len();
    if buf.len() < end {
        return Err(FrameError::Truncated {
            needed: end,
            available: buf.len(),
        });
    }
    let body = &buf[HEADER_LEN..end];
    let stored = u32_at(buf, OFF_CRC);
    let computed = crc_of(&buf[..OFF_CRC], body);
    if stored != computed {
        return Err(FrameError::Crc { stored, computed });
    }
    Ok((header, body))
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(offset: Offset, body_len: usize) -> RecordHeader {
        RecordHeader {
            body_len: body_len as u32,
            offset,
            commit: offset,
            key: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            kind: RecordKind::Patched,
            commit_end: true,
        }
    }

    #[test]
    fn all_zero_bytes_never_decode() {
        for len in [0, 1, HEADER_LEN, HEADER_LEN + 1, 4096] {
            assert!(decode(&vec![0u8; len]).is_err(), "{len} zero bytes decoded");
        }
    }

    #[test]
    fn zero_length_body_is_refused_even_with_a_matching_crc() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &header(7, 1), b"x");
        // Forge a length-0 frame with a CRC that matches its (empty) body.
        buf.truncate(HEADER_LEN);
        buf[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&0u32.to_le_bytes());
        let crc = crc_of(&buf[..OFF_CRC], &[]);
        buf[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&buf), Err(FrameError::BadLength(0)));
    }

    #[test]
    fn hostile_length_is_refused_before_slicing() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &header(1, 3), b"abc");
        buf[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&buf), Err(FrameError::BadLength(u32::MAX)));
    }

    proptest! {
        #[test]
        fn round_trip(offset in 0u64..u64::MAX / 2, back in 0u64..1000, key: u128,
                      kind in 1u8..=4, end: bool, body in prop::collection::vec(any::<u8>(), 1..512)) {
            let h = RecordHeader {
                body_len: body.len() as u32,
                offset,
                commit: offset.saturating_sub(back),
                key,
                kind: RecordKind::from_byte(kind).unwrap(),
                commit_end: end,
            };
            let mut buf = Vec::new();
            encode_into(&mut buf, &h, &body);
            buf.extend_from_slice(b"next record");
            let (got, got_body) = decode(&buf).unwrap();
            prop_assert_eq!(got, h);
            prop_assert_eq!(got_body, &body[..]);
        }

        #[test]
        fn any_flipped_bit_is_detected(body in prop::collection::vec(any::<u8>(), 1..256),
                                       bit in 0usize..8, at in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            encode_into(&mut buf, &header(42, body.len()), &body);
            let i = at.index(buf.len());
            buf[i] ^= 1 << bit;
            prop_assert!(decode(&buf).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}

/// The worked example of `log-format.md` ("Worked example"), byte for byte.
#[cfg(test)]
mod format_example {
    use super::*;
    use crate::event::EventBody;

    pub(super) fn example() -> Vec<u8> {
        let body = EventBody {
            json: r#"{"n":1}"#.into(),
            username: "ana".into(),
            at_ms: 1_764_780_350_123,
        }
        .encode();
        let mut buf = Vec::new();
        encode_into(
            &mut buf,
            &RecordHeader {
                body_len: body.len() as u32,
                offset: 5,
                commit: 5,
                key: 0x0193_8bd1_05c2_4a7d_9b4e_1f2a_3c4d_5e6f,
                kind: RecordKind::Patched,
                commit_end: true,
            },
            &body,
        );
        buf
    }

    #[test]
    fn matches_the_documented_hex() {
        let hex: String = example()
            .chunks(16)
            .map(|row| {
                row.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
                    + "\n"
            })
            .collect();
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/log-format.md")).unwrap();
        assert!(
            doc.contains(&hex),
            "log-format.md lacks the example bytes:\n{hex}"
        );
    }
}
