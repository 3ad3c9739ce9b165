//! Wiring, in order: validate the configuration, lock and recover the data
//! directory, fold the log, start the writer, build the routes, listen, and
//! shut down (see [`crate::shutdown`]).
//!
//! The life of a write: a handler appends an event ([`crate::log::Log::append`]);
//! the writer makes its batch durable, then calls the commit hook built here
//! ([`commit_hook`]), which applies each event to the in-memory [`Sessions`]
//! and publishes its frame to the session's subscribers ([`Hub`]); only then
//! does the handler get its offset. So state and streams never show anything
//! a crash could take back, and a client always reads its own write.
//!
//! The listener is bound only after the fold completes (for [`Listen::Addr`]),
//! so no client ever sees a partial state: until then connections are refused.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use poem::Server;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{Config, ConfigError};
use crate::event::Event;
use crate::fold::{fold_log, FoldError, Sessions};
use crate::log::{CommitHook, Log, LogOptions, OpenError};
use crate::shutdown::GRACE;
use crate::sse::hub::Hub;
use crate::sse::presence::Presence;
use crate::sse::Streams;

/// Where to listen.
pub enum Listen {
    /// Bind this address once the fold is complete.
    Addr(SocketAddr),
    /// Use this already bound listener (tests bind `127.0.0.1:0` first).
    Listener(std::net::TcpListener),
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot open the log in {dir}: {source}")]
    Open {
        dir: String,
        #[source]
        source: OpenError,
    },
    #[error("cannot fold the log in {dir} into sessions: {source}")]
    Fold {
        dir: String,
        #[source]
        source: FoldError,
    },
    #[error("cannot listen on {addr}: {source}; set PORT or HOST to a free address")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("a startup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Site(#[from] crate::web::SiteError),
}

/// How long an unacknowledged write may stay on a connection before the
/// kernel gives up on it (`TCP_USER_TIMEOUT`): bounds how long a vanished
/// client (no FIN, no RST) stays counted once a heartbeat is pending.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request head (request line and
/// headers), counted from the accept for the first request and from its
/// first byte for later ones. Bounds slow-loris clients that trickle header
/// bytes to hold connections open: hyper's own header-read timeout is inert
/// under poem, which gives hyper no timer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections with keepalive and `TCP_USER_TIMEOUT` set, so a
/// half-open connection fails its next write within a bounded time, and with
/// [`HEADER_READ_TIMEOUT`] on request heads ([`HeadDeadline`]).
struct Tcp(TcpAcceptor, Arc<crate::conn::Connections>);

/// A connection whose request heads must arrive within [`HEADER_READ_TIMEOUT`].
///
/// It watches the bytes read for the blank line that ends a head. A head is
/// expected from the accept, and again from the first byte read after the
/// server wrote something (the previous response). While a head is being
/// read and the deadline passes, reads fail with `TimedOut` and hyper drops
/// the connection. Bodies, idle keep-alive gaps and streams are not timed,
/// except a body sent after `100 Continue` without a blank line in it, which
/// must also arrive in time. HTTP/2 (prior knowledge) is left alone.
/// The alternative, serving connections with hyper directly to give it a
/// timer, would mean re-doing poem's graceful shutdown.
struct HeadDeadline {
    io: crate::conn::Conn,
    /// While a head is being read: when it must be complete.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The server has written since the last head: the next byte starts one.
    expect_head: bool,
    /// Line feeds seen in a row (ignoring CR): 2 ends a head.
    newlines: u8,
    /// No byte read yet (to recognise the HTTP/2 preface).
    first: bool,
    /// HTTP/2: not watched.
    off: bool,
}

impl HeadDeadline {
    fn new(io: crate::conn::Conn) -> HeadDeadline {
        HeadDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT))),
            expect_head: false,
            newlines: 0,
            first: true,
            off: false,
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.off {
            return;
        }
        if std::mem::take(&mut self.first) && bytes.starts_with(b"PRI ") {
            self.off = true;
            self.deadline = None;
            return;
        }
        if self.deadline.is_none() {
            if !std::mem::take(&mut self.expect_head) {
                return;
            }
            self.deadline = Some(Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT)));
            self.newlines = 0;
        }
        for &b in bytes {
            match b {
                b'\n' => self.newlines += 1,
                b'\r' => {}
                _ => self.newlines = 0,
            }
            if self.newlines == 2 {
                self.deadline = None;
                return;
            }
        }
    }
}

impl tokio::io::AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request head did not arrive within HEADER_READ_TIMEOUT",
                )));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.saw(&buf.filled()[before..]);
        }
        r
    }
}

impl tokio::io::AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.expect_head = true;
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.expect_head = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Acceptor for Tcp {
    type Io = HeadDeadline;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(HeadDeadline, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.0.accept().await?;
        let sock = socket2::SockRef::from(&io);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10));
        if let Err(e) = sock
            .set_tcp_keepalive(&keepalive)
            .and_then(|()| sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)))
            .and_then(|()| sock.set_tcp_nodelay(true))
        {
            tracing::debug!(error = %e, "cannot set TCP options on an accepted connection");
        }
        let io = match remote.as_socket_addr() {
            Some(peer) => self.1.watch(io, *peer),
            None => self.1.watch(io, SocketAddr::from(([0, 0, 0, 0], 0))),
        };
        Ok((HeadDeadline::new(io), local, remote, scheme))
    }
}

