//! End-to-end load tool: starts the real `sessiond` binary on a temporary
//! DATA_DIR on loopback and measures it from the outside.
//!
//! Scenarios (issue 7), each selectable by name:
//! - `writes`: N = 1, 16, 64, 256 concurrent writers, PUT and PATCH of ~200
//!   bytes of JSON with `FSYNC=always`: requests/s and latency percentiles;
//!   in the same server, before and after, `GET /status` with 64 connections
//!   (the HTTP ceiling), so writes can be stated as a fraction of it;
//! - `ceiling`: only the `GET /status` part of `writes`;
//! - `fanout`: 1k and 10k subscribers on one session and 10k spread over 100
//!   sessions, writers at a fixed rate: delivered events/s, publish→receive
//!   latency (the writer puts its send time in the JSON), connect time;
//! - `idle`: 10k idle streams in a fresh server (RSS per stream from VmRSS),
//!   heartbeat CPU cost, then as many streams as the open-file limit allows;
//! - `resume`: a subscriber 100k events behind: catch-up events/s, time to live;
//! - `startup`: fold time of 100k and 1M events, clean restart vs after SIGKILL.
//!
//! Run: `cargo bench --bench e2e` (all, quick mode, a few minutes) or
//! `cargo bench --bench e2e -- writes fanout --full` (longer windows).
//!
//! Load generation notes: the client is raw HTTP/1.1 over tokio TCP (no HTTP
//! library) so that the generator, which shares the machine with the server,
//! spends as little CPU as possible; every figure comes with the server's own
//! CPU where it matters. The open-file limit (`RLIMIT_NOFILE`) is raised to its
//! hard limit here, and the spawned server inherits it: each SSE stream costs
//! one descriptor on each side. Everything is bounded: each phase has a
//! deadline, a watchdog ends the run (and the servers) after [`WATCHDOG`].

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use sessiond::event::EventBody;
use sessiond::log::{AppendEntry, FsyncPolicy, Log, LogOptions, Precondition, RecordKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The whole run ends (servers killed) after this long, whatever happens.
const WATCHDOG: Duration = Duration::from_secs(40 * 60);
/// Server pids alive now, so the watchdog can kill them.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

// ---------------------------------------------------------------- settings

#[derive(Clone, Copy)]
struct Mode {
    full: bool,
}

impl Mode {
    /// Measuring window of a request/response step.
    fn window(self) -> Duration {
        Duration::from_secs(if self.full { 10 } else { 3 })
    }
    /// Measuring window of a fan-out step.
    fn fanout_window(self) -> Duration {
        Duration::from_secs(if self.full { 20 } else { 6 })
    }
    fn startup_rounds(self) -> usize {
        if self.full {
            5
        } else {
            2
        }
    }
}

// ---------------------------------------------------------------- helpers

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Sorted latencies in microseconds → "p50 … p99 …" figures.
struct Lat(Vec<u32>);

impl Lat {
    fn new(mut v: Vec<u32>) -> Lat {
        v.sort_unstable();
        Lat(v)
    }
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() as f64 * p / 100.0).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i] as f64 / 1000.0
    }
    fn summary(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
            self.pct(50.0),
            self.pct(99.0),
            self.pct(99.9),
            self.pct(100.0)
        )
    }
}

/// CPU time (user + system) used by this process, the load generator, so far.
fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct passed.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
}

/// A ~200-byte JSON document carrying its send time (`t`, µs since the epoch).
fn doc(writer: usize, seq: u64) -> String {
    format!(
        r##"{{"t":{},"w":{writer},"seq":{seq},"cursor":{{"x":{},"y":{}}},"text":"the quick brown fox jumps over the lazy dog","color":"#33aa77","sel":[1,2,3],"pad":"abcdefghijklmnopqrstuvwx"}}"##,
        now_us(),
        seq % 1000,
        seq % 700
    )
}

// ---------------------------------------------------------------- server

