//! SSE wire encoding: `retry`, events with `event:`/`id:`/`data:` lines, and
//! `: ping` comments. The one encoder of the stream format.
//!
//! Invariants every frame keeps (tests below and in `tests/it` check them):
//! - no CR byte anywhere; every line ends in a single LF; every frame ends in
//!   exactly one blank line, so a frame is dispatched whole or not at all;
//! - the `event:` name is one of [`EventName`] and the `id:` is a decimal
//!   [`Offset`]: no user text ever reaches a field name or an `id:`;
//! - `data:` is one line of compact JSON. serde_json escapes every control
//!   character inside strings, so JSON text never holds a raw CR or LF.
//!
//! Frames are built once as [`Bytes`] and shared by every subscriber that
//! sends them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::event::Event;
use crate::log::{Offset, RecordKind};

/// Reconnection delay announced in the first frame of every stream, in ms.
pub const RETRY_MS: u64 = 2000;

/// The `event:` names of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    Init,
    Update,
    Delete,
    Join,
    Leave,
}

impl EventName {
    /// The name as written after `event: `.
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::Init => "init",
            EventName::Update => "update",
            EventName::Delete => "delete",
            EventName::Join => "join",
            EventName::Leave => "leave",
        }
    }
}

/// `retry: <ms>` followed by a blank line (dispatches nothing in a client).
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The heartbeat comment.
pub fn ping() -> Bytes {
    Bytes::from_static(b": ping\n\n")
}

/// The head of an event up to and including `data: `; the JSON and the
/// closing `\n\n` follow.
fn head(name: EventName, id: Option<Offset>, capacity: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(48 + capacity);
    b.put_slice(b"event: ");
    b.put_slice(name.as_str().as_bytes());
    b.put_u8(b'\n');
    if let Some(id) = id {
        b.put_slice(format!("id: {id}\n").as_bytes());
    }
    b.put_slice(b"data: ");
    b
}

/// One event whose data is `json` (compact JSON text, a single line).
///
/// # Panics
/// In debug builds, if `json` holds a CR or LF (it never does when it comes
/// from serde_json).
pub fn event(name: EventName, id: Option<Offset>, json: &[u8]) -> Bytes {
    debug_assert!(single_line(json), "SSE data must be one line");
    let mut b = head(name, id, json.len());
    b.put_slice(json);
    b.put_slice(b"\n\n");
    b.freeze()
}

/// One event whose data line is the concatenation of `parts`, returned as
/// separate chunks so that a large shared part (a session document) is
/// written without being copied per subscriber. The chunks must be sent
/// back to back.
pub fn event_parts(name: EventName, id: Option<Offset>, parts: &[Bytes]) -> Vec<Bytes> {
    debug_assert!(
        parts.iter().all(|p| single_line(p)),
        "SSE data must be one line"
    );
    let total: usize = parts.iter().map(Bytes::len).sum();
    if total <= 64 * 1024 {
        let mut b = head(name, id, total);
        for p in parts {
            b.put_slice(p);
        }
        b.put_slice(b"\n\n");
        return vec![b.freeze()];
    }
    let mut out = Vec::with_capacity(parts.len() + 2);
    out.push(head(name, id, 0).freeze());
    out.extend(parts.iter().cloned());
    out.push(Bytes::from_static(b"\n\n"));
    out
}

/// The `update` or `delete` frame of a persisted event, with `id: <offset>`.
pub fn persisted(e: &Event) -> Bytes {
    let name = match e.kind {
        RecordKind::Deleted => EventName::Delete,
        _ => EventName::Update,
    };
    let json = serde_json::to_vec(&e.to_json()).expect("a JSON value always serializes");
    event(name, Some(e.offset), &json)
}

fn single_line(b: &[u8]) -> bool {
    !b.iter().any(|&c| c == b'\n' || c == b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ulid::Ulid;

    #[test]
    fn retry_and_ping_frames() {
        assert_eq!(&retry(2000)[..], b"retry: 2000\n\n");
        assert_eq!(&ping()[..], b": ping\n\n");
    }

    #[test]
    fn event_frame_layout() {
        assert_eq!(
            &event(EventName::Update, Some(42), br#"{"a":1}"#)[..],
            b"event: update\nid: 42\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &event(EventName::Join, None, br#"{"clients":1}"#)[..],
            b"event: join\ndata: {\"clients\":1}\n\n"
        );
    }

    #[test]
    fn parts_are_joined_or_shared() {
        let small = event_parts(
            EventName::Init,
            Some(1),
            &[Bytes::from_static(b"{\"s\":"), Bytes::from_static(b"1}")],
        );
        assert_eq!(
            small,
            vec![Bytes::from_static(
                b"event: init\nid: 1\ndata: {\"s\":1}\n\n"
            )]
        );
        let big = Bytes::from(vec![b'1'; 100_000]);
        let chunks = event_parts(
            EventName::Init,
            Some(1),
            &[
                Bytes::from_static(b"["),
                big.clone(),
                Bytes::from_static(b"]"),
            ],
        );
        assert_eq!(chunks.len(), 5);
        assert_eq!(
            chunks[2].as_ptr(),
            big.as_ptr(),
            "the shared part is not copied"
        );
        let joined: Vec<u8> = chunks.concat();
        assert!(joined.starts_with(b"event: init\nid: 1\ndata: [1"));
        assert!(joined.ends_with(b"1]\n\n"));
    }

    #[test]
    fn user_text_with_newlines_stays_inside_json() {
        let e = Event {
            offset: 7,
            session: Ulid::from_parts(1, 2),
            kind: RecordKind::Patched,
            json: Some(json!({"t": "a\nb\r\nc\rd\n\n", "u": "\u{2028}"})),
            username: "x\nevent: update\nid: 9999".into(),
            at_ms: 0,
        };
        let f = persisted(&e);
        assert!(!f.contains(&b'\r'));
        let text = std::str::from_utf8(&f).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "event: update");
        assert_eq!(lines[1], "id: 7");
        assert!(lines[2].starts_with("data: {"));
        assert_eq!(&lines[3..], ["", ""]);
        let back: serde_json::Value = serde_json::from_str(&lines[2]["data: ".len()..]).unwrap();
        assert_eq!(back, e.to_json());
    }

    #[test]
    fn delete_frame() {
        let e = Event {
            offset: 3,
            session: Ulid::from_parts(1, 2),
            kind: RecordKind::Deleted,
            json: None,
            username: "a".into(),
            at_ms: 0,
        };
        assert!(persisted(&e).starts_with(b"event: delete\nid: 3\ndata: {"));
    }
}
