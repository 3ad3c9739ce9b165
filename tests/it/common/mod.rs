//! What the integration tests share: [`TestServer`] (the real server on
//! `127.0.0.1:0` in a temporary DATA_DIR, in-process through `server::run`),
//! [`BinServer`] (the real binary, for SIGKILL/SIGTERM), an HTTP client whose
//! calls print the body on a status mismatch, and [`Sse`], a raw-bytes SSE
//! reader with deadlines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sessiond::config::Config;
use sessiond::server::{run, Listen};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A data directory that outlives server restarts.
pub type Dir = Arc<TempDir>;

pub fn new_dir() -> Dir {
    Arc::new(tempfile::tempdir().expect("temp dir"))
}

/// A test configuration: defaults, the given directory, FSYNC=never for
/// speed where durability across a power cut is not what is tested.
pub fn config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        port: 0,
        ..Config::default()
    }
}

/// The server running in this test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub dir: Dir,
    pub http: Http,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), sessiond::server::RunError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(new_dir(), |_| {}).await
    }

    pub async fn start_with(dir: Dir, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(run(cfg.clone(), Listen::Listener(listener), async move {
                let _ = stopped.await;
            }));
            let base = format!("http://{addr}");
            let http = Http::new(&base);
            let mut server = TestServer {
                addr,
                base,
                dir: dir.clone(),
                http,
                stop: Some(stop),
                task: Some(task),
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                // A server stopped in this process a moment ago may still
                // have connection tasks holding its log (and so the
                // directory lock) for a few milliseconds after `run`
                // returned; a real process releases it at exit.
                Err(sessiond::server::RunError::Open {
                    source: sessiond::log::OpenError::Locked { .. },
                    ..
                }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the server stopped while starting: {e}"),
            }
        }
    }

    /// Waits until `/status` answers (the listener is pre-bound, so
    /// connections queue until the fold is done), or returns the error the
    /// server stopped with.
    async fn wait_ready(&mut self) -> Result<(), sessiond::server::RunError> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(r) = self
                .http
                .client
                .get(format!("{}/status", self.base))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return Ok(());
                }
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let task = self.task.take().expect("checked above");
                self.stop.take();
                return match task.await.expect("server task") {
                    Err(e) => Err(e),
                    Ok(()) => panic!("the server stopped while starting, without an error"),
                };
            }
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server (as on SIGTERM) and waits for it to finish.
    pub async fn stop(mut self) -> Dir {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server ran cleanly");
        self.dir.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::connect(&self.url(path), headers).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A response, with its body read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_string())
    }

    /// Asserts the status (printing the body otherwise) and, for errors, the
    /// `{"error","message"}` shape with this code.
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        if status >= 400 {
            let v = self.json();
            assert!(
                v["error"].is_string() && v["message"].is_string(),
                "error body: {v}"
            );
            assert_eq!(v.as_object().unwrap().len(), 2, "error body: {v}");
        }
        self
    }

    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
}

