//! Sessions and their state; [`Sessions::apply`] is the only home of event semantics.
//!
//! A session's `offset` is the offset of the last event applied to it (its
//! version). Each session also keeps the offsets of all its events, in order:
//! that list is the per-session index used by history, time travel (`?at=`) and
//! SSE catch-up, so none of them scans the whole log.
//!
//! Deleted sessions stay in the map as tombstones (data dropped, event offsets
//! kept) so that a later request gets 410 rather than 404 and the history stays
//! reachable for the tool.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use ulid::Ulid;

use crate::event::{Event, RecordKind};
use crate::log::Offset;

/// One session as folded from the log.
#[derive(Debug, Clone)]
pub struct SessionState {
    pub id: Ulid,
    /// The current document (`Value::Null` once deleted).
    pub data: Arc<Value>,
    /// Offset of the last event applied.
    pub offset: Offset,
    /// Offset of the `created` event.
    pub created_offset: Offset,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Offset of the tombstone, once deleted.
    pub deleted: Option<Offset>,
    /// Offsets of every event of this session, ascending. Invariant: the last
    /// element equals `offset`, the first equals `created_offset`.
    pub events: Vec<Offset>,
    /// `data` serialized as compact JSON, made on first use after each change so
    /// every SSE `init` of one version shares one buffer.
    data_json: OnceLock<bytes::Bytes>,
}

impl SessionState {
    /// `data` as compact JSON text, serialized once per version and shared.
    pub fn data_json(&self) -> bytes::Bytes {
        self.data_json
            .get_or_init(|| {
                bytes::Bytes::from(
                    serde_json::to_vec(&*self.data).expect("a JSON value always serializes"),
                )
            })
            .clone()
    }

    /// Whether the session has a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.deleted.is_some()
    }

    /// Offsets of this session's events greater than `after`, at most `limit`.
    pub fn events_after(&self, after: Option<Offset>, limit: usize) -> &[Offset] {
        let start = match after {
            None => 0,
            Some(a) => self.events.partition_point(|&o| o <= a),
        };
        let end = start.saturating_add(limit).min(self.events.len());
        &self.events[start..end]
    }
}

impl PartialEq for SessionState {
    /// Equal when they describe the same version of the same session (the
    /// serialization cache is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.data == other.data
            && self.offset == other.offset
            && self.created_offset == other.created_offset
            && self.created_at_ms == other.created_at_ms
            && self.updated_at_ms == other.updated_at_ms
            && self.deleted == other.deleted
            && self.events == other.events
    }
}

/// Why an event could not be applied: the log holds a sequence that the
/// writer's preconditions should have made impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("event at offset {offset} creates session {session}, which already exists")]
    AlreadyExists { session: Ulid, offset: Offset },
    #[error("event at offset {offset} changes session {session}, which was never created")]
    Unknown { session: Ulid, offset: Offset },
    #[error("event at offset {offset} changes session {session}, which was deleted at offset {deleted_at}")]
    AfterDelete {
        session: Ulid,
        offset: Offset,
        deleted_at: Offset,
    },
}

/// Every session ever created, keyed (and so listed) by id.
#[derive(Debug, Default, Clone)]
pub struct Sessions {
    map: BTreeMap<Ulid, SessionState>,
    live: usize,
}

impl Sessions {
    /// An empty set.
    pub fn new() -> Sessions {
        Sessions::default()
    }