/// The writer's commit hook: apply, then publish (see the module doc).
fn commit_hook(sessions: Arc<RwLock<Sessions>>, hub: Arc<Hub>) -> CommitHook {
    Box::new(move |records| {
        let mut events = Vec::with_capacity(records.len());
        {
            let mut state = sessions.write().expect("sessions lock");
            for r in records {
                let event = match Event::from_record(r.offset, r.key, r.kind, r.body) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(offset = r.offset, error = %e, "a committed record does not decode; it is not applied");
                        continue;
                    }
                };
                if let Err(e) = state.apply(&event) {
                    tracing::error!(error = %e, "a committed event does not apply; it is not published");
                    continue;
                }
                events.push(event);
            }
        }
        for e in &events {
            hub.publish_event(e);
        }
    })
}

/// Runs the server until `shutdown` resolves.
///
/// # Errors
/// [`RunError`] when the configuration is invalid, the data directory is
/// locked by another process or corrupt, the address cannot be bound, or the
/// server fails.
pub async fn run(
    config: Config,
    listen: Listen,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    let site = crate::web::Site::new(config.static_dir.as_deref())?;
    let dir = config.data_dir.display().to_string();
    let options = LogOptions {
        segment_bytes: config.segment_bytes,
        fsync: config.fsync,
    };
    let data_dir = config.data_dir.clone();
    let (log, report) = tokio::task::spawn_blocking(move || Log::open(&data_dir, options))
        .await?
        .map_err(|source| RunError::Open {
            dir: dir.clone(),
            source,
        })?;
    if let Some(torn) = &report.torn_tail {
        tracing::warn!(%torn, first_dropped = torn.first_dropped, dropped_records = torn.dropped_records, "recovery truncated a torn tail");
    }
    if let Some(created) = &report.created {
        tracing::info!(segment = %created.display(), "started a new log");
    }
    let folding = log.clone();
    let started = Instant::now();
    let sessions = tokio::task::spawn_blocking(move || fold_log(&folding))
        .await?
        .map_err(|source| RunError::Fold {
            dir: dir.clone(),
            source,
        })?;
    let stats = log.stats();
    tracing::info!(
        sessions = sessions.live_count(),
        next_offset = stats.next_offset,
        segments = stats.segments,
        bytes = stats.bytes,
        ms = started.elapsed().as_millis() as u64,
        "log folded"
    );
    let sessions = Arc::new(RwLock::new(sessions));
    let hub = Hub::new();
    log.start_writer(commit_hook(sessions.clone(), hub.clone()));

    let token = CancellationToken::new();
    let streams = Streams {
        log: log.clone(),
        sessions,
        hub,
        presence: Presence::new(),
        heartbeat: config.heartbeat(),
        shutdown: token.clone(),
    };
    let presence_task = tokio::spawn(streams.clone().run_presence());
    let connections = crate::conn::Connections::new();
    let state = AppState {
        streams,
        connections: connections.clone(),
        config: Arc::new(config.clone()),
        started: Instant::now(),
    };

    let acceptor = match listen {
        Listen::Addr(addr) => {
            let bind = |source| RunError::Bind {
                addr: addr.to_string(),
                source,
            };
            let l = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
            TcpAcceptor::from_tokio(l).map_err(bind)?
        }
        Listen::Listener(l) => {
            let addr = l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "the given listener".into());
            let bind = |source| RunError::Bind {
                addr: addr.clone(),
                source,
            };
            l.set_nonblocking(true).map_err(bind)?;
            TcpAcceptor::from_std(l).map_err(bind)?
        }
    };
    for a in acceptor.local_addr() {
        if let Some(addr) = a.as_socket_addr() {
            tracing::info!("listening on http://{addr}");
        }
    }
    let signal = {
        let token = token.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: closing streams and flushing the log");
            token.cancel();
        }
    };
    let served = Server::new_with_acceptor(Tcp(acceptor, connections))
        .run_with_graceful_shutdown(
            crate::web::with_site(api::app(state), site),
            signal,
            Some(GRACE),
        )
        .await;
    token.cancel();
    let _ = presence_task.await;
    tokio::task::spawn_blocking(move || log.shutdown()).await?;
    tracing::info!("stopped");
    served.map_err(RunError::Serve)
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit and
/// returns the limit in force (0 when it cannot be read). Every SSE stream
/// holds one descriptor for as long as it is open, and the usual soft limit of 1024 would refuse
/// connections long before memory runs out; the hard limit is the ceiling an
/// administrator set (`ulimit -Hn`, systemd `LimitNOFILE=`), so going up to
/// it needs no privilege.
pub fn raise_open_file_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}
