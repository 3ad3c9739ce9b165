//! The HTTP API: the OpenAPI service built from [`sessions::SessionsApi`],
//! [`events::EventsApi`] and [`status::StatusApi`], plus what wraps it.
//!
//! Wrapping, outermost first:
//! - CORS (any origin unless `CORS_ORIGINS` restricts it);
//! - [`errors::normalize`]: poem's own rejections become `{"error","message"}`;
//! - the body limit ([`read_body`]): the whole body is read here, up to
//!   `MAX_BODY_BYTES`, whether or not it has a `Content-Length` (chunked
//!   uploads included), so poem-openapi's `Json` never reads an unbounded
//!   body. It also gives an empty POST body the meaning `{}` and refuses an
//!   empty PUT/PATCH body (poem-openapi would read it as `null`, which is a
//!   legitimate document and merge patch).
//!
//! `/openapi.json` and the Swagger UI at `/docs` sit beside the service; the
//! API itself is mounted at the root because the paths are the contract.

pub mod errors;
pub mod events;
pub mod sessions;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use poem::http::{header, Method, StatusCode};
use poem::middleware::{CatchPanic, Cors};
use poem::web::Json as PoemJson;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::{OpenApiService, Tags};
use ulid::Ulid;

use crate::config::Config;
use crate::sse::Streams;
use errors::ApiError;

/// Longest accepted username, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;
/// The username of clients and writers that give none.
pub const DEFAULT_USERNAME: &str = "anonymous";

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub streams: Streams,
    /// Close tokens of the open connections, so streams end when their
    /// client goes away.
    pub connections: Arc<crate::conn::Connections>,
    pub config: Arc<Config>,
    pub started: Instant,
}

#[derive(Tags)]
enum ApiTags {
    /// Create, read, change and delete sessions.
    Sessions,
    /// A session's history and its live event stream.
    Events,
    /// Server, log and presence figures.
    Status,
}

/// The service, so that tests and the server agree on the spec.
pub fn service(
    state: &AppState,
) -> OpenApiService<(sessions::SessionsApi, events::EventsApi, status::StatusApi), ()> {
    OpenApiService::new(
        (
            sessions::SessionsApi {
                state: state.clone(),
            },
            events::EventsApi {
                state: state.clone(),
            },
            status::StatusApi {
                state: state.clone(),
            },
        ),
        "sessiond",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Collaborative sessions: JSON documents that every subscriber sees change live over \
         Server-Sent Events. Every change is an event in an append-only log with its own offset; \
         `GET /events/{id}` streams them and resumes from `Last-Event-ID`.",
    )
    .server("/")
}

/// All routes with their middleware.
pub fn app(state: AppState) -> impl Endpoint {
    let svc = service(&state);
    let spec = svc.spec_endpoint();
    let ui = svc.swagger_ui();
    let max_body = state.config.max_body_bytes;
    let cors = match state.config.cors_origin_list() {
        Ok(Some(list)) => Cors::new().allow_origins(list),
        _ => Cors::new(),
    }
    .allow_methods([
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ])
    .allow_headers(["content-type", "if-match", "last-event-id"])
    .expose_headers(["etag", "location"])
    .max_age(3600);
    Route::new()
        .at("/openapi.json", spec)
        .nest("/docs", ui)
        .nest("/", svc)
        .around(move |ep, req| read_body(ep, req, max_body))
        .catch_all_error(move |err| async move { errors::normalize(err, max_body) })
        .with(cors)
        .with(CatchPanic::new())
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    PoemJson(serde_json::json!({"error": code, "message": message}))
        .with_status(status)
        .into_response()
}

/// Reads a write's body within the limit (see the module doc).
async fn read_body<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    max: usize,
) -> poem::Result<Response> {
    if let Some(repeated) = repeated_param(&req) {
        return Ok(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!(
                "query parameter `{}` is given more than once: give it once",
                truncate(&repeated, 64)
            ),
        ));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Only bodies of routes that take them: elsewhere the router answers 405/404.
    let takes_body = allowed_methods(&path).is_some_and(|a| a.contains(method.as_str()));
    if takes_body && (method == Method::POST || method == Method::PUT || method == Method::PATCH) {
        let too_large = || {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than MAX_BODY_BYTES ({max} bytes)"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Ok(too_large());
        }
        let body = match req.take_body().into_bytes_limit(max).await {
            Ok(b) => b,
            Err(poem::error::ReadBodyError::PayloadTooLarge) => return Ok(too_large()),
            Err(e) => {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "body_unreadable",
                    format!("the request body could not be read: {e}"),
                ))
            }
        };
        let body = if body.is_empty() {
            if method != Method::POST {
                return Ok(error_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "empty_body",
                    format!("{method} needs a JSON body (send `null` to set the document to null)"),
                ));
            }
            bytes::Bytes::from_static(b"{}")
        } else {
            body
        };
        if !req.headers().contains_key(header::CONTENT_TYPE) {
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
        }
        req.set_body(body);
    }
    match ep.call(req).await {
        Ok(r) => Ok(r.into_response()),
        Err(e) if e.status() == StatusCode::METHOD_NOT_ALLOWED => {
            // RFC 9110 §15.5.6: a 405 lists the methods the path allows.
            let mut r = errors::normalize(e, max);
            if let Some(allow) = allowed_methods(&path) {
                r.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            Ok(r)
        }
        Err(e) => Err(e),
    }
}