/// The real server binary on a temporary data directory.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    stderr: PathBuf,
    /// From spawn to the first accepted TCP connection.
    startup: Duration,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Server {
    /// Starts `sessiond` on `data_dir` with `env` and waits until it listens.
    async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Result<Server> {
        let port = free_port()?;
        let stderr = data_dir.with_extension(format!("stderr.{port}"));
        let err = std::fs::File::create(&stderr)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATA_DIR", data_dir)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("RUST_LOG", "info")
            .current_dir(data_dir.parent().expect("data dir has a parent"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        // Allocator experiments (MALLOC_ARENA_MAX=…) reach the server.
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("MALLOC_")) {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let child = cmd.spawn().context("spawning sessiond")?;
        CHILDREN.lock().unwrap().push(child.id());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut server = Server {
            child: Some(child),
            addr,
            stderr,
            startup: Duration::ZERO,
        };
        let deadline = started + Duration::from_secs(180);
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "sessiond exited with {status} before listening: {}",
                    std::fs::read_to_string(&server.stderr).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("sessiond did not listen within 180 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.startup = started.elapsed();
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory in KiB (`VmRSS` of /proc/<pid>/status).
    fn rss_kib(&self) -> Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))
    }

    /// User + system CPU time so far (from /proc/<pid>/stat, clock ticks).
    fn cpu(&self) -> Result<Duration> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let rest = &s[s.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Ok(Duration::from_micros(ticks * 1_000_000 / hz.max(1)))
    }

    /// The `ms=` of the server's "log folded" line.
    fn fold_ms(&self) -> Option<u64> {
        let s = std::fs::read_to_string(&self.stderr).ok()?;
        let line = s.lines().rev().find(|l| l.contains("log folded"))?;
        let ms = line.split("ms=").nth(1)?;
        ms.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }

    fn signal(&mut self, sig: i32) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("sessiond did not stop within 30 s of signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        CHILDREN.lock().unwrap().retain(|&p| p != child.id());
        Ok(())
    }

    /// SIGTERM: a clean shutdown.
    fn stop(mut self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// SIGKILL: a crash.
    fn kill9(mut self) -> Result<()> {
        self.signal(libc::SIGKILL)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.signal(libc::SIGKILL);
    }
}

// ---------------------------------------------------------------- HTTP/1.1

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive HTTP/1.1 connection; requests in sequence.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads the whole response: (status, body).
    async fn call(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>)> {
        let req = if body.is_empty() {
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        } else {
            format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        self.stream.write_all(req.as_bytes()).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line"))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed in a body");
            }
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok((status, body))
    }
}