    /// Applies one event: the meaning of created/replaced/patched/deleted
    /// (see [`Sessions::apply_owned`]).
    ///
    /// # Errors
    /// [`ApplyError`] when the event does not fit the session's history; the
    /// state is then unchanged.
    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        self.apply_owned(event.clone())
    }

    /// Applies one event that the caller no longer needs: its document or
    /// patch is moved into the state instead of copied (the startup fold
    /// applies every event of the log this way). The only home of event
    /// semantics.
    ///
    /// # Errors
    /// [`ApplyError`] when the event does not fit the session's history; the
    /// state is then unchanged.
    pub fn apply_owned(&mut self, event: Event) -> Result<(), ApplyError> {
        let id = event.session;
        let offset = event.offset;
        if event.kind == RecordKind::Created {
            if self.map.contains_key(&id) {
                return Err(ApplyError::AlreadyExists {
                    session: id,
                    offset,
                });
            }
            self.map.insert(
                id,
                SessionState {
                    id,
                    data: Arc::new(event.json.unwrap_or(Value::Null)),
                    offset,
                    created_offset: offset,
                    created_at_ms: event.at_ms,
                    updated_at_ms: event.at_ms,
                    deleted: None,
                    events: vec![offset],
                    data_json: OnceLock::new(),
                },
            );
            self.live += 1;
            return Ok(());
        }
        let s = self.map.get_mut(&id).ok_or(ApplyError::Unknown {
            session: id,
            offset,
        })?;
        if let Some(deleted_at) = s.deleted {
            return Err(ApplyError::AfterDelete {
                session: id,
                offset,
                deleted_at,
            });
        }
        match event.kind {
            RecordKind::Created => unreachable!("handled above"),
            RecordKind::Replaced => {
                s.data = Arc::new(event.json.unwrap_or(Value::Null));
            }
            RecordKind::Patched => {
                merge_owned(
                    Arc::make_mut(&mut s.data),
                    event.json.unwrap_or(Value::Null),
                );
            }
            RecordKind::Deleted => {
                s.data = Arc::new(Value::Null);
                s.deleted = Some(offset);
                self.live -= 1;
            }
        }
        s.offset = offset;
        s.updated_at_ms = event.at_ms;
        s.events.push(offset);
        s.data_json = OnceLock::new();
        Ok(())
    }

    /// A session by id, deleted or not.
    pub fn get(&self, id: &Ulid) -> Option<&SessionState> {
        self.map.get(id)
    }

    /// Live (not deleted) sessions with an id greater than `after`, in id order.
    pub fn live_after<'a>(
        &'a self,
        after: Option<Ulid>,
    ) -> impl Iterator<Item = &'a SessionState> + 'a {
        use std::ops::Bound;
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.map
            .range((lower, Bound::Unbounded))
            .map(|(_, s)| s)
            .filter(|s| !s.is_deleted())
    }

    /// How many sessions are live.
    pub fn live_count(&self) -> usize {
        self.live
    }
}

