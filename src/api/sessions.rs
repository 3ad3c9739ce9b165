//! `/sessions` and `/sessions/{id}`: create, list, read (now or as of an
//! offset), replace, merge-patch and delete.
//!
//! A write is encoded into an event body and appended with a precondition
//! that the log's single writer checks in log order (`Absent` for a create,
//! `Live` or `LiveAt(If-Match)` for a change). With `FSYNC=always` (and
//! `never`), by the time `append` returns the event is durable and already
//! applied to the in-memory state by the commit hook, so a client that got
//! its 200 reads its own write. With `FSYNC=interval:<ms>` the log
//! acknowledges before the periodic sync and applies and publishes at the
//! sync, so a write becomes visible at most one interval after its 200.

use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;
use ulid::Ulid;

use super::errors::ApiError;
use super::{check_limit, check_username, parse_id, truncate, ApiTags, AppState};
use crate::event::{now_ms, rfc3339_millis, EventBody, RecordKind};
use crate::fold::{state_at, SessionState, StateAt};
use crate::log::{AppendEntry, Offset, Precondition};
use crate::sse::resume::parse_offset;

/// The sessions resource.
pub struct SessionsApi {
    pub state: AppState,
}

/// A write's result: the session and the offset of its new event.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Written {
    /// Session id (ULID).
    pub id: String,
    /// Offset of the event just appended: the session's new version.
    pub offset: u64,
}

impl poem_openapi::types::Example for Written {
    fn example() -> Written {
        Written {
            id: "01KBJ3C4E1GM0W8ZJ7Q9Y2V6XH".into(),
            offset: 42,
        }
    }
}

/// A session's current state.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", example)]
pub struct SessionView {
    /// Session id (ULID).
    pub id: String,
    /// The document: any JSON value.
    pub data: Value,
    /// Offset of the last event applied: the session's version, also its ETag.
    pub offset: u64,
    /// When the session was created (RFC 3339, UTC).
    pub created_at: String,
    /// When the last event was applied (RFC 3339, UTC).
    pub updated_at: String,
    /// SSE streams open on this session now.
    pub clients: u64,
}

impl poem_openapi::types::Example for SessionView {
    fn example() -> SessionView {
        SessionView {
            id: "01KBJ3C4E1GM0W8ZJ7Q9Y2V6XH".into(),
            data: serde_json::json!({"title": "Standup", "notes": ["a", "b"]}),
            offset: 42,
            created_at: "2026-12-03T16:45:50.123Z".into(),
            updated_at: "2026-12-03T16:47:02.004Z".into(),
            clients: 2,
        }
    }
}

impl SessionView {
    fn of(s: &SessionState, clients: usize) -> SessionView {
        SessionView {
            id: s.id.to_string(),
            data: (*s.data).clone(),
            offset: s.offset,
            created_at: rfc3339_millis(s.created_at_ms),
            updated_at: rfc3339_millis(s.updated_at_ms),
            clients: clients as u64,
        }
    }
}

/// A session in a listing (without its document).
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct SessionSummary {
    /// Session id (ULID).
    pub id: String,
    /// Offset of the last event applied.
    pub offset: u64,
    /// When the session was created (RFC 3339, UTC).
    pub created_at: String,
    /// When the last event was applied (RFC 3339, UTC).
    pub updated_at: String,
    /// SSE streams open on this session now.
    pub clients: u64,
}

/// A page of live sessions in id (creation) order.
#[derive(Debug, Clone, Object)]
pub struct SessionList {
    pub sessions: Vec<SessionSummary>,
    /// Pass as `after` to get the next page; `null` on the last page.
    #[oai(nullable)]
    pub next: Option<String>,
}

#[derive(ApiResponse)]
pub enum CreateResponse {
    /// Created. `Location` is the session's URL.
    #[oai(status = 201)]
    Created(Json<Written>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum GetResponse {
    /// The session. `ETag` is `"<offset>"`, usable in `If-Match`.
    #[oai(status = 200)]
    Ok(Json<SessionView>, #[oai(header = "ETag")] String),
}

#[derive(ApiResponse)]
pub enum WriteResponse {
    /// Applied. `ETag` is the new `"<offset>"`.
    #[oai(status = 200)]
    Ok(Json<Written>, #[oai(header = "ETag")] String),
}

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Deleted: a tombstone was appended; subscribers got `delete` and their streams ended.
    #[oai(status = 204)]
    Deleted(#[oai(header = "ETag")] String),
}

/// Parses `If-Match`: `"<offset>"` or `*`.
fn precondition(if_match: Option<String>) -> Result<Precondition, ApiError> {
    let Some(v) = if_match else {
        return Ok(Precondition::Live);
    };
    let v = v.trim();
    if v == "*" {
        return Ok(Precondition::Live);
    }
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(parse_offset)
        .map(Precondition::LiveAt)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_if_match",
                format!(
                    "If-Match {:?} is not valid: use the session's ETag, a quoted offset such as \"42\", or *",
                    truncate(v, 64)
                ),
            )
        })
}

impl SessionsApi {
    /// PUT and PATCH: check the id, username and `If-Match`, then append.
    async fn write(
        &self,
        kind: RecordKind,
        id: &str,
        username: Option<String>,
        if_match: Option<String>,
        body: &Value,
    ) -> Result<WriteResponse, ApiError> {
        let id = parse_id(id)?;
        let username = check_username(username)?;
        let pre = precondition(if_match)?;
        let offset = self.append(id, kind, Some(body), username, pre).await?;
        Ok(WriteResponse::Ok(
            Json(Written {
                id: id.to_string(),
                offset,
            }),
            format!("\"{offset}\""),
        ))
    }