/// The methods each route allows, for the `Allow` header of a 405.
fn allowed_methods(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        ["sessions"] => Some("GET, POST"),
        ["sessions", _] => Some("GET, PUT, PATCH, DELETE"),
        ["sessions", _, "events"] | ["events", _] | ["status"] | ["openapi.json"] => Some("GET"),
        _ => None,
    }
}

/// The first query parameter given twice, if any: the handlers read the first
/// value, and a proxy in front may read another, so a repeated parameter is
/// refused rather than silently resolved. A query that does not decode is
/// left to the handlers' own parsing.
fn repeated_param(req: &Request) -> Option<String> {
    let params = req.params::<Vec<(String, String)>>().ok()?;
    let mut seen = std::collections::HashSet::new();
    params
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| !seen.insert(k.clone()))
}

/// Parses a session id from the path.
///
/// # Errors
/// 400 `invalid_id` when it is not a ULID.
pub fn parse_id(text: &str) -> Result<Ulid, ApiError> {
    // Only the canonical spelling: the ulid crate also accepts lowercase,
    // Crockford aliases (O, I, L) and wraps an overflowing first character,
    // which would give one session several URLs, or name another session.
    Ulid::from_string(text)
        .ok()
        .filter(|u| u.to_string() == text)
        .ok_or_else(|| {
        ApiError::bad_request(
            "invalid_id",
            format!(
                "{:?} is not a session id: ids are 26-character ULIDs such as 01KBJ3C4E1GM0W8ZJ7Q9Y2V6XH",
                truncate(text, 64)
            ),
        )
    })
}

/// Checks a username: at most [`MAX_USERNAME_CHARS`] characters, no control
/// characters (CR, LF, NUL, …). Absent or empty means [`DEFAULT_USERNAME`].
/// The same rule holds for streams and writes.
///
/// # Errors
/// 400 `invalid_username`.
pub fn check_username(name: Option<String>) -> Result<String, ApiError> {
    let name = match name {
        Some(n) if !n.is_empty() => n,
        _ => return Ok(DEFAULT_USERNAME.to_string()),
    };
    if name.chars().count() > MAX_USERNAME_CHARS {
        return Err(ApiError::bad_request(
            "invalid_username",
            format!("the username is longer than {MAX_USERNAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_username",
            "the username contains a control character (such as a line break or NUL)",
        ));
    }
    // The query decoder turns bytes that are not UTF-8 into U+FFFD.
    if name.contains(char::REPLACEMENT_CHARACTER) {
        return Err(ApiError::bad_request(
            "invalid_username",
            "the username is not valid UTF-8 once percent-decoded",
        ));
    }
    Ok(name)
}

/// Parses `limit`: 1..=1000, default 100.
///
/// # Errors
/// 400 `invalid_limit`.
pub fn check_limit(limit: Option<u64>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n as usize),
        Some(n) => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit={n} is out of range: use 1..=1000 (the default is 100)"),
        )),
    }
}

/// At most `n` characters of `s`, for quoting client input in messages.
pub fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(check_username(None).unwrap(), "anonymous");
        assert_eq!(check_username(Some(String::new())).unwrap(), "anonymous");
        assert_eq!(
            check_username(Some("ana maría".into())).unwrap(),
            "ana maría"
        );
        assert_eq!(check_username(Some("\u{2028}".into())).unwrap(), "\u{2028}");
        assert_eq!(check_username(Some(":x".into())).unwrap(), ":x");
        assert!(check_username(Some("é".repeat(64))).is_ok());
        for bad in ["a\nevent: x", "b\r", "\0", &"x".repeat(65)] {
            assert!(check_username(Some(bad.into())).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_and_ids() {
        assert_eq!(check_limit(None).unwrap(), 100);
        assert_eq!(check_limit(Some(1000)).unwrap(), 1000);
        assert!(check_limit(Some(0)).is_err());
        assert!(check_limit(Some(1001)).is_err());
        assert!(parse_id("01KBJ3C4E1GM0W8ZJ7Q9Y2V6XH").is_ok());
        assert!(parse_id("nope").is_err());
        for alias in [
            "01kbj3c4e1gm0w8zj7q9y2v6xh",
            "01KBJ3C4E1GM0W8ZJ7Q9Y2V6XO",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
        ] {
            assert!(parse_id(alias).is_err(), "{alias}");
        }
        assert!(check_username(Some("a\u{FFFD}".into())).is_err());
    }
}
