//! Reading records from an offset across segments: SSE catch-up, history,
//! time travel and the startup fold all come through [`visit`].
//!
//! Sealed segments are sliced straight from their maps. The active segment is
//! read with positioned reads, a chunk of at most [`CHUNK_BYTES`] (or one
//! record) at a time, so a long catch-up never holds more than that in memory.
//! Every record is validated (CRC and offset) again on the way out.

use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;

use super::index::{Index, SegmentData, Span};
use super::record;
use super::{Offset, ReadError, RecordView};

/// Most records copied out of the index per lock acquisition.
const SPAN_RECORDS: usize = 4096;
/// Largest read from the active segment in one go (a bigger single record is read whole).
const CHUNK_BYTES: u64 = 1 << 20;

/// Visits records `from..to` in order until `f` breaks. `to` must not exceed
/// the durable end; offsets below the first offset are skipped.
pub(crate) fn visit(
    index: &Index,
    from: Offset,
    to: Offset,
    mut f: impl FnMut(RecordView<'_>) -> ControlFlow<()>,
) -> Result<(), ReadError> {
    let mut next = from.max(index.first_offset());
    let mut buf = Vec::new();
    while next < to {
        let Some(span) = index.span(next, to, SPAN_RECORDS) else {
            return Err(ReadError::OutOfRange {
                offset: next,
                durable_end: to,
            });
        };
        let count = span.positions.len() as u64;
        let flow = match &span.data {
            SegmentData::Sealed(map) => {
                visit_bytes(&span, map, 0, 0, span.positions.len(), &mut f)?
            }
            SegmentData::Active(file) => {
                let mut i = 0;
                let mut flow = ControlFlow::Continue(());
                while i < span.positions.len() && flow.is_continue() {
                    let start = span.positions[i];
                    // Take records while the chunk stays under CHUNK_BYTES (at least one).
                    let mut j = i + 1;
                    while j < span.positions.len() && span.positions[j] - start < CHUNK_BYTES {
                        j += 1;
                    }
                    let end = span.positions.get(j).copied().unwrap_or(span.end);
                    buf.resize((end - start) as usize, 0);
                    file.read_exact_at(&mut buf, start)
                        .map_err(|source| ReadError::Io {
                            path: span.path.clone(),
                            source,
                        })?;
                    flow = visit_bytes(&span, &buf, start, i, j, &mut f)?;
                    i = j;
                }
                flow
            }
        };
        if flow.is_break() {
            return Ok(());
        }
        next += count;
    }
    Ok(())
}

/// Decodes records `i..j` of a span from `bytes`, which start at segment position `base_pos`.
fn visit_bytes(
    span: &Span,
    bytes: &[u8],
    base_pos: u64,
    i: usize,
    j: usize,
    f: &mut impl FnMut(RecordView<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, ReadError> {
    for k in i..j {
        let position = span.positions[k];
        let offset = span.first + k as u64;
        let at = (position - base_pos) as usize;
        let damaged = |error| ReadError::Damaged {
            path: span.path.clone(),
            position,
            offset,
            error,
        };
        let (h, body) = record::decode(bytes.get(at..).unwrap_or_default()).map_err(damaged)?;
        if h.offset != offset {
            return Err(damaged(record::FrameError::WrongOffset {
                expected: offset,
                found: h.offset,
            }));
        }
        let flow = f(RecordView {
            offset,
            key: h.key,
            kind: h.kind,
            body,
        });
        if flow.is_break() {
            return Ok(flow);
        }
    }
    Ok(ControlFlow::Continue(()))
}