    async fn append(
        &self,
        id: Ulid,
        kind: RecordKind,
        json: Option<&Value>,
        username: String,
        precondition: Precondition,
    ) -> Result<Offset, ApiError> {
        let body = EventBody {
            json: json
                .map(|v| serde_json::to_string(v).expect("a JSON value always serializes"))
                .unwrap_or_default(),
            username,
            at_ms: now_ms(),
        }
        .encode();
        self.state
            .streams
            .log
            .append(AppendEntry {
                key: id.0,
                kind,
                body,
                precondition,
            })
            .await
            .map_err(|e| ApiError::from_append(id, e))
    }

    fn view(&self, id: Ulid) -> Result<SessionView, ApiError> {
        let clients = self.state.streams.presence.snapshot(&id).clients;
        let sessions = self.state.streams.sessions.read().expect("sessions lock");
        let s = sessions.get(&id).ok_or_else(|| ApiError::not_found(id))?;
        if let Some(deleted_at) = s.deleted {
            return Err(ApiError::gone(id, deleted_at));
        }
        Ok(SessionView::of(s, clients))
    }

    async fn view_at(&self, id: Ulid, at: &str) -> Result<SessionView, ApiError> {
        let bad = |why: String| ApiError::bad_request("invalid_offset", why);
        let at = parse_offset(at).ok_or_else(|| {
            bad(format!(
                "at={:?} is not an offset: use plain decimal digits",
                truncate(at, 64)
            ))
        })?;
        let log = self.state.streams.log.clone();
        let end = log.durable_end();
        if at >= end {
            return Err(bad(format!(
                "at={at} is beyond the end of the log (the next offset is {end})"
            )));
        }
        let events: Vec<Offset> = {
            let sessions = self.state.streams.sessions.read().expect("sessions lock");
            let s = sessions.get(&id).ok_or_else(|| ApiError::not_found(id))?;
            s.events[..s.events.partition_point(|&o| o <= at)].to_vec()
        };
        let folded = tokio::task::spawn_blocking(move || state_at(&log, id, &events, at))
            .await
            .map_err(|e| ApiError::unavailable(format!("time travel failed: {e}")))?
            .map_err(|e| {
                tracing::error!(session = %id, at, error = %e, "time travel read failed");
                ApiError::unavailable("the log could not be read; try again later")
            })?;
        let clients = self.state.streams.presence.snapshot(&id).clients;
        match folded {
            StateAt::NotYetCreated => Err(ApiError::NotFound(poem_openapi::payload::Json(
                super::errors::ErrorBody {
                    error: "session_not_found".into(),
                    message: format!("session {id} did not exist yet at offset {at}"),
                },
            ))),
            StateAt::Deleted { deleted_at } => Err(ApiError::gone(id, deleted_at)),
            StateAt::Live(s) => Ok(SessionView::of(&s, clients)),
        }
    }
}

#[OpenApi(tag = "ApiTags::Sessions")]
impl SessionsApi {
    /// Create a session
    ///
    /// The body is the initial document: any JSON value (an empty body means
    /// `{}`). Returns the new id and the offset of its `created` event.
    #[oai(path = "/sessions", method = "post")]
    async fn create(
        &self,
        /// Who creates it (at most 64 characters, no control characters).
        username: Query<Option<String>>,
        /// The initial document (optional: no body means `{}`).
        body: Json<Option<Value>>,
    ) -> Result<CreateResponse, ApiError> {
        let username = check_username(username.0)?;
        // `Option` only marks the body optional in the spec: an empty body
        // arrives here as `{}` (see `api`), and `null` decodes to `None`.
        let doc = body.0.unwrap_or(Value::Null);
        let id = Ulid::generate();
        let offset = self
            .append(
                id,
                RecordKind::Created,
                Some(&doc),
                username,
                Precondition::Absent,
            )
            .await?;
        Ok(CreateResponse::Created(
            Json(Written {
                id: id.to_string(),
                offset,
            }),
            format!("/sessions/{id}"),
        ))
    }

