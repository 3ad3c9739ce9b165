//! [`ApiError`]: one variant per error status, each with the
//! `{"error": "<code>", "message": "<text>"}` body. The only place where an
//! error becomes an HTTP status — including poem's own rejections, which
//! [`normalize`] rewrites into the same shape.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use crate::log::AppendError;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
#[oai(example)]
pub struct ErrorBody {
    /// Stable snake_case code for programs, e.g. `session_not_found`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl poem_openapi::types::Example for ErrorBody {
    fn example() -> ErrorBody {
        ErrorBody {
            error: "session_not_found".into(),
            message: "no session 01KBJ3C4E1GM0W8ZJ7Q9Y2V6XH".into(),
        }
    }
}

impl ErrorBody {
    fn new(error: &str, message: impl Into<String>) -> Json<ErrorBody> {
        Json(ErrorBody {
            error: error.into(),
            message: message.into(),
        })
    }
}

/// Every error an operation can answer with.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// Malformed session id, username, offset, header or query parameter.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No session with this id.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The session was deleted.
    #[oai(status = 410)]
    Gone(Json<ErrorBody>),
    /// `If-Match` names an offset the session has moved on from.
    #[oai(status = 412)]
    PreconditionFailed(Json<ErrorBody>),
    /// The request body is larger than `MAX_BODY_BYTES`.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The request body is not `application/json` (or `application/*+json`).
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The body is not JSON, or the change cannot be applied.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// The log cannot be written (disk full, I/O error, shutting down);
    /// reads keep working.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

impl ApiError {
    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest(ErrorBody::new(code, message))
    }

    pub fn not_found(id: impl std::fmt::Display) -> ApiError {
        ApiError::NotFound(ErrorBody::new(
            "session_not_found",
            format!("no session {id}"),
        ))
    }

    pub fn gone(id: impl std::fmt::Display, deleted_at: u64) -> ApiError {
        ApiError::Gone(ErrorBody::new(
            "session_deleted",
            format!("session {id} was deleted at offset {deleted_at}"),
        ))
    }

    pub fn unprocessable(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable(ErrorBody::new(code, message))
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::Unavailable(ErrorBody::new("log_unavailable", message))
    }

    /// Maps a rejected append on session `id` to its status.
    pub fn from_append(id: impl std::fmt::Display, e: AppendError) -> ApiError {
        match e {
            AppendError::NotFound => ApiError::not_found(id),
            AppendError::Deleted { deleted_at } => ApiError::gone(id, deleted_at),
            AppendError::Mismatch { expected, current } => ApiError::PreconditionFailed(
                ErrorBody::new(
                    "precondition_failed",
                    format!(
                        "session {id} is at offset {current}, not {expected}: fetch it again (its ETag is \"{current}\") and retry"
                    ),
                ),
            ),
            AppendError::Exists => ApiError::Unavailable(ErrorBody::new(
                "id_collision",
                format!("the generated session id {id} already exists; retry the request"),
            )),
            AppendError::BadBody { len } => ApiError::PayloadTooLarge(ErrorBody::new(
                "payload_too_large",
                format!("the event of {len} bytes does not fit in a log record"),
            )),
            AppendError::DiskFull => ApiError::unavailable(
                "the log is out of disk space; the write was not applied. Reads keep working; retry once space is freed",
            ),
            AppendError::Unavailable(why) => {
                tracing::error!(session = %id, error = %why, "append refused: log unavailable");
                ApiError::unavailable(
                    "the log cannot be written; the write was not applied. Reads keep working; the server must be restarted to take writes again",
                )
            }
        }
    }
}

/// Turns poem's own rejections (bad JSON, wrong content type, unparsable
/// parameters, unknown routes, oversized bodies) into `{"error","message"}`
/// responses. Errors that already carry a typed response pass through.
pub fn normalize(err: poem::Error, max_body: usize) -> Response {
    use poem_openapi::error::{
        ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
    };
    if err.is_from_response() {
        return err.into_response();
    }
    let (status, code, message) = if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            format!("the request body is not valid JSON: {}", e.reason),
        )
    } else if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{e}; send Content-Type: application/json"),
        )
    } else if let Some(e) = err.downcast_ref::<ParseParamError>() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("parameter `{}` is not valid: {}", e.name, e.reason),
        )
    } else if let Some(e) = err.downcast_ref::<ParsePathError>() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("path parameter `{}` is not valid: {}", e.name, e.reason),
        )
    } else if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than MAX_BODY_BYTES ({max_body} bytes)"),
        )
    } else if err.status() == StatusCode::NOT_FOUND {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route; see /docs for the API".to_string(),
        )
    } else if err.status() == StatusCode::METHOD_NOT_ALLOWED {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed on this path; see /docs for the API".to_string(),
        )
    } else if err.status().is_server_error() {
        tracing::error!(error = %err, "request failed");
        (
            err.status(),
            "internal_error",
            "the server failed to handle the request".to_string(),
        )
    } else {
        let status = err.status();
        (status, "bad_request", err.to_string())
    };
    let body = ErrorBody {
        error: code.into(),
        message,
    };
    poem::web::Json(serde_json::json!({"error": body.error, "message": body.message}))
        .with_status(status)
        .into_response()
}