async fn create_session(addr: SocketAddr) -> Result<String> {
    let mut c = Conn::open(addr).await?;
    let (status, body) = c.call("POST", "/sessions", r#"{"title":"bench"}"#).await?;
    if status != 201 {
        bail!(
            "POST /sessions: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(v["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no id"))?
        .to_string())
}

// ---------------------------------------------------------------- SSE

/// One SSE frame, as much of it as the tool needs.
enum Frame {
    Init,
    Update { id: u64, t: Option<u64> },
    Presence,
    Ping,
    Other,
}

fn parse_frame(f: &[u8]) -> Frame {
    let mut event: &[u8] = b"";
    let mut id = 0u64;
    let mut t = None;
    for line in f.split(|&b| b == b'\n') {
        if line == b": ping" {
            return Frame::Ping;
        } else if let Some(e) = line.strip_prefix(b"event: ") {
            event = e;
        } else if let Some(i) = line.strip_prefix(b"id: ") {
            id = std::str::from_utf8(i)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some(d) = line.strip_prefix(b"data: ") {
            if let Some(p) = find(d, br#""t":"#) {
                let digits = &d[p + 4..];
                let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
                t = std::str::from_utf8(&digits[..n])
                    .ok()
                    .and_then(|s| s.parse().ok());
            }
        }
    }
    match event {
        b"init" => Frame::Init,
        b"update" | b"delete" => Frame::Update { id, t },
        b"join" | b"leave" => Frame::Presence,
        _ => Frame::Other,
    }
}

/// An SSE stream over raw TCP: de-chunks the HTTP body, splits frames.
struct SseConn {
    stream: TcpStream,
    raw: Vec<u8>,
    /// Bytes of the current chunk still to come; `None` = a size line is next.
    chunk_left: Option<usize>,
    text: Vec<u8>,
    scanned: usize,
}

impl SseConn {
    async fn open(
        addr: SocketAddr,
        session: &str,
        user: &str,
        after: Option<u64>,
    ) -> Result<SseConn> {
        let mut stream = TcpStream::connect(addr).await?;
        let resume = after
            .map(|a| format!("Last-Event-ID: {a}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET /events/{session}?username={user} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{resume}\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::with_capacity(2048);
        let head_end = loop {
            if let Some(i) = find(&raw, b"\r\n\r\n") {
                break i + 4;
            }
            if stream.read_buf(&mut raw).await? == 0 {
                bail!("closed before the response head");
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET /events: {}", head.lines().next().unwrap_or(""));
        }
        if !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            bail!("expected a chunked SSE body: {head}");
        }
        raw.drain(..head_end);
        Ok(SseConn {
            stream,
            raw,
            chunk_left: None,
            text: Vec::with_capacity(1024),
            scanned: 0,
        })
    }

    /// Moves de-chunked bytes from `raw` to `text`. False at the last chunk.
    fn dechunk(&mut self) -> Result<bool> {
        let mut pos = 0;
        loop {
            match self.chunk_left {
                None => {
                    let Some(eol) = find(&self.raw[pos..], b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&self.raw[pos..pos + eol])?;
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .with_context(|| format!("bad chunk size {line:?}"))?;
                    pos += eol + 2;
                    if size == 0 {
                        self.raw.drain(..pos);
                        return Ok(false);
                    }
                    self.chunk_left = Some(size);
                }
                Some(0) => {
                    if self.raw.len() - pos < 2 {
                        break;
                    }
                    pos += 2; // the CRLF after a chunk
                    self.chunk_left = None;
                }
                Some(n) => {
                    let take = n.min(self.raw.len() - pos);
                    if take == 0 {
                        break;
                    }
                    self.text.extend_from_slice(&self.raw[pos..pos + take]);
                    pos += take;
                    self.chunk_left = Some(n - take);
                }
            }
        }
        self.raw.drain(..pos);
        Ok(true)
    }

    /// The next whole frame, or `None` when the stream ended.
    async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(i) = find(&self.text[self.scanned..], b"\n\n") {
                let end = self.scanned + i;
                let frame = parse_frame(&self.text[..end]);
                self.text.drain(..end + 2);
                self.scanned = 0;
                return Ok(Some(frame));
            }
            self.scanned = self.text.len().saturating_sub(1);
            if self.stream.read_buf(&mut self.raw).await? == 0 {
                return Ok(None);
            }
            if !self.dechunk()? {
                return Ok(None);
            }
        }
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct SubReport {
    updates: u64,
    presence: u64,
    pings: u64,
    lat_us: Vec<u32>,
}

/// Opens `n` subscribers on `sessions` (round robin), at most `parallel`
/// connecting at once; returns their tasks once every one has its `init`
/// (or after `deadline`), and the time that took.
async fn connect_many(
    addr: SocketAddr,
    sessions: &[String],
    n: usize,
    parallel: usize,
    stop: CancellationToken,
    deadline: Duration,
) -> (
    Vec<tokio::task::JoinHandle<Result<SubReport>>>,
    Duration,
    usize,
) {
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(parallel));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let session = sessions[i % sessions.len()].clone();
        let (ready, failed, gate, stop) =
            (ready.clone(), failed.clone(), gate.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate open");
            let mut sse = match SseConn::open(addr, &session, &format!("s{i}"), None).await {
                Ok(s) => s,
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let mut permit = Some(permit);
            let mut rep = SubReport::default();
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => break,
                    f = sse.next() => f,
                };
                match frame? {
                    None => break,
                    Some(Frame::Init) => {
                        permit.take();
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Frame::Update { t, .. }) => {
                        rep.updates += 1;
                        if let Some(t) = t {
                            rep.lat_us
                                .push(now_us().saturating_sub(t).min(u32::MAX as u64) as u32);
                        }
                    }
                    Some(Frame::Presence) => rep.presence += 1,
                    Some(Frame::Ping) => rep.pings += 1,
                    Some(Frame::Other) => {}
                }
            }
            Ok(rep)
        }));
    }
    let until = started + deadline;
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    (tasks, took, ready.load(Ordering::Relaxed))
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Result<SubReport>>>) -> (SubReport, usize) {
    let mut all = SubReport::default();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                all.updates += r.updates;
                all.presence += r.presence;
                all.pings += r.pings;
                all.lat_us.extend(r.lat_us);
            }
            _ => errors += 1,
        }
    }
    (all, errors)
}

