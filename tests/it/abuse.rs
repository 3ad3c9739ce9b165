//! Abusive clients against the real binary (issue 5; cases 12, 13, 14):
//! thousands of connections dropped mid-request, a subscriber that never
//! reads, slow-loris headers, and a reconnect storm. Each ends with the
//! server answering and `/status` counting exactly the streams still open.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::chaos::{raise_nofile, vm_rss_kib};
use crate::common::{parse_block, BinServer, Block, Sse, DEADLINE};

const FAST: [(&str, &str); 2] = [("FSYNC", "never"), ("HEARTBEAT_SECS", "1")];

/// A raw SSE connection that reads only when asked (chunked body decoded).
struct RawSse {
    stream: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    head_done: bool,
    parsed: usize,
}

impl RawSse {
    async fn connect(
        addr: SocketAddr,
        path: &str,
        rcvbuf: Option<usize>,
        last_id: Option<u64>,
    ) -> RawSse {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n as u32).unwrap();
        }
        let mut stream = sock.connect(addr).await.expect("connect");
        let resume = last_id
            .map(|i| format!("Last-Event-ID: {i}\r\n"))
            .unwrap_or_default();
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        RawSse {
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            head_done: false,
            parsed: 0,
        }
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.head_done {
            let Some(h) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..h]).to_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            self.raw.drain(..h + 4);
            self.head_done = true;
        }
        while let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.raw[..eol]).unwrap(), 16).unwrap();
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// The next block, or `None` when the connection ended.
    async fn next_block(&mut self) -> Option<Block> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(p) = self.body[self.parsed..]
                .windows(2)
                .position(|w| w == b"\n\n")
            {
                let text = std::str::from_utf8(&self.body[self.parsed..self.parsed + p])
                    .unwrap()
                    .to_string();
                self.parsed += p + 2;
                return Some(parse_block(&text));
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => panic!("no SSE block within {DEADLINE:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    self.dechunk();
                }
            }
        }
    }

    async fn next_persisted(&mut self) -> Option<Block> {
        loop {
            let b = self.next_block().await?;
            if b.id.is_some() && b.name() != "init" {
                return Some(b);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_connections_dropped_mid_request() {
    raise_nofile();
    let dir = crate::common::new_dir();
    let server = BinServer::start(dir.path(), &FAST).await;
    let http = server.http.clone();
    let (s, _) = http.create(&json!({"n": 0})).await;
    let before = http.status().await["log"]["nextOffset"].clone();
    let addr = server.addr;
    const TOTAL: usize = 3000;
    let mut done = 0;
    for wave in 0..TOTAL / 250 {
        let tasks: Vec<_> = (0..250)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut c = TcpStream::connect(addr).await.expect("connect");
                    let req: Vec<u8> = match (wave * 250 + i) % 6 {
                        0 => Vec::new(),
                        1 => b"GET /sta".to_vec(),
                        2 => b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\": 1, ".to_vec(),
                        3 => format!("PATCH /sessions/{s} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"a\":").into_bytes(),
                        4 => format!("PUT /sessions/{s} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{{\"a\":").into_bytes(),
                        _ => format!("GET /events/{s}?username=drop HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
                    };
                    let _ = c.write_all(&req).await;
                    if (wave * 250 + i) % 6 == 5 {
                        // Wait for the status line, then vanish mid-stream.
                        let mut b = [0u8; 16];
                        let _ = tokio::time::timeout(DEADLINE, c.read(&mut b)).await;
                    }
                    if i % 2 == 0 {
                        // Half of them reset instead of closing.
                        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                    }
                    drop(c);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
            done += 1;
        }
    }
    // Still answering, nothing written, no stream left counted.
    let (code, _) = (http.get("/status").await.status, ());
    assert_eq!(code, 200);
    http.wait_clients(&s, 0).await;
    let status = http.status().await;
    assert_eq!(
        status["log"]["nextOffset"], before,
        "a dropped request was written"
    );
    assert_eq!(status["clients"], 0);
    http.patch(&s, &json!({"n": 1})).await;
    assert_eq!(http.state(&s).await["data"], json!({"n": 1}));
    eprintln!("dropped connections: {done} opened and dropped mid-request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_never_reads_costs_bounded_memory() {
    let dir = crate::common::new_dir();
    let server = BinServer::start(dir.path(), &FAST).await;
    let http = server.http.clone();
    let (s1, c1) = http.create(&json!({})).await;
    let (s2, c2) = http.create(&json!({})).await;
    // Z: reads nothing after its request, with a 4 KB receive buffer.
    let mut z = RawSse::connect(
        server.addr,
        &format!("/events/{s1}?username=z"),
        Some(4096),
        None,
    )
    .await;
    const WRITES: usize = 6000;
    // Fast subscribers: read everything as it comes.
    let mut fast = Vec::new();
    for (s, c, name) in [(&s1, c1, "f1"), (&s2, c2, "f2")] {
        let mut f = Sse::connect(&format!("{}/events/{s}?username={name}", server.base), &[]).await;
        assert_eq!(f.next_named("init").await.offset(), c);
        fast.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < WRITES / 2 {
                got.push(f.next_persisted().await.expect("stream open").offset());
            }
            (f, got)
        }));
    }
    http.wait_clients(&s1, 2).await;
    let baseline = vm_rss_kib(server.pid());
    let mut peak = baseline;
    let filler = "x".repeat(1000);
    let mut acked1 = Vec::new();
    let mut acked2 = Vec::new();
    for batch in 0..WRITES / 200 {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let http = http.clone();
                let target = if i % 2 == 0 { s1.clone() } else { s2.clone() };
                let body = json!({format!("k{}", i % 10): format!("{batch}-{i}-{filler}")});
                tokio::spawn(async move { (i % 2, http.patch(&target, &body).await) })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                (0, o) => acked1.push(o),
                (_, o) => acked2.push(o),
            }
        }
        peak = peak.max(vm_rss_kib(server.pid()));
    }
    acked1.sort_unstable();
    acked2.sort_unstable();
    // The fast subscribers got everything of their session, in order.
    let mut keep = Vec::new();
    for (task, acked) in fast.into_iter().zip([&acked1, &acked2]) {
        let (f, got) = task.await.unwrap();
        assert_eq!(&got, acked, "a fast subscriber missed or reordered events");
        keep.push(f);
    }
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "never-reading subscriber: {WRITES} patches of ~1 KB; server RSS {} MiB at start, peak {} MiB",
        baseline / 1024,
        peak / 1024
    );
    assert!(
        growth_mib < 100,
        "server RSS grew by {growth_mib} MiB with a stalled subscriber"
    );
    // Z wakes up: a contiguous run from its init, resumed if the server cut it off.
    let init = loop {
        let b = z.next_block().await.expect("Z's stream");
        if b.name() == "init" {
            break b.offset();
        }
    };
    let mut got = Vec::new();
    let mut last = init;
    let mut reconnects = 0;
    while last < *acked1.last().unwrap() {
        match z.next_persisted().await {
            Some(b) => {
                last = b.offset();
                got.push(last);
            }
            None => {
                reconnects += 1;
                assert!(reconnects < 10, "Z keeps being cut off");
                z = RawSse::connect(
                    server.addr,
                    &format!("/events/{s1}?username=z"),
                    None,
                    Some(last),
                )
                .await;
            }
        }
    }
    let want: Vec<u64> = acked1.iter().copied().filter(|&o| o > init).collect();
    assert_eq!(got, want, "the stalled subscriber has a gap or a duplicate");
    drop((z, keep));
    http.wait_clients(&s1, 0).await;
    http.wait_clients(&s2, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_headers_time_out() {
    let dir = crate::common::new_dir();
    let server = BinServer::start(dir.path(), &FAST).await;
    const LORIS: usize = 50;
    let mut conns = Vec::new();
    for _ in 0..LORIS {
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        conns.push(c);
    }
    // Trickle one header line per connection every 500 ms until the server
    // closes them, bounded by a deadline well above the server's timeout.
    let deadline = tokio::time::Instant::now() + DEADLINE * 2;
    let mut open: Vec<bool> = vec![true; LORIS];
    let mut n = 0;
    while open.iter().any(|o| *o) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow-loris connections still open: {}",
            open.iter().filter(|o| **o).count()
        );
        // The server keeps answering others meanwhile.
        server.http.get("/status").await.expect(200);
        for (c, o) in conns.iter_mut().zip(open.iter_mut()) {
            if !*o {
                continue;
            }
            let mut b = [0u8; 1024];
            let closed = match tokio::time::timeout(Duration::from_millis(1), c.read(&mut b)).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => true,
                Ok(Ok(_)) => true, // an error answer (408) counts as cut off too
                Err(_) => c
                    .write_all(format!("X-Slow-{n}: a\r\n").as_bytes())
                    .await
                    .is_err(),
            };
            if closed {
                *o = false;
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "slow loris: {LORIS} connections trickling headers were closed after {n} rounds of 500 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_storm_of_1000_resuming_clients() {
    raise_nofile();
    let dir = crate::common::new_dir();
    let server = BinServer::start(dir.path(), &FAST).await;
    let http = server.http.clone();
    let (s, created) = http.create(&json!({"v": 0})).await;
    let mut offsets = vec![created];
    for i in 1..=20 {
        offsets.push(http.patch(&s, &json!({"v": i})).await);
    }
    const CLIENTS: usize = 1000;
    let resume_at = offsets[5];
    let expected: Vec<u64> = offsets[6..].to_vec();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = server.addr;
            let s = s.clone();
            let expected = expected.clone();
            tokio::spawn(async move {
                let mut c = RawSse::connect(
                    addr,
                    &format!("/events/{s}?username=storm"),
                    None,
                    Some(resume_at),
                )
                .await;
                let mut got = Vec::new();
                while got.len() < expected.len() {
                    let b = c.next_block().await.expect("stream open");
                    assert_ne!(b.name(), "init", "a valid resume id got init");
                    if b.id.is_some() {
                        got.push(b.offset());
                    }
                }
                assert_eq!(got, expected, "a resumed client has a gap or a duplicate");
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    http.wait_clients(&s, CLIENTS as u64).await;
    // All of them get a live write.
    let live = http.patch(&s, &json!({"v": "live"})).await;
    for c in &mut clients {
        assert_eq!(
            c.next_persisted().await.expect("stream open").offset(),
            live
        );
    }
    assert_eq!(http.status().await["clients"], CLIENTS as u64);
    drop(clients);
    http.wait_clients(&s, 0).await;
    let r = http
        .send(Method::GET, "/status", None, &[])
        .await
        .expect(200);
    assert_eq!(r.json()["clients"], 0);
    eprintln!(
        "reconnect storm: {CLIENTS} clients resumed at once, each got {} events then a live one",
        expected.len()
    );
}
