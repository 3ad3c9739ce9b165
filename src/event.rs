//! What a record body means to a session.
//!
//! A record in the log (see [`crate::log::record`]) carries a session key, a
//! [`RecordKind`] and an opaque body. This module owns that body: the bincode
//! encoding of [`EventBody`] and the assembled [`Event`] that the fold, the API
//! and the SSE streams work with. JSON documents and patches are stored as JSON
//! *text* inside the body, because bincode cannot carry `serde_json::Value`
//! (see `log-format.md`, "Event body").

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

pub use crate::log::record::RecordKind;
use crate::log::Offset;

/// The bincode configuration of an event body. Part of the on-disk format:
/// little-endian, variable-length integers, and a decode limit so a hostile
/// length prefix can never make bincode allocate more than a record can hold.
pub const BINCODE_CONFIG: Configuration<LittleEndian, Varint, Limit<{ MAX_EVENT_BODY }>> =
    bincode::config::standard().with_limit::<{ MAX_EVENT_BODY }>();

/// Largest encoded event body accepted on decode (equals the record body limit).
pub const MAX_EVENT_BODY: usize = crate::log::record::MAX_BODY_LEN as usize;

/// The body of a record, as stored.
///
/// Field order is the wire order; never reorder or insert fields without
/// bumping the format version in `log-format.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    /// JSON text: the new document (`created`, `replaced`), the RFC 7396 merge
    /// patch (`patched`), or empty (`deleted`).
    pub json: String,
    /// Who made the change (may be empty).
    pub username: String,
    /// Wall-clock time of the append, milliseconds since the Unix epoch (UTC).
    pub at_ms: i64,
}

/// Why a record body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("event body does not decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("event body has {trailing} trailing bytes after the event")]
    Trailing { trailing: usize },
    #[error("event body carries invalid JSON text: {0}")]
    Json(#[from] serde_json::Error),
}

impl EventBody {
    /// Encodes the body with [`BINCODE_CONFIG`].
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, BINCODE_CONFIG)
            .expect("encoding strings and integers into a Vec cannot fail")
    }

    /// Decodes a body, refusing trailing bytes and anything over the limit.
    ///
    /// # Errors
    /// [`BodyError`] when the bytes are not exactly one encoded body.
    pub fn decode(bytes: &[u8]) -> Result<Self, BodyError> {
        let (body, used): (EventBody, usize) =
            bincode::serde::decode_from_slice(bytes, BINCODE_CONFIG)?;
        if used != bytes.len() {
            return Err(BodyError::Trailing {
                trailing: bytes.len() - used,
            });
        }
        Ok(body)
    }
}

/// One event of one session, with its place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub offset: Offset,
    pub session: Ulid,
    pub kind: RecordKind,
    /// Document for `created`/`replaced`, merge patch for `patched`, `None` for `deleted`.
    pub json: Option<serde_json::Value>,
    pub username: String,
    pub at_ms: i64,
}

impl Event {
    /// Assembles an event from a record's header fields and its body bytes.
    ///
    /// # Errors
    /// [`BodyError`] when the body does not decode or its JSON text is invalid.
    pub fn from_record(
        offset: Offset,
        key: u128,
        kind: RecordKind,
        body: &[u8],
    ) -> Result<Self, BodyError> {
        let body = EventBody::decode(body)?;
        let json = match kind {
            RecordKind::Deleted => None,
            _ => Some(serde_json::from_str(&body.json)?),
        };
        Ok(Event {
            offset,
            session: Ulid(key),
            kind,
            json,
            username: body.username,
            at_ms: body.at_ms,
        })
    }

    /// The event's time as RFC 3339 UTC with millisecond precision.
    pub fn at_rfc3339(&self) -> String {
        rfc3339_millis(self.at_ms)
    }

    /// The event object of the API and of SSE `update`/`delete` frames:
    /// `{"offset","session","kind","data"?,"patch"?,"username","at"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("offset".into(), self.offset.into());
        obj.insert("session".into(), self.session.to_string().into());
        obj.insert("kind".into(), self.kind.as_str().into());
        match self.kind {
            RecordKind::Created | RecordKind::Replaced => {
                obj.insert("data".into(), self.json.clone().unwrap_or_default());
            }
            RecordKind::Patched => {
                obj.insert("patch".into(), self.json.clone().unwrap_or_default());
            }
            RecordKind::Deleted => {}
        }
        obj.insert("username".into(), self.username.clone().into());
        obj.insert("at".into(), self.at_rfc3339().into());
        serde_json::Value::Object(obj)
    }
}

/// Milliseconds since the epoch → RFC 3339 UTC, e.g. `2026-12-03T16:45:50.123Z`.
pub fn rfc3339_millis(at_ms: i64) -> String {
    let nanos = i128::from(at_ms) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format)
        .expect("a UTC date in range formats as RFC 3339")
}

/// Current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips() {
        let body = EventBody {
            json: r#"{"a":[1,null,"x\ny"]}"#.into(),
            username: "ana".into(),
            at_ms: 1_764_780_350_123,
        };
        assert_eq!(EventBody::decode(&body.encode()).unwrap(), body);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = EventBody {
            json: "{}".into(),
            username: String::new(),
            at_ms: 0,
        }
        .encode();
        bytes.push(0);
        assert!(matches!(
            EventBody::decode(&bytes),
            Err(BodyError::Trailing { trailing: 1 })
        ));
    }

    #[test]
    fn hostile_length_prefix_is_an_error_not_an_abort() {
        // varint marker 0xFD = u64 follows; claims 2^40 bytes of string.
        let bytes = [0xFD, 0, 0, 0, 0, 0, 1, 0, 0];
        assert!(EventBody::decode(&bytes).is_err());
    }

    #[test]
    fn times_format_as_rfc3339_utc() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_500), "1970-01-01T00:00:01.500Z");
    }
}