    /// List sessions
    ///
    /// Live sessions in id (creation) order, `limit` per page (default 100,
    /// at most 1000); pass the previous page's `next` as `after`.
    #[oai(path = "/sessions", method = "get")]
    async fn list(
        &self,
        /// Page size, 1..=1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u64>>,
        /// Return sessions whose id is greater than this one.
        after: Query<Option<String>>,
    ) -> Result<Json<SessionList>, ApiError> {
        let limit = check_limit(limit.0)?;
        let after = after.0.as_deref().map(parse_id).transpose()?;
        let presence = self.state.streams.presence.all();
        let sessions = self.state.streams.sessions.read().expect("sessions lock");
        let mut page: Vec<SessionSummary> = sessions
            .live_after(after)
            .take(limit + 1)
            .map(|s| SessionSummary {
                id: s.id.to_string(),
                offset: s.offset,
                created_at: rfc3339_millis(s.created_at_ms),
                updated_at: rfc3339_millis(s.updated_at_ms),
                clients: presence.get(&s.id).map_or(0, |p| p.clients) as u64,
            })
            .collect();
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|s| s.id.clone())
        } else {
            None
        };
        Ok(Json(SessionList {
            sessions: page,
            next,
        }))
    }

    /// Get a session
    ///
    /// The current state, or with `at` the state as of that log offset (time
    /// travel: the session's events up to and including `at`).
    #[oai(path = "/sessions/:id", method = "get")]
    async fn get(
        &self,
        /// Session id (ULID).
        id: Path<String>,
        /// A log offset: return the state as of this offset.
        at: Query<Option<String>>,
    ) -> Result<GetResponse, ApiError> {
        let id = parse_id(&id.0)?;
        let view = match at.0 {
            None => self.view(id)?,
            Some(at) => self.view_at(id, &at).await?,
        };
        let etag = format!("\"{}\"", view.offset);
        Ok(GetResponse::Ok(Json(view), etag))
    }

    /// Replace a session's document
    ///
    /// The body becomes the new document. With `If-Match: "<offset>"` the
    /// write only happens if the session is still at that offset (else 412).
    #[oai(path = "/sessions/:id", method = "put")]
    async fn replace(
        &self,
        /// Session id (ULID).
        id: Path<String>,
        /// Who writes (at most 64 characters, no control characters).
        username: Query<Option<String>>,
        /// `"<offset>"` (the ETag) or `*`.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        /// The new document.
        body: Json<Value>,
    ) -> Result<WriteResponse, ApiError> {
        self.write(RecordKind::Replaced, &id.0, username.0, if_match.0, &body.0)
            .await
    }

    /// Merge-patch a session's document
    ///
    /// Applies the body as a JSON Merge Patch (RFC 7396): members set to
    /// `null` are removed, objects merge, anything else replaces. Send it as
    /// `application/merge-patch+json` or `application/json`.
    #[oai(path = "/sessions/:id", method = "patch")]
    async fn patch(
        &self,
        /// Session id (ULID).
        id: Path<String>,
        /// Who writes (at most 64 characters, no control characters).
        username: Query<Option<String>>,
        /// `"<offset>"` (the ETag) or `*`.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        /// The merge patch.
        body: Json<Value>,
    ) -> Result<WriteResponse, ApiError> {
        self.write(RecordKind::Patched, &id.0, username.0, if_match.0, &body.0)
            .await
    }

    /// Delete a session
    ///
    /// Appends a tombstone. Subscribers receive `delete` and their streams
    /// end; later requests for the session get 410.
    #[oai(path = "/sessions/:id", method = "delete")]
    async fn delete(
        &self,
        /// Session id (ULID).
        id: Path<String>,
        /// Who deletes (at most 64 characters, no control characters).
        username: Query<Option<String>>,
        /// `"<offset>"` (the ETag) or `*`.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> Result<DeleteResponse, ApiError> {
        let id = parse_id(&id.0)?;
        let username = check_username(username.0)?;
        let pre = precondition(if_match.0)?;
        let offset = self
            .append(id, RecordKind::Deleted, None, username, pre)
            .await?;
        Ok(DeleteResponse::Deleted(format!("\"{offset}\"")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        assert_eq!(precondition(None).unwrap(), Precondition::Live);
        assert_eq!(precondition(Some("*".into())).unwrap(), Precondition::Live);
        assert_eq!(
            precondition(Some("\"12\"".into())).unwrap(),
            Precondition::LiveAt(12)
        );
        for bad in ["12", "W/\"12\"", "\"x\"", "\"-1\"", ""] {
            assert!(precondition(Some(bad.into())).is_err(), "{bad:?}");
        }
    }
}
