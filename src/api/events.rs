//! `GET /sessions/{id}/events` (history from the log) and `GET /events/{id}`
//! (the SSE stream): checks the id, username and resume id, then hands the
//! stream to [`crate::sse`].

use poem::http::header;
use poem::{Body, IntoResponse, Response};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde_json::Value;

use super::errors::ApiError;
use super::{check_limit, check_username, parse_id, truncate, ApiTags, AppState};
use crate::event::{Event, RecordKind};
use crate::fold::read_events;
use crate::log::Offset;
use crate::sse::resume::{self, parse_offset};

/// The events API.
pub struct EventsApi {
    pub state: AppState,
}

/// What an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum EventKind {
    Created,
    Replaced,
    Patched,
    Deleted,
}

/// One event of a session, as in history pages and SSE `update`/`delete` data.
#[derive(Debug, Clone, Object)]
pub struct EventObject {
    /// The event's offset in the log (global, dense, never reused).
    pub offset: u64,
    /// Session id (ULID).
    pub session: String,
    pub kind: EventKind,
    /// The new document (`created`, `replaced`).
    #[oai(skip_serializing_if_is_none)]
    pub data: Option<Value>,
    /// The RFC 7396 merge patch (`patched`).
    #[oai(skip_serializing_if_is_none)]
    pub patch: Option<Value>,
    /// Who made the change.
    pub username: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

impl EventObject {
    /// The API form of an event (same shape as [`Event::to_json`]).
    pub fn of(e: &Event) -> EventObject {
        let (kind, data, patch) = match e.kind {
            RecordKind::Created => (EventKind::Created, e.json.clone(), None),
            RecordKind::Replaced => (EventKind::Replaced, e.json.clone(), None),
            RecordKind::Patched => (EventKind::Patched, None, e.json.clone()),
            RecordKind::Deleted => (EventKind::Deleted, None, None),
        };
        EventObject {
            offset: e.offset,
            session: e.session.to_string(),
            kind,
            data,
            patch,
            username: e.username.clone(),
            at: e.at_rfc3339(),
        }
    }
}

/// A page of a session's history, oldest first.
#[derive(Debug, Clone, Object)]
pub struct EventPage {
    pub events: Vec<EventObject>,
    /// Pass as `after` to get the next page; `null` when there is no more.
    #[oai(nullable)]
    pub next: Option<u64>,
}

/// A `text/event-stream` response body. Frames, in order: `retry: <ms>`;
/// `event: init` (`id:` = the session's offset; data `{"session", "username",
/// "clients", "usernames"}`) unless resuming; then `event: update` /
/// `event: delete` with `id: <offset>` and an event object as data;
/// `event: join` / `event: leave` without `id:` (data `{"usernames",
/// "clients"}`); `: ping` comments every `HEARTBEAT_SECS`.
pub struct SseBody(Body);

impl Payload for SseBody {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            items: Some(Box::new(EventObject::schema_ref())),
            ..MetaSchema::new_with_format("array", "event-stream")
        }))
    }

    fn register(registry: &mut Registry) {
        EventObject::register(registry);
    }
}

impl IntoResponse for SseBody {
    fn into_response(self) -> Response {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache, no-transform")
            .header("X-Accel-Buffering", "no")
            .body(self.0)
    }
}

#[derive(ApiResponse)]
pub enum StreamResponse {
    /// The event stream (Server-Sent Events). Resume with `Last-Event-ID`.
    #[oai(status = 200)]
    Ok(SseBody),
}

