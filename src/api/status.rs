//! `GET /status`: every live session with its connected clients, and log and
//! server figures.

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::{ApiTags, AppState};

/// The status resource.
pub struct StatusApi {
    pub state: AppState,
}

/// A live session and who is connected to it.
#[derive(Debug, Clone, Object)]
pub struct SessionPresence {
    /// Session id (ULID).
    pub id: String,
    /// SSE streams open on it (exact).
    pub clients: u64,
    /// Distinct usernames connected, sorted, at most 100.
    pub usernames: Vec<String>,
    /// The session's offset (version).
    pub offset: u64,
}

/// Figures about the log.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct LogFigures {
    /// Oldest offset still held.
    pub first_offset: u64,
    /// Offset the next event will get.
    pub next_offset: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes in all segments.
    pub bytes: u64,
}

/// Server status.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Status {
    /// Every live session, in id order.
    pub sessions: Vec<SessionPresence>,
    /// SSE streams open on all sessions.
    pub clients: u64,
    pub log: LogFigures,
    /// Seconds since the server started listening.
    pub uptime_seconds: u64,
    /// The server's version.
    pub version: String,
}

#[OpenApi(tag = "ApiTags::Status")]
impl StatusApi {
    /// Server status
    ///
    /// Every live session with its connected clients (exact counts, at most
    /// 100 usernames each), the log's offsets and size, uptime and version.
    #[oai(path = "/status", method = "get")]
    async fn status(&self) -> Json<Status> {
        let streams = &self.state.streams;
        let presence = streams.presence.all();
        let stats = streams.log.stats();
        let sessions: Vec<SessionPresence> = {
            let sessions = streams.sessions.read().expect("sessions lock");
            sessions
                .live_after(None)
                .map(|s| {
                    let p = presence.get(&s.id).cloned().unwrap_or_default();
                    SessionPresence {
                        id: s.id.to_string(),
                        clients: p.clients as u64,
                        usernames: p.usernames,
                        offset: s.offset,
                    }
                })
                .collect()
        };
        Json(Status {
            sessions,
            clients: presence.values().map(|p| p.clients as u64).sum(),
            log: LogFigures {
                first_offset: stats.first_offset,
                next_offset: stats.next_offset,
                segments: stats.segments as u64,
                bytes: stats.bytes,
            },
            uptime_seconds: self.state.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }
}