/// An HTTP client bound to one server.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    pub client: reqwest::Client,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            base: base.to_string(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(DEADLINE)
                .build()
                .unwrap(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut rb = self
            .client
            .request(method, format!("{}{}", self.base, path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some((ct, bytes)) = body {
            if !ct.is_empty() {
                rb = rb.header("content-type", ct);
            }
            rb = rb.body(bytes);
        }
        let r = rb.send().await.expect("request");
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("body").to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None, &[]).await
    }

    pub async fn json(&self, method: Method, path: &str, v: &Value) -> Resp {
        self.send(
            method,
            path,
            Some(("application/json", serde_json::to_vec(v).unwrap())),
            &[],
        )
        .await
    }

    /// POSTs a session and returns (id, offset).
    pub async fn create(&self, data: &Value) -> (String, u64) {
        let v = self
            .json(Method::POST, "/sessions", data)
            .await
            .expect(201)
            .json();
        (
            v["id"].as_str().unwrap().to_string(),
            v["offset"].as_u64().unwrap(),
        )
    }

    /// PATCHes a session and returns the offset.
    pub async fn patch(&self, id: &str, patch: &Value) -> u64 {
        self.json(Method::PATCH, &format!("/sessions/{id}"), patch)
            .await
            .expect(200)
            .json()["offset"]
            .as_u64()
            .unwrap()
    }

    pub async fn state(&self, id: &str) -> Value {
        self.get(&format!("/sessions/{id}"))
            .await
            .expect(200)
            .json()
    }

    pub async fn status(&self) -> Value {
        self.get("/status").await.expect(200).json()
    }

    /// `clients` of a session in `/status` (0 when not listed).
    pub async fn clients(&self, id: &str) -> u64 {
        let s = self.status().await;
        s["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .map_or(0, |x| x["clients"].as_u64().unwrap())
    }

    /// Waits until `/status` reports `n` clients on `id`.
    pub async fn wait_clients(&self, id: &str, n: u64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let now = self.clients(id).await;
            if now == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "clients on {id}: {now}, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One dispatched SSE block (an event or a comment/retry-only block).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Block {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comments: Vec<String>,
    /// The block's raw text, without the final blank line.
    pub raw: String,
}

impl Block {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("data is JSON")
    }
    pub fn name(&self) -> &str {
        self.event.as_deref().unwrap_or("")
    }
    pub fn offset(&self) -> u64 {
        self.id.as_deref().expect("id").parse().expect("numeric id")
    }
}

/// Parses one block per the SSE spec (LF line ends; the server sends no CR).
pub fn parse_block(raw: &str) -> Block {
    let mut b = Block {
        raw: raw.to_string(),
        ..Block::default()
    };
    for line in raw.split('\n') {
        if let Some(c) = line.strip_prefix(':') {
            b.comments.push(c.to_string());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => b.event = Some(value.to_string()),
            "id" => b.id = Some(value.to_string()),
            "retry" => b.retry = Some(value.to_string()),
            "data" => {
                b.data = Some(match b.data.take() {
                    Some(d) => format!("{d}\n{value}"),
                    None => value.to_string(),
                })
            }
            other => panic!("unknown SSE field {other:?} in block {raw:?}"),
        }
    }
    b
}

/// A raw SSE connection: every byte received is kept in `raw`.
pub struct Sse {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    stream: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    pub raw: Vec<u8>,
    parsed: usize,
    pub ended: bool,
}

impl Sse {
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Sse {
        let client = reqwest::Client::builder().build().unwrap();
        let mut rb = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = tokio::time::timeout(DEADLINE, rb.send())
            .await
            .expect("SSE connect in time")
            .expect("SSE connect");
        Sse {
            status: r.status(),
            headers: r.headers().clone(),
            stream: r.bytes_stream().boxed(),
            raw: Vec::new(),
            parsed: 0,
            ended: false,
        }
    }

    /// The next block, or `None` when the stream ended. Panics after [`DEADLINE`].
    pub async fn next_block(&mut self) -> Option<Block> {
        self.next_block_within(DEADLINE).await.unwrap_or_else(|| {
            panic!(
                "no SSE block within {DEADLINE:?}; got so far: {:?}",
                String::from_utf8_lossy(&self.raw)
            )
        })
    }

    /// `Some(block or end)` if something came within `d`, `None` on timeout.
    pub async fn next_block_within(&mut self, d: Duration) -> Option<Option<Block>> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some(pos) = find(&self.raw[self.parsed..], b"\n\n") {
                let raw = std::str::from_utf8(&self.raw[self.parsed..self.parsed + pos])
                    .expect("UTF-8 stream")
                    .to_string();
                self.parsed += pos + 2;
                return Some(Some(parse_block(&raw)));
            }
            if self.ended {
                return Some(None);
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(chunk))) => self.raw.extend_from_slice(&chunk),
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
            }
        }
    }

    /// The next event that has an `event:` name (skipping `retry` and pings).
    pub async fn next_event(&mut self) -> Option<Block> {
        loop {
            let b = self.next_block().await?;
            if b.event.is_some() {
                return Some(b);
            }
        }
    }

    /// The next event named `name`, skipping others (presence, pings).
    pub async fn next_named(&mut self, name: &str) -> Block {
        loop {
            let b = self
                .next_event()
                .await
                .unwrap_or_else(|| panic!("stream ended before a {name} event"));
            if b.name() == name {
                return b;
            }
        }
    }

    /// The next `update`/`delete` event (skipping presence), or None at the end.
    pub async fn next_persisted(&mut self) -> Option<Block> {
        loop {
            let b = self.next_event().await?;
            if b.id.is_some() && b.name() != "init" {
                return Some(b);
            }
        }
    }

    /// Reads until the stream ends, returning every block.
    pub async fn until_end(&mut self) -> Vec<Block> {
        let mut out = Vec::new();
        while let Some(b) = self.next_block().await {
            out.push(b);
        }
        out
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// The real `sessiond` binary, for tests that kill it.
pub struct BinServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub base: String,
    pub http: Http,
    pub stderr: Arc<Mutex<String>>,
}

impl BinServer {
    pub fn command(dir: &Path, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", dir)
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the binary and waits for its "listening on" line.
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> BinServer {
        let mut child = BinServer::command(dir, env)
            .spawn()
            .expect("spawn sessiond");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let pipe = child.stderr.take().unwrap();
        let buf = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    if let Ok(a) = rest.trim().parse() {
                        let _ = tx.send(a);
                    }
                }
                let mut b = buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(DEADLINE))
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("sessiond did not start: {}", stderr.lock().unwrap()));
        let base = format!("http://{addr}");
        BinServer {
            child,
            addr,
            http: Http::new(&base),
            base,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY-free: libc::kill on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits for the process to exit, returning its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "sessiond did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary until it exits (for refusals; killed after [`DEADLINE`])
/// and returns (exit code, stderr).
pub fn run_to_exit(dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = BinServer::command(dir, env).spawn().expect("run sessiond");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sessiond did not exit although it should refuse to start");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

pub fn data_path(dir: &Dir) -> PathBuf {
    dir.path().to_path_buf()
}
