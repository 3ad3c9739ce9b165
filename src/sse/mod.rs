//! One subscriber's stream: `retry`, then `init` or a catch-up from the log,
//! then live events, heartbeats, and the end.
//!
//! The life of a resume, in order:
//! 1. subscribe to the session's hub channel ([`hub`]) — *before* looking at
//!    the state, so nothing committed from now on can be missed;
//! 2. count the client ([`presence::PresenceGuard`], held inside the stream);
//! 3. send `retry`; then either `init` (the state now, `id:` = its offset) or,
//!    for a valid resume id ([`resume`]), the session's events after it, read
//!    from the log in bounded rounds of [`CATCH_UP_ROUND`];
//! 4. forward live frames whose offset is above the last one sent (the
//!    overlap between the catch-up and the channel is dropped by offset, so
//!    there is no duplicate; the channel was subscribed first, so no gap).
//!
//! A live receiver that lags goes back to step 3's catch-up from its own
//! resume point. A `delete` ends the stream after it is sent; so does the
//! server's shutdown token. A `: ping` comment goes out every heartbeat; a
//! dead peer is noticed when that write fails.

pub mod frame;
pub mod hub;
pub mod presence;
pub mod resume;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::event::{rfc3339_millis, RecordKind};
use crate::fold::{read_with, Sessions};
use crate::log::{Log, Offset};
use frame::EventName;
use hub::{Hub, HubMsg, Subscription};
use presence::{Presence, PresenceGuard};
use resume::ResumeFrom;

/// Events read from the log per catch-up round; bounds a lagging or resuming
/// subscriber's memory.
pub const CATCH_UP_ROUND: usize = 64;

/// What every stream of one server shares.
#[derive(Clone)]
pub struct Streams {
    pub log: Log,
    pub sessions: Arc<RwLock<Sessions>>,
    pub hub: Arc<Hub>,
    pub presence: Arc<Presence>,
    pub heartbeat: Duration,
    /// Cancelled when the server shuts down: every stream ends.
    pub shutdown: CancellationToken,
}

enum Phase {
    Start(ResumeFrom),
    CatchUp,
    Live,
    Done,
}

/// The state of one subscriber's stream.
struct Subscriber {
    streams: Streams,
    session: Ulid,
    username: String,
    sub: Subscription,
    _guard: PresenceGuard,
    /// Cancelled when the client's connection closes ([`crate::conn`]).
    closed: CancellationToken,
    /// Resolves once `closed` or the server's shutdown token is cancelled.
    /// Made once and kept: a live stream waits on it beside its channel, and
    /// a fresh `cancelled()` per event would register with (and leave) both
    /// tokens' waiter lists under their locks for every delivery.
    ended: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Resume point: every event of the session up to here has been sent.
    last: Offset,
    phase: Phase,
    out: VecDeque<Bytes>,
    heartbeat: Interval,
}

impl Streams {
    /// Opens the stream of `username` on `session`, which the caller checked
    /// exists and is live. The client is counted from now until the stream
    /// is dropped. `closed`, when given, ends the stream as soon as the
    /// client's connection is seen to close.
    pub fn open(
        &self,
        session: Ulid,
        username: String,
        from: ResumeFrom,
        closed: Option<CancellationToken>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let sub = self.hub.subscribe(session);
        let guard = self.presence.join(session, &username);
        let closed = closed.unwrap_or_default();
        let ended = {
            let (shutdown, closed) = (self.shutdown.clone(), closed.clone());
            Box::pin(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = closed.cancelled() => {}
                }
            })
        };
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let subscriber = Subscriber {
            streams: self.clone(),
            session,
            username,
            sub,
            _guard: guard,
            closed,
            ended,
            last: 0,
            phase: Phase::Start(from),
            out: VecDeque::new(),
            heartbeat,
        };
        futures_util::stream::unfold(subscriber, |mut s| async move {
            s.next().await.map(|b| (Ok(b), s))
        })
    }

    /// Publishes presence batches until shutdown: waits for a change, lets the
    /// window fill, then sends one `join` and/or `leave` per dirty session.
    pub async fn run_presence(self) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.presence.changed() => {}
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(presence::WINDOW) => {}
            }
            for b in self.presence.take_batches() {
                for (name, names) in [(EventName::Join, &b.joined), (EventName::Leave, &b.left)] {
                    if names.is_empty() {
                        continue;
                    }
                    let json = serde_json::json!({"usernames": names, "clients": b.clients});
                    let bytes = serde_json::to_vec(&json).expect("JSON serializes");
                    self.hub
                        .publish_presence(b.session, frame::event(name, None, &bytes));
                }
            }
        }
    }
}

/// Queues a frame as zero-copy slices of at most [`frame::SHARED_SLICE`]
/// bytes, so the HTTP layer's per-connection copy of a large shared frame
/// stays small (see [`frame::event_parts`]).
fn push_sliced(out: &mut VecDeque<Bytes>, frame: Bytes) {
    if frame.len() <= frame::SHARED_SLICE {
        out.push_back(frame);
        return;
    }
    let mut at = 0;
    while at < frame.len() {
        let end = (at + frame::SHARED_SLICE).min(frame.len());
        out.push_back(frame.slice(at..end));
        at = end;
    }
}