/// RFC 7396 JSON Merge Patch, moving the patch's members into `doc`: the
/// same rules as `json_patch::merge` (which takes the patch by reference and
/// copies every member it sets). A test below checks that both agree.
fn merge_owned(doc: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *doc = patch;
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = doc else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(&key);
        } else {
            merge_owned(map.entry(key).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(offset: Offset, id: Ulid, kind: RecordKind, json: Option<Value>) -> Event {
        Event {
            offset,
            session: id,
            kind,
            json,
            username: "u".into(),
            at_ms: offset as i64 * 1000,
        }
    }

    #[test]
    fn create_replace_patch_delete() {
        let id = Ulid::from_parts(1, 1);
        let mut s = Sessions::new();
        s.apply(&ev(0, id, RecordKind::Created, Some(json!({"a": 1}))))
            .unwrap();
        s.apply(&ev(
            3,
            id,
            RecordKind::Patched,
            Some(json!({"b": 2, "a": null})),
        ))
        .unwrap();
        let st = s.get(&id).unwrap();
        assert_eq!(*st.data, json!({"b": 2}));
        assert_eq!(st.offset, 3);
        assert_eq!(st.created_offset, 0);
        assert_eq!(st.updated_at_ms, 3000);
        assert_eq!(&st.data_json()[..], br#"{"b":2}"#);
        s.apply(&ev(5, id, RecordKind::Replaced, Some(json!([1]))))
            .unwrap();
        assert_eq!(&s.get(&id).unwrap().data_json()[..], b"[1]");
        s.apply(&ev(7, id, RecordKind::Deleted, None)).unwrap();
        let st = s.get(&id).unwrap();
        assert_eq!(st.deleted, Some(7));
        assert_eq!(st.events, vec![0, 3, 5, 7]);
        assert_eq!(s.live_count(), 0);
        assert_eq!(s.live_after(None).count(), 0);
    }

    #[test]
    fn impossible_sequences_are_refused_and_leave_state_unchanged() {
        let id = Ulid::from_parts(1, 1);
        let mut s = Sessions::new();
        assert!(matches!(
            s.apply(&ev(0, id, RecordKind::Patched, Some(json!({})))),
            Err(ApplyError::Unknown { .. })
        ));
        s.apply(&ev(1, id, RecordKind::Created, Some(json!({}))))
            .unwrap();
        assert!(matches!(
            s.apply(&ev(2, id, RecordKind::Created, Some(json!({})))),
            Err(ApplyError::AlreadyExists { .. })
        ));
        s.apply(&ev(3, id, RecordKind::Deleted, None)).unwrap();
        assert_eq!(
            s.apply(&ev(4, id, RecordKind::Replaced, Some(json!(1)))),
            Err(ApplyError::AfterDelete {
                session: id,
                offset: 4,
                deleted_at: 3
            })
        );
        assert_eq!(s.get(&id).unwrap().events, vec![1, 3]);
    }

    #[test]
    fn events_after_uses_global_offsets() {
        let id = Ulid::from_parts(1, 1);
        let mut s = Sessions::new();
        s.apply(&ev(2, id, RecordKind::Created, Some(json!({}))))
            .unwrap();
        for o in [5, 9, 12] {
            s.apply(&ev(o, id, RecordKind::Patched, Some(json!({"o": o}))))
                .unwrap();
        }
        let st = s.get(&id).unwrap();
        assert_eq!(st.events_after(None, 100), &[2, 5, 9, 12]);
        assert_eq!(st.events_after(Some(5), 100), &[9, 12]);
        assert_eq!(st.events_after(Some(6), 1), &[9]);
        assert_eq!(st.events_after(Some(12), 100), &[] as &[Offset]);
    }

    #[test]
    fn listing_is_in_id_order_and_skips_deleted() {
        let (a, b, c) = (
            Ulid::from_parts(1, 1),
            Ulid::from_parts(2, 1),
            Ulid::from_parts(3, 1),
        );
        let mut s = Sessions::new();
        for (o, id) in [(0, c), (1, a), (2, b)] {
            s.apply(&ev(o, id, RecordKind::Created, Some(json!({}))))
                .unwrap();
        }
        s.apply(&ev(3, b, RecordKind::Deleted, None)).unwrap();
        let ids: Vec<Ulid> = s.live_after(None).map(|s| s.id).collect();
        assert_eq!(ids, vec![a, c]);
        let ids: Vec<Ulid> = s.live_after(Some(a)).map(|s| s.id).collect();
        assert_eq!(ids, vec![c]);
    }

    #[test]
    fn merge_owned_agrees_with_json_patch() {
        let docs = [
            json!({"a": 1, "b": {"c": [1, 2], "d": "x"}, "e": null}),
            json!([1, 2]),
            json!("s"),
            Value::Null,
            json!({}),
        ];
        let patches = [
            json!({"a": null, "b": {"c": null, "n": {"deep": true}}, "z": [null]}),
            json!({"b": 7}),
            json!([{"a": 1}]),
            json!(null),
            json!({"e": {"f": null}}),
            json!({}),
            json!("t"),
        ];
        for d in &docs {
            for p in &patches {
                let mut want = d.clone();
                json_patch::merge(&mut want, p);
                let mut got = d.clone();
                merge_owned(&mut got, p.clone());
                assert_eq!(got, want, "{d} + {p}");
            }
        }
    }
}