#[OpenApi(tag = "ApiTags::Events")]
impl EventsApi {
    /// A session's history
    ///
    /// The session's events from the log, oldest first, with offsets greater
    /// than `after`; `limit` per page (default 100, at most 1000). Deleted
    /// sessions keep their history (the last event is `deleted`).
    #[oai(path = "/sessions/:id/events", method = "get")]
    async fn history(
        &self,
        /// Session id (ULID).
        id: Path<String>,
        /// Return events with an offset greater than this.
        after: Query<Option<String>>,
        /// Page size, 1..=1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u64>>,
    ) -> Result<Json<EventPage>, ApiError> {
        let id = parse_id(&id.0)?;
        let limit = check_limit(limit.0)?;
        let after = match after.0.as_deref() {
            None => None,
            Some(a) => Some(parse_offset(a).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_offset",
                    format!(
                        "after={:?} is not an offset: use plain decimal digits",
                        truncate(a, 64)
                    ),
                )
            })?),
        };
        let (offsets, more) = {
            let sessions = self.state.streams.sessions.read().expect("sessions lock");
            let s = sessions.get(&id).ok_or_else(|| ApiError::not_found(id))?;
            let page = s.events_after(after, limit + 1);
            let more = page.len() > limit;
            (page[..page.len().min(limit)].to_vec(), more)
        };
        let log = self.state.streams.log.clone();
        let read: Vec<Offset> = offsets.clone();
        let events = tokio::task::spawn_blocking(move || read_events(&log, &read))
            .await
            .map_err(|e| ApiError::unavailable(format!("history read failed: {e}")))?
            .map_err(|e| {
                tracing::error!(session = %id, error = %e, "history read failed");
                ApiError::unavailable("the log could not be read; try again later")
            })?;
        let next = if more { offsets.last().copied() } else { None };
        Ok(Json(EventPage {
            events: events.iter().map(EventObject::of).collect(),
            next,
        }))
    }

    /// Subscribe to a session (SSE)
    ///
    /// Streams `init` (or, when resuming, every event after `Last-Event-ID`),
    /// then every change live, plus `join`/`leave` presence events and
    /// `: ping` heartbeats. Resume by sending the last `id:` seen as the
    /// `Last-Event-ID` header (browsers do this on reconnect) or as
    /// `?lastEventId=`; a malformed, future or too old id gets a fresh `init`.
    #[oai(path = "/events/:id", method = "get")]
    async fn stream(
        &self,
        /// Session id (ULID).
        id: Path<String>,
        /// Your name, shown to the others (at most 64 characters, no control characters).
        username: Query<Option<String>>,
        /// Resume after this offset, for clients that cannot set headers.
        #[oai(name = "lastEventId")]
        last_event_id_query: Query<Option<String>>,
        /// Resume after this offset (wins over `lastEventId`).
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
        req: &poem::Request,
    ) -> Result<StreamResponse, ApiError> {
        let id = parse_id(&id.0)?;
        let username = check_username(username.0)?;
        let streams = &self.state.streams;
        let created = {
            let sessions = streams.sessions.read().expect("sessions lock");
            let s = sessions.get(&id).ok_or_else(|| ApiError::not_found(id))?;
            if let Some(deleted_at) = s.deleted {
                return Err(ApiError::gone(id, deleted_at));
            }
            s.created_offset
        };
        let asked = resume::requested(last_event_id.0.as_deref(), last_event_id_query.0.as_deref());
        let stats = streams.log.stats();
        let from = resume::decide(
            asked,
            created,
            stats.first_offset,
            streams.log.durable_end(),
        );
        let closed = req
            .remote_addr()
            .as_socket_addr()
            .and_then(|peer| self.state.connections.closed(peer));
        let stream = streams.open(id, username, from, closed);
        Ok(StreamResponse::Ok(SseBody(Body::from_bytes_stream(stream))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem_openapi::types::ToJSON;
    use serde_json::json;
    use ulid::Ulid;

    #[test]
    fn event_object_matches_the_sse_event_json() {
        for (kind, json) in [
            (RecordKind::Created, Some(json!({"a": 1}))),
            (RecordKind::Replaced, Some(Value::Null)),
            (RecordKind::Patched, Some(json!({"a": null}))),
            (RecordKind::Deleted, None),
        ] {
            let e = Event {
                offset: 9,
                session: Ulid::from_parts(5, 6),
                kind,
                json,
                username: "ana".into(),
                at_ms: 1_000,
            };
            assert_eq!(EventObject::of(&e).to_json(), Some(e.to_json()), "{kind:?}");
        }
    }
}