impl Subscriber {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Some(b);
            }
            if self.streams.shutdown.is_cancelled() || self.closed.is_cancelled() {
                self.phase = Phase::Done;
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Start(from) => self.start(from),
                Phase::CatchUp => self.catch_up().await,
                Phase::Live => self.live().await,
            }
        }
    }

    fn start(&mut self, from: ResumeFrom) {
        self.out.push_back(frame::retry(frame::RETRY_MS));
        match from {
            ResumeFrom::After(offset) => {
                self.last = offset;
                self.phase = Phase::CatchUp;
            }
            ResumeFrom::Init => self.init(),
        }
    }

    fn init(&mut self) {
        let snapshot = self.streams.presence.snapshot(&self.session);
        let sessions = self.streams.sessions.read().expect("sessions lock");
        let Some(state) = sessions.get(&self.session).filter(|s| !s.is_deleted()) else {
            // Deleted between the handler's check and now: nothing to show.
            self.phase = Phase::Done;
            return;
        };
        let prefix = format!("{{\"session\":{{\"id\":\"{}\",\"data\":", state.id);
        let suffix = serde_json::json!({
            "offset": state.offset,
            "createdAt": rfc3339_millis(state.created_at_ms),
            "updatedAt": rfc3339_millis(state.updated_at_ms),
            "clients": snapshot.clients,
        });
        let tail = serde_json::json!({
            "username": self.username,
            "clients": snapshot.clients,
            "usernames": snapshot.usernames,
        });
        // `{"session":{"id":..,"data":<doc>,` + rest of the session object
        // + `},` + the rest of the init object.
        let suffix = serde_json::to_string(&suffix).expect("JSON serializes");
        let tail = serde_json::to_string(&tail).expect("JSON serializes");
        let middle = format!(",{}}},{}", &suffix[1..suffix.len() - 1], &tail[1..]);
        self.last = state.offset;
        let parts = [Bytes::from(prefix), state.data_json(), Bytes::from(middle)];
        drop(sessions);
        self.out
            .extend(frame::event_parts(EventName::Init, Some(self.last), &parts));
        self.phase = Phase::Live;
    }

    async fn catch_up(&mut self) {
        let offsets: Vec<Offset> = {
            let sessions = self.streams.sessions.read().expect("sessions lock");
            match sessions.get(&self.session) {
                Some(s) => s.events_after(Some(self.last), CATCH_UP_ROUND).to_vec(),
                None => Vec::new(),
            }
        };
        if offsets.is_empty() {
            self.phase = Phase::Live;
            return;
        }
        let log = self.streams.log.clone();
        // Frames straight from the records: the stored JSON is not parsed.
        let read = tokio::task::spawn_blocking(move || {
            read_with(&log, &offsets, |r| {
                let frame = frame::persisted_record(r.offset, Ulid(r.key), r.kind, r.body)?;
                Ok((r.offset, r.kind, frame))
            })
        })
        .await;
        let frames = match read {
            Ok(Ok(frames)) => frames,
            Ok(Err(e)) => {
                tracing::error!(session = %self.session, after = self.last, error = %e, "catch-up read failed; ending the stream so the client resumes");
                self.phase = Phase::Done;
                return;
            }
            Err(e) => {
                tracing::error!(session = %self.session, error = %e, "catch-up task failed");
                self.phase = Phase::Done;
                return;
            }
        };
        for (offset, kind, frame) in frames {
            push_sliced(&mut self.out, frame);
            self.last = offset;
            if kind == RecordKind::Deleted {
                self.phase = Phase::Done;
                return;
            }
        }
    }

    async fn live(&mut self) {
        tokio::select! {
            // Never polled again once ready: the stream is then done.
            _ = &mut self.ended => self.phase = Phase::Done,
            _ = self.heartbeat.tick() => self.out.push_back(frame::ping()),
            msg = self.sub.recv() => match msg {
                Ok(HubMsg::Event { offset, frame, ends }) => {
                    if offset > self.last {
                        self.last = offset;
                        push_sliced(&mut self.out, frame);
                        if ends {
                            self.phase = Phase::Done;
                        }
                    }
                }
                Ok(HubMsg::Presence(frame)) => self.out.push_back(frame),
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(session = %self.session, missed, after = self.last, "subscriber lagged; catching up from the log");
                    self.phase = Phase::CatchUp;
                }
                Err(RecvError::Closed) => self.phase = Phase::Done,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{now_ms, Event, EventBody};
    use crate::log::{AppendEntry, FsyncPolicy, LogOptions, Precondition};
    use futures_util::StreamExt;

    /// A log, its folded state and hub wired like the server does, and the
    /// streams over them.
    fn streams(dir: &std::path::Path) -> Streams {
        let (log, _) = Log::open(
            dir,
            LogOptions {
                fsync: FsyncPolicy::Never,
                ..LogOptions::default()
            },
        )
        .unwrap();
        let sessions = Arc::new(RwLock::new(Sessions::new()));
        let hub = Hub::new();
        let (s, h) = (sessions.clone(), hub.clone());
        log.start_writer(Box::new(move |records| {
            let mut events = Vec::new();
            for r in records {
                let e = Event::from_record(r.offset, r.key, r.kind, r.body).unwrap();
                s.write().unwrap().apply(&e).unwrap();
                events.push(e);
            }
            for e in &events {
                h.publish_event(e);
            }
        }));
        Streams {
            log,
            sessions,
            hub,
            presence: Presence::new(),
            heartbeat: Duration::from_secs(3600),
            shutdown: CancellationToken::new(),
        }
    }

    async fn append(log: &Log, id: Ulid, kind: RecordKind, json: &str) -> Offset {
        let body = EventBody {
            json: json.into(),
            username: "t".into(),
            at_ms: now_ms(),
        };
        log.append(AppendEntry {
            key: id.0,
            kind,
            body: body.encode(),
            precondition: Precondition::None,
        })
        .await
        .unwrap()
    }

    /// Offsets of the `update`/`delete` frames in `bytes`.
    fn ids(bytes: &[u8]) -> Vec<Offset> {
        std::str::from_utf8(bytes)
            .unwrap()
            .split('\n')
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|v| v.parse().unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_subscriber_catches_up_from_the_log_without_gap_or_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let streams = streams(dir.path());
        let id = Ulid::generate();
        let created = append(&streams.log, id, RecordKind::Created, "{}").await;
        let stream = streams.open(id, "slow".into(), ResumeFrom::After(created), None);
        let mut stream = Box::pin(stream);
        // The stream is not polled while far more events than a hub channel
        // holds are committed: its receiver lags.
        let mut written = Vec::new();
        for i in 0..(hub::CAPACITY + 300) {
            written.push(
                append(
                    &streams.log,
                    id,
                    RecordKind::Patched,
                    &format!("{{\"i\":{i}}}"),
                )
                .await,
            );
        }
        let last = *written.last().unwrap();
        let mut got = Vec::new();
        while got.last() != Some(&last) {
            let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .expect("frames in time")
                .expect("stream open")
                .unwrap();
            got.extend(ids(&chunk));
        }
        assert_eq!(got, written);
        // And it goes on live.
        let more = append(&streams.log, id, RecordKind::Deleted, "").await;
        let mut rest = Vec::new();
        while let Some(chunk) = stream.next().await {
            rest.extend(ids(&chunk.unwrap()));
        }
        assert_eq!(rest, vec![more], "the delete, then the end");
        streams.log.shutdown();
    }

    /// On a current-thread runtime the joins below happen back to back
    /// before the flusher can run, so they must come out as one event.
    #[tokio::test]
    async fn presence_goes_out_once_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let streams = streams(dir.path());
        let id = Ulid::generate();
        let mut sub = streams.hub.subscribe(id);
        let flusher = tokio::spawn(streams.clone().run_presence());
        let guards: Vec<_> = ["bo", "ana", "bo"]
            .into_iter()
            .map(|n| streams.presence.join(id, n))
            .collect();
        async fn next(sub: &mut Subscription) -> HubMsg {
            tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .expect("a presence event in time")
                .unwrap()
        }
        match next(&mut sub).await {
            HubMsg::Presence(f) => assert_eq!(
                &f[..],
                b"event: join\ndata: {\"clients\":3,\"usernames\":[\"ana\",\"bo\"]}\n\n"
            ),
            other => panic!("{other:?}"),
        }
        assert!(sub.recv_now().is_err(), "one event for the three joins");
        drop(guards);
        match next(&mut sub).await {
            HubMsg::Presence(f) => assert_eq!(
                &f[..],
                b"event: leave\ndata: {\"clients\":0,\"usernames\":[\"ana\",\"bo\"]}\n\n"
            ),
            other => panic!("{other:?}"),
        }
        streams.shutdown.cancel();
        flusher.await.unwrap();
        streams.log.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_ends_an_idle_stream() {
        let dir = tempfile::tempdir().unwrap();
        let streams = streams(dir.path());
        let id = Ulid::generate();
        append(&streams.log, id, RecordKind::Created, "{\"a\":1}").await;
        let mut stream = Box::pin(streams.open(id, "u".into(), ResumeFrom::Init, None));
        let retry = stream.next().await.unwrap().unwrap();
        assert_eq!(&retry[..], b"retry: 2000\n\n");
        let init = stream.next().await.unwrap().unwrap();
        assert!(init.starts_with(b"event: init\nid: 0\ndata: {\"session\":{\"id\":"));
        assert_eq!(streams.presence.snapshot(&id).clients, 1);
        streams.shutdown.cancel();
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            while stream.next().await.is_some() {}
        })
        .await;
        assert!(end.is_ok(), "the stream ends on shutdown");
        drop(stream);
        assert_eq!(streams.presence.snapshot(&id).clients, 0);
        streams.log.shutdown();
    }
}
