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

use ulid::Ulid;

use crate::event::{rfc3339_millis, BodyError, Event, EventBody};
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

/// Size of the slices a large shared part is sent in.
pub const SHARED_SLICE: usize = 64 * 1024;

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
    let mut out = Vec::with_capacity(parts.len() + 2 + total / SHARED_SLICE);
    out.push(head(name, id, 0).freeze());
    for p in parts {
        // Zero-copy slices of the shared buffer: the HTTP layer copies what
        // it is given into its write buffer (poem's boxed connections are
        // not vectored), so small slices keep that copy small per
        // connection instead of one whole document per subscriber.
        let mut at = 0;
        while at < p.len() {
            let end = (at + SHARED_SLICE).min(p.len());
            out.push(p.slice(at..end));
            at = end;
        }
    }
    out.push(Bytes::from_static(b"\n\n"));
    out
}

/// The `update` or `delete` frame of a persisted event, with `id: <offset>`.
///
/// The data is the event object of [`Event::to_json`], written field by
/// field rather than through a `serde_json::Map` (no copy of the document).
pub fn persisted(e: &Event) -> Bytes {
    let mut json = Vec::with_capacity(256);
    let doc = |out: &mut Vec<u8>| {
        let v = e.json.as_ref().unwrap_or(&serde_json::Value::Null);
        serde_json::to_writer(out, v).expect("a JSON value always serializes");
    };
    event_object(
        &mut json,
        e.offset,
        e.session,
        e.kind,
        doc,
        &e.username,
        e.at_ms,
    );
    event(event_name(e.kind), Some(e.offset), &json)
}

/// The frame of a record read back from the log, made without parsing its
/// JSON: the stored text is embedded as it is. It is valid, compact JSON
/// because every record below the durable end was either folded (parsed) at
/// startup or serialized by this server; a text with a line break (a foreign
/// producer's pretty-printing) is parsed and re-serialized instead.
/// Byte-for-byte the same as [`persisted`] of the decoded event.
///
/// # Errors
/// [`BodyError`] when the body does not decode (or its JSON, when parsed).
pub fn persisted_record(
    offset: Offset,
    session: Ulid,
    kind: RecordKind,
    body: &[u8],
) -> Result<Bytes, BodyError> {
    let body = EventBody::decode(body)?;
    // Stored JSON on one line goes out as it is; anything else is re-serialized
    // compactly first, so no raw newline ever reaches a `data:` line.
    let compact;
    let doc: &[u8] = if single_line(body.json.as_bytes()) {
        body.json.as_bytes()
    } else {
        let v: serde_json::Value = serde_json::from_str(&body.json)?;
        compact = serde_json::to_vec(&v).expect("a JSON value always serializes");
        &compact
    };
    let mut json = Vec::with_capacity(doc.len() + 160);
    event_object(
        &mut json,
        offset,
        session,
        kind,
        |out: &mut Vec<u8>| out.extend_from_slice(doc),
        &body.username,
        body.at_ms,
    );
    Ok(event(event_name(kind), Some(offset), &json))
}

fn event_name(kind: RecordKind) -> EventName {
    match kind {
        RecordKind::Deleted => EventName::Delete,
        _ => EventName::Update,
    }
}

/// `{"offset","session","kind","data"|"patch","username","at"}` into `out`,
/// with the document or patch written by `doc` (nothing for a delete).
fn event_object(
    out: &mut Vec<u8>,
    offset: Offset,
    session: Ulid,
    kind: RecordKind,
    doc: impl FnOnce(&mut Vec<u8>),
    username: &str,
    at_ms: i64,
) {
    use std::io::Write as _;
    let to_vec = "writing into a Vec cannot fail";
    write!(
        out,
        "{{\"offset\":{offset},\"session\":\"{session}\",\"kind\":\"{}\"",
        kind.as_str()
    )
    .expect(to_vec);
    match kind {
        RecordKind::Created | RecordKind::Replaced => {
            out.extend_from_slice(b",\"data\":");
            doc(out);
        }
        RecordKind::Patched => {
            out.extend_from_slice(b",\"patch\":");
            doc(out);
        }
        RecordKind::Deleted => {}
    }
    out.extend_from_slice(b",\"username\":");
    serde_json::to_writer(&mut *out, username).expect(to_vec);
    write!(out, ",\"at\":\"{}\"}}", rfc3339_millis(at_ms)).expect(to_vec);
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
        assert_eq!(
            chunks.len(),
            6,
            "head, [, two slices of the shared part, ], end"
        );
        assert_eq!(chunks[2].len(), SHARED_SLICE);
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
    fn record_frames_equal_event_frames() {
        let docs = [
            Some(json!({"t": "a\nb", "n": [1, 2.5, null], "o": {"z": 1, "a": true}})),
            Some(json!("\u{2028}")),
            Some(serde_json::Value::Null),
            None,
        ];
        for kind in [
            RecordKind::Created,
            RecordKind::Replaced,
            RecordKind::Patched,
            RecordKind::Deleted,
        ] {
            for doc in &docs {
                let json = match kind {
                    RecordKind::Deleted => None,
                    _ => Some(doc.clone().unwrap_or_default()),
                };
                let text = json.as_ref().map(|v| v.to_string()).unwrap_or_default();
                let body = EventBody {
                    json: text,
                    username: "ana \"x\"\n".into(),
                    at_ms: 1_764_780_350_123,
                };
                let e = Event::from_record(9, 5, kind, &body.encode()).unwrap();
                let fast = persisted_record(9, Ulid(5), kind, &body.encode()).unwrap();
                assert_eq!(fast, persisted(&e), "{kind:?} {doc:?}");
                let data = &fast[fast.iter().position(|&b| b == b'{').unwrap()..fast.len() - 2];
                let back: serde_json::Value = serde_json::from_slice(data).unwrap();
                assert_eq!(back, e.to_json());
            }
        }
        // A pretty-printed document (not from this server) is re-serialized.
        let body = EventBody {
            json: "{\n  \"a\": 1\n}".into(),
            username: String::new(),
            at_ms: 0,
        };
        let f = persisted_record(1, Ulid(5), RecordKind::Replaced, &body.encode()).unwrap();
        assert!(f.ends_with(
            b"\"data\":{\"a\":1},\"username\":\"\",\"at\":\"1970-01-01T00:00:00.000Z\"}\n\n"
        ));
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