// ---------------------------------------------------------------- output

/// Results, printed as they come and as a table at the end.
#[derive(Default)]
struct Report {
    rows: Mutex<Vec<(String, String)>>,
}

impl Report {
    fn add(&self, scenario: impl Into<String>, result: impl Into<String>) {
        let (s, r) = (scenario.into(), result.into());
        println!("  {s}: {r}");
        let _ = std::io::stdout().flush();
        self.rows.lock().unwrap().push((s, r));
    }
}

fn tmp_dir(name: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("sessiond-e2e-{name}-"))
        .tempdir()?)
}

// ---------------------------------------------------------------- writes

/// `c` connections doing `GET /status` for `window`: (req/s, latencies).
async fn status_ceiling(addr: SocketAddr, c: usize, window: Duration) -> Result<(f64, Lat)> {
    let stop = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..c {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut lat = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let (status, _) = conn.call("GET", "/status", "").await?;
                if status != 200 {
                    bail!("GET /status: {status}");
                }
                lat.push(t.elapsed().as_micros() as u32);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((all.len() as f64 / secs, Lat::new(all)))
}

/// `n` writers alternating PUT and PATCH for `window`: (req/s, latencies, errors).
async fn write_load(
    addr: SocketAddr,
    sessions: Arc<Vec<String>>,
    n: usize,
    window: Duration,
) -> Result<(f64, Lat, u64)> {
    let errors = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(Conn::open(addr).await?);
    }
    let started = Instant::now();
    let stop = started + window;
    let mut tasks = Vec::new();
    for (w, mut conn) in conns.into_iter().enumerate() {
        let (sessions, errors) = (sessions.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let path = format!("/sessions/{}?username=w{w}", sessions[w % sessions.len()]);
            let mut seq = 0u64;
            while Instant::now() < stop {
                let method = if seq.is_multiple_of(2) {
                    "PUT"
                } else {
                    "PATCH"
                };
                let body = doc(w, seq);
                let t = Instant::now();
                let (status, _) = conn.call(method, &path, &body).await?;
                if status != 200 {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed().as_micros() as u32);
                seq += 1;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((
        all.len() as f64 / secs,
        Lat::new(all),
        errors.load(Ordering::Relaxed),
    ))
}

async fn scenario_writes(mode: Mode, report: &Report, only_ceiling: bool) -> Result<()> {
    println!("== writes (FSYNC=always) and the GET /status ceiling");
    let dir = tmp_dir("writes")?;
    let data = dir.path().join("data");
    let server = Server::start(&data, &[("FSYNC", "always")]).await?;
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(create_session(server.addr).await?);
    }
    let sessions = Arc::new(sessions);
    let (cpu0, own0) = (server.cpu()?, own_cpu());
    let (before, lat) = status_ceiling(server.addr, 64, mode.window()).await?;
    let secs = mode.window().as_secs_f64();
    let cpu_status = (server.cpu()? - cpu0).as_secs_f64() / secs;
    let own = (own_cpu() - own0).as_secs_f64() / secs;
    report.add(
        "ceiling GET /status c=64 (before writes)",
        format!(
            "{before:.0} req/s, {}; CPU: server {:.0}%, load generator {:.0}%",
            lat.summary(),
            cpu_status * 100.0,
            own * 100.0
        ),
    );
    if only_ceiling {
        return server.stop();
    }
    let mut at64 = 0.0;
    for n in [1, 16, 64, 256] {
        let (cpu0, own0) = (server.cpu()?, own_cpu());
        let (rate, lat, errors) =
            write_load(server.addr, sessions.clone(), n, mode.window()).await?;
        let cpu = (server.cpu()? - cpu0).as_secs_f64() / mode.window().as_secs_f64();
        let own = (own_cpu() - own0).as_secs_f64() / mode.window().as_secs_f64();
        if n == 64 {
            at64 = rate;
        }
        report.add(
            format!("writes N={n}"),
            format!(
                "{rate:.0} req/s, {}; {errors} errors; CPU: server {:.0}%, load generator {:.0}%",
                lat.summary(),
                cpu * 100.0,
                own * 100.0
            ),
        );
    }
    let (after, lat) = status_ceiling(server.addr, 64, mode.window()).await?;
    report.add(
        "ceiling GET /status c=64 (after writes)",
        format!("{after:.0} req/s, {}", lat.summary()),
    );
    let ceiling = (before + after) / 2.0;
    report.add(
        "writes N=64 / GET /status ceiling",
        format!("{:.2}x ({at64:.0} / {ceiling:.0})", at64 / ceiling),
    );
    server.stop()
}

// ---------------------------------------------------------------- fan-out

/// Writers at `rate` writes/s in total over `sessions` for `window`, from
/// `writers` connections. Returns the number of writes acknowledged.
async fn paced_writes(
    addr: SocketAddr,
    sessions: Arc<Vec<String>>,
    writers: usize,
    rate: f64,
    window: Duration,
) -> Result<u64> {
    let mut tasks = Vec::new();
    let period = Duration::from_secs_f64(writers as f64 / rate);
    let stop = Instant::now() + window;
    for w in 0..writers {
        let sessions = sessions.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut done = 0u64;
            let mut i = w;
            while Instant::now() < stop {
                tick.tick().await;
                let path = format!("/sessions/{}?username=w{w}", sessions[i % sessions.len()]);
                i += writers;
                let (status, body) = conn.call("PATCH", &path, &doc(w, done)).await?;
                if status != 200 {
                    bail!("PATCH: {status} {}", String::from_utf8_lossy(&body));
                }
                done += 1;
            }
            Ok::<_, anyhow::Error>(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}

async fn fanout_case(
    mode: Mode,
    report: &Report,
    server: &Server,
    label: &str,
    subscribers: usize,
    sessions: usize,
    rate: f64,
) -> Result<()> {
    let addr = server.addr;
    let mut ids = Vec::new();
    for _ in 0..sessions {
        ids.push(create_session(addr).await?);
    }
    let ids = Arc::new(ids);
    let stop = CancellationToken::new();
    let (tasks, took, ready) = connect_many(
        addr,
        &ids,
        subscribers,
        256,
        stop.clone(),
        Duration::from_secs(120),
    )
    .await;
    report.add(
        format!("fanout {label}: connect"),
        format!(
            "{ready}/{subscribers} subscribers had init after {:.2} s",
            took.as_secs_f64()
        ),
    );
    // Let the presence batches of the connect settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writers = if sessions == 1 { 1 } else { 10 };
    let window = mode.fanout_window();
    let cpu0 = server.cpu()?;
    let own0 = own_cpu();
    let started = Instant::now();
    let writes = paced_writes(addr, ids.clone(), writers, rate, window).await?;
    let write_secs = started.elapsed().as_secs_f64();
    let cpu = (server.cpu()? - cpu0).as_secs_f64() / write_secs;
    let own = (own_cpu() - own0).as_secs_f64() / write_secs;
    // Give the last deliveries up to 10 s to arrive, then stop.
    tokio::time::sleep(Duration::from_secs(if mode.full { 10 } else { 3 })).await;
    stop.cancel();
    let (all, errors) = collect(tasks).await;
    let per_session = subscribers / sessions;
    let expected = writes * per_session as u64;
    let lat = Lat::new(all.lat_us);
    report.add(
        format!("fanout {label}: {rate:.0} writes/s"),
        format!(
            "{writes} writes ({:.1}/s of the {rate:.0}/s asked), {}/{expected} deliveries ({:.0} delivered/s over {write_secs:.1} s); publish→receive {}; {} presence frames ({:.1}/subscriber); {errors} stream errors; CPU: server {:.0}%, load generator {:.0}% (of one core)",
            writes as f64 / write_secs,
            all.updates,
            all.updates as f64 / write_secs,
            lat.summary(),
            all.presence,
            all.presence as f64 / subscribers as f64,
            cpu * 100.0,
            own * 100.0
        ),
    );
    Ok(())
}

async fn scenario_fanout(mode: Mode, report: &Report) -> Result<()> {
    println!("== fan-out");
    for (label, subs, sessions, rate) in [
        ("1k subscribers on 1 session", 1_000, 1, 10.0),
        ("10k subscribers on 1 session", 10_000, 1, 10.0),
        ("10k subscribers over 100 sessions", 10_000, 100, 1000.0),
    ] {
        let dir = tmp_dir("fanout")?;
        let server = Server::start(&dir.path().join("data"), &[("FSYNC", "always")]).await?;
        fanout_case(mode, report, &server, label, subs, sessions, rate).await?;
        server.stop()?;
    }
    Ok(())
}

// ---------------------------------------------------------------- idle

async fn scenario_idle(mode: Mode, report: &Report, limit: u64) -> Result<()> {
    println!("== idle streams (HEARTBEAT_SECS=1)");
    let dir = tmp_dir("idle")?;
    let server = Server::start(&dir.path().join("data"), &[("HEARTBEAT_SECS", "1")]).await?;
    let addr = server.addr;
    let id = create_session(addr).await?;
    let ids = Arc::new(vec![id]);
    // Warm the runtime with one stream, then take the baseline.
    {
        let stop = CancellationToken::new();
        let (tasks, _, _) =
            connect_many(addr, &ids, 1, 1, stop.clone(), Duration::from_secs(10)).await;
        stop.cancel();
        collect(tasks).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = server.rss_kib()?;
    let stop = CancellationToken::new();
    let (mut tasks, took, ready) = connect_many(
        addr,
        &ids,
        10_000,
        256,
        stop.clone(),
        Duration::from_secs(120),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = server.rss_kib()?;
    report.add(
        "idle 10k streams: server RSS",
        format!(
            "{ready} streams in {:.2} s; RSS {base} KiB → {rss} KiB: {:.1} KiB per stream",
            took.as_secs_f64(),
            (rss - base) as f64 / ready.max(1) as f64
        ),
    );
    let window = if mode.full {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(6)
    };
    let cpu0 = server.cpu()?;
    tokio::time::sleep(window).await;
    let cpu = (server.cpu()? - cpu0).as_secs_f64();
    let pings = ready as f64 * window.as_secs_f64();
    report.add(
        "idle 10k streams: heartbeat cost",
        format!(
            "server CPU {:.1}% of a core at 1 ping/s per stream = {:.1} µs per ping; at the default 15 s: {:.2}% of a core",
            cpu / window.as_secs_f64() * 100.0,
            cpu * 1e6 / pings,
            cpu / window.as_secs_f64() * 100.0 / 15.0
        ),
    );
    // Then as many as the open-file limits allow (one fd per stream on each
    // side; keep a margin for the server's listener, log files and the like).
    let target = (limit as usize).saturating_sub(64);
    let more = target.saturating_sub(ready);
    let started = Instant::now();
    let (tasks2, _, ready2) =
        connect_many(addr, &ids, more, 256, stop.clone(), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss2 = server.rss_kib()?;
    let held = ready + ready2;
    report.add(
        "idle max streams",
        format!(
            "{held} streams held (open-file limit {limit} per process) after {:.1} s more; RSS {rss2} KiB: {:.1} KiB per stream",
            started.elapsed().as_secs_f64(),
            (rss2 - base) as f64 / held.max(1) as f64
        ),
    );
    // Is the server still serving with every descriptor in use?
    let t = Instant::now();
    let probe = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = Conn::open(addr).await?;
        c.call("GET", "/status", "").await
    })
    .await;
    report.add(
        "idle max streams: GET /status at the limit",
        match probe {
            Ok(Ok((s, _))) => format!("{s} in {:.1} ms", t.elapsed().as_secs_f64() * 1e3),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => "no answer within 5 s".into(),
        },
    );
    stop.cancel();
    tasks.extend(tasks2);
    collect(tasks).await;
    server.stop()
}

// ---------------------------------------------------------------- logs made in-process

/// Writes `events` events over `sessions` sessions straight through the log
/// library (FSYNC=never): a created event per session, then ~200-byte
/// patches round robin. Returns the session ids and the last offset.
async fn make_log(data: &Path, sessions: usize, events: u64) -> Result<(Vec<ulid::Ulid>, u64)> {
    let (log, _) = Log::open(
        data,
        LogOptions {
            fsync: FsyncPolicy::Never,
            ..LogOptions::default()
        },
    )?;
    log.start_writer(Box::new(|_| {}));
    let ids: Vec<ulid::Ulid> = (0..sessions).map(|_| ulid::Ulid::generate()).collect();
    let body = |json: String| {
        EventBody {
            json,
            username: "bench".into(),
            at_ms: 1_764_780_350_123,
        }
        .encode()
    };
    let mut batch = Vec::new();
    for id in &ids {
        batch.push(AppendEntry {
            key: id.0,
            kind: RecordKind::Created,
            body: body(r#"{"title":"bench"}"#.into()),
            precondition: Precondition::None,
        });
    }
    let mut written = 0u64;
    let mut last = 0;
    while written < events {
        let n = (events - written).min(4096);
        batch.extend((0..n).map(|i| {
            let seq = written + i;
            AppendEntry {
                key: ids[(seq % sessions as u64) as usize].0,
                kind: RecordKind::Patched,
                body: body(doc((seq % 64) as usize, seq)),
                precondition: Precondition::None,
            }
        }));
        for r in log.append_batch(std::mem::take(&mut batch)).await {
            last = r.map_err(|e| anyhow!("append: {e}"))?;
        }
        written += n;
    }
    log.shutdown();
    drop(log);
    Ok((ids, last))
}

// ---------------------------------------------------------------- resume

async fn scenario_resume(_mode: Mode, report: &Report) -> Result<()> {
    println!("== resume 100k events behind");
    let dir = tmp_dir("resume")?;
    let data = dir.path().join("data");
    let (ids, last) = make_log(&data, 1, 100_000).await?;
    let server = Server::start(&data, &[("FSYNC", "always")]).await?;
    let id = ids[0].to_string();
    for round in 0..2 {
        let cpu0 = server.cpu()?;
        let started = Instant::now();
        let mut sse = SseConn::open(server.addr, &id, "late", Some(0)).await?;
        let mut got = 0u64;
        let deadline = started + Duration::from_secs(120);
        loop {
            match tokio::time::timeout_at(deadline.into(), sse.next()).await {
                Err(_) => bail!("catch-up not done within 120 s ({got} events)"),
                Ok(r) => match r? {
                    None => bail!("stream ended during catch-up"),
                    Some(Frame::Update { id, .. }) => {
                        got += 1;
                        if id >= last {
                            break;
                        }
                    }
                    Some(_) => {}
                },
            }
        }
        let caught = started.elapsed();
        let cpu = (server.cpu()? - cpu0).as_secs_f64();
        // Live: a new write reaches the same stream.
        let mut c = Conn::open(server.addr).await?;
        let sent = Instant::now();
        let (status, _) = c
            .call("PATCH", &format!("/sessions/{id}?username=w"), &doc(0, 0))
            .await?;
        if status != 200 {
            bail!("PATCH {status}");
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(10), sse.next()).await {
                Err(_) => bail!("live event not received within 10 s"),
                Ok(r) => {
                    if let Some(Frame::Update { id, .. }) = r? {
                        if id > last {
                            break;
                        }
                    }
                }
            }
        }
        let live = started.elapsed();
        report.add(
            format!("resume 100k behind (round {})", round + 1),
            format!(
                "{got} events in {:.3} s = {:.0} events/s; live (a new write received) at {:.3} s, write→receive {:.1} ms; server CPU {:.2} s",
                caught.as_secs_f64(),
                got as f64 / caught.as_secs_f64(),
                live.as_secs_f64(),
                sent.elapsed().as_secs_f64() * 1e3,
                cpu
            ),
        );
    }
    server.stop()
}

// ---------------------------------------------------------------- startup

async fn scenario_startup(mode: Mode, report: &Report) -> Result<()> {
    println!("== startup: fold time, clean restart vs after SIGKILL");
    for events in [100_000u64, 1_000_000] {
        let dir = tmp_dir("startup")?;
        let data = dir.path().join("data");
        let made = Instant::now();
        make_log(&data, 1000, events).await?;
        println!(
            "  (log of {events} events written in {:.1} s)",
            made.elapsed().as_secs_f64()
        );
        let mut clean = Vec::new();
        let mut killed = Vec::new();
        let mut fold_clean = Vec::new();
        let mut fold_killed = Vec::new();
        let (mut cpu_clean, mut cpu_killed) = (Vec::new(), Vec::new());
        // Warm the page cache once so both cases read from memory.
        Server::start(&data, &[]).await?.stop()?;
        for _ in 0..mode.startup_rounds() {
            let s = Server::start(&data, &[]).await?;
            clean.push(s.startup.as_secs_f64());
            fold_clean.push(s.fold_ms().unwrap_or(0));
            cpu_clean.push(s.cpu()?.as_secs_f64());
            // A write, then a crash: the next start recovers an unclean tail.
            let id = create_session(s.addr).await?;
            let mut c = Conn::open(s.addr).await?;
            c.call("PATCH", &format!("/sessions/{id}"), &doc(0, 0))
                .await?;
            s.kill9()?;
            let s = Server::start(&data, &[]).await?;
            killed.push(s.startup.as_secs_f64());
            fold_killed.push(s.fold_ms().unwrap_or(0));
            cpu_killed.push(s.cpu()?.as_secs_f64());
            s.stop()?;
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let medu = |v: &mut Vec<u64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (c, k) = (med(&mut clean), med(&mut killed));
        report.add(
            format!("startup {events} events"),
            format!(
                "spawn→listening: clean {:.3} s, after SIGKILL {:.3} s, ratio {:.2}; fold (server's log line): clean {} ms, after SIGKILL {} ms; server CPU until listening: clean {:.2} s, after SIGKILL {:.2} s (medians of {})",
                c,
                k,
                k / c,
                medu(&mut fold_clean),
                medu(&mut fold_killed),
                med(&mut cpu_clean),
                med(&mut cpu_killed),
                mode.startup_rounds()
            ),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- main

const SCENARIOS: [&str; 6] = ["writes", "ceiling", "fanout", "idle", "resume", "startup"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("make-log") {
        // `make-log <dir> <sessions> <events>`: a log to profile a start with.
        let [_, dir, sessions, events] = &args[..] else {
            bail!("usage: make-log <data dir> <sessions> <events>");
        };
        let rt = tokio::runtime::Runtime::new()?;
        let (_, last) =
            rt.block_on(make_log(Path::new(dir), sessions.parse()?, events.parse()?))?;
        println!("wrote offsets 0..={last} to {dir}");
        return Ok(());
    }
    let mut full = false;
    let mut chosen = Vec::new();
    for a in args {
        match a.as_str() {
            "--full" => full = true,
            "all" => chosen.extend(["writes", "fanout", "idle", "resume", "startup"]),
            s if SCENARIOS.contains(&s) => {
                chosen.push(SCENARIOS[SCENARIOS.iter().position(|x| *x == s).unwrap()])
            }
            s if s.starts_with('-') => {} // other harness flags
            s => bail!(
                "unknown scenario {s:?}: use {} or all, and --full for longer windows",
                SCENARIOS.join(", ")
            ),
        }
    }
    if chosen.is_empty() {
        chosen.extend(["writes", "fanout", "idle", "resume", "startup"]);
    }
    let limit = sessiond::server::raise_open_file_limit();
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("e2e: watchdog: the run took over {WATCHDOG:?}; stopping");
        for pid in CHILDREN.lock().unwrap().iter() {
            // SAFETY: kill(2) on our own children.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        std::process::exit(2);
    });
    let mode = Mode { full };
    println!(
        "sessiond e2e ({} mode), open-file limit {limit}, {} CPUs, binary {}",
        if full { "full" } else { "quick" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        env!("CARGO_BIN_EXE_sessiond")
    );
    let rt = tokio::runtime::Runtime::new()?;
    let report = Report::default();
    let started = Instant::now();
    rt.block_on(async {
        for s in &chosen {
            let r = match *s {
                "writes" => scenario_writes(mode, &report, false).await,
                "ceiling" => scenario_writes(mode, &report, true).await,
                "fanout" => scenario_fanout(mode, &report).await,
                "idle" => scenario_idle(mode, &report, limit).await,
                "resume" => scenario_resume(mode, &report).await,
                "startup" => scenario_startup(mode, &report).await,
                _ => unreachable!(),
            };
            if let Err(e) = r {
                report.add(format!("{s} FAILED"), format!("{e:#}"));
            }
        }
    });
    println!("\n== summary ({:.0} s)", started.elapsed().as_secs_f64());
    for (s, r) in report.rows.lock().unwrap().iter() {
        println!("| {s} | {r} |");
    }
    Ok(())
}
