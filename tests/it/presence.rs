//! Presence: exact counts after abrupt closes, join/leave without ids,
//! batching, and the username rules.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Opens a raw stream and returns the socket once the response head arrived.
async fn raw_stream(addr: std::net::SocketAddr, path: &str, extra: &str) -> tokio::net::TcpStream {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut c = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, sock.read(&mut c))
            .await
            .expect("head in time")
            .unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&c[..n]);
    }
    sock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_after_abrupt_closes() {
    let s = TestServer::start_with(new_dir(), |c| c.heartbeat_secs = 1).await;
    let (id, _) = s.http.create(&json!({})).await;
    let mut socks = Vec::new();
    for i in 0..30 {
        socks.push(raw_stream(s.addr, &format!("/events/{id}?username=u{i}"), "").await);
    }
    s.http.wait_clients(&id, 30).await;
    // Close 20 without any goodbye: RST via SO_LINGER 0 for half, FIN for the rest.
    for (i, sock) in socks.drain(..20).enumerate() {
        if i % 2 == 0 {
            socket2::SockRef::from(&sock)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(sock);
    }
    // The server notices at its next write (heartbeat or event): write one.
    s.http.patch(&id, &json!({"poke": 1})).await;
    s.http.wait_clients(&id, 10).await;
    let st = s.http.status().await;
    assert_eq!(st["clients"], 10);
    drop(socks);
    s.http.patch(&id, &json!({"poke": 2})).await;
    s.http.wait_clients(&id, 0).await;
}

// cases.md case 2: presence frames never move the client's resume cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_02_presence_never_moves_the_resume_point() {
    let s = TestServer::start().await;
    let (id, _) = s.http.create(&json!({})).await;
    let mut a = s.sse(&format!("/events/{id}?username=a"), &[]).await;
    let init = a.next_named("init").await;
    let mut ids = vec![init.offset()];
    for _ in 0..50 {
        let mut b = s.sse(&format!("/events/{id}?username=b"), &[]).await;
        b.next_named("init").await;
        drop(b);
        s.http.wait_clients(&id, 1).await;
    }
    let o = s.http.patch(&id, &json!({"x": 1})).await;
    let mut presence = 0;
    let mut last_id = init.offset();
    loop {
        let blk = a.next_block().await.unwrap();
        if let Some(i) = &blk.id {
            last_id = i.parse().unwrap();
            ids.push(last_id);
        }
        match blk.name() {
            "join" | "leave" => {
                presence += 1;
                assert!(
                    blk.id.is_none() && !blk.raw.contains("id:"),
                    "no id line at all: {:?}",
                    blk.raw
                );
            }
            "update" if blk.offset() == o => break,
            _ => {}
        }
    }
    assert!(presence >= 2, "A saw the observer come and go");
    assert_eq!(
        ids,
        vec![init.offset(), o],
        "ids are only the init offset and write offsets"
    );
    // Disconnect A right after presence, write while it is away, resume with the held id.
    drop(a);
    let mut b = s.sse(&format!("/events/{id}?username=b"), &[]).await;
    b.next_named("init").await;
    drop(b);
    let x = s.http.patch(&id, &json!({"x": 2})).await;
    let mut a = s
        .sse(
            &format!("/events/{id}?username=a"),
            &[("last-event-id", &last_id.to_string())],
        )
        .await;
    let up = a.next_persisted().await.unwrap();
    assert_eq!(
        up.offset(),
        x,
        "the write made during the gap arrives exactly once"
    );
    let y = s.http.patch(&id, &json!({"x": 3})).await;
    assert_eq!(a.next_persisted().await.unwrap().offset(), y);
}

// cases.md case 8: newline injection through the username.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_08_usernames_cannot_inject_fields() {
    let s = TestServer::start().await;
    let (id, _) = s.http.create(&json!({})).await;
    let mut o = s.sse(&format!("/events/{id}?username=observer"), &[]).await;
    let init = o.next_named("init").await;
    o.next_named("join").await;
    let before = s.http.status().await["log"]["nextOffset"].clone();
    let long = "n".repeat(10_000);
    for bad in [
        "a%0Aevent:%20update%0Aid:%209999%0Adata:%20%7B%7D%0A%0A",
        "b%0D",
        "c%0D%0A",
        "%00",
        long.as_str(),
    ] {
        assert_eq!(
            s.http
                .get(&format!("/events/{id}?username={bad}"))
                .await
                .expect(400)
                .error_code(),
            "invalid_username"
        );
        s.http
            .json(
                Method::PATCH,
                &format!("/sessions/{id}?username={bad}"),
                &json!({"x": 1}),
            )
            .await
            .expect(400);
    }
    assert_eq!(
        s.http.status().await["log"]["nextOffset"],
        before,
        "nothing appended"
    );
    assert_eq!(s.http.clients(&id).await, 1, "nothing counted");
    // Accepted odd names are JSON-escaped inside data only.
    for (q, name) in [(":x", ":x"), ("%E2%80%A8", "\u{2028}")] {
        let mut c = s.sse(&format!("/events/{id}?username={q}"), &[]).await;
        c.next_named("init").await;
        let j = o.next_named("join").await;
        assert_eq!(j.json()["usernames"], json!([name]));
        let st = s.http.status().await;
        let names = st["sessions"][0]["usernames"].as_array().unwrap().clone();
        assert!(names.contains(&json!(name)), "{names:?}");
        let w = s
            .http
            .json(
                Method::PATCH,
                &format!("/sessions/{id}?username={q}"),
                &json!({"y": 1}),
            )
            .await
            .expect(200);
        let up = o.next_named("update").await;
        assert_eq!(up.offset(), w.json()["offset"].as_u64().unwrap());
        assert_eq!(up.json()["username"], name);
        drop(c);
        let l = o.next_named("leave").await;
        assert_eq!(l.json()["usernames"], json!([name]));
    }
    assert!(!o.raw.contains(&b'\r'));
    let text = String::from_utf8(o.raw.clone()).unwrap();
    for line in text.split('\n') {
        if let Some(e) = line.strip_prefix("event: ") {
            assert!(
                ["init", "update", "join", "leave"].contains(&e),
                "forged event {e:?}"
            );
        }
        if let Some(i) = line.strip_prefix("id: ") {
            assert_ne!(i, "9999");
        }
    }
    let _ = init;
}

// cases.md case 14: counters never leak for rejected or aborted connects; no off-by-one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_14_rejected_and_aborted_connects_are_not_counted() {
    let s = TestServer::start().await;
    let (id, _) = s.http.create(&json!({})).await;
    // (a) rejected connects.
    for _ in 0..100 {
        s.http
            .get("/events/01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .await
            .expect(404);
        s.http.get("/events/garbage").await.expect(400);
        s.http
            .get(&format!("/events/{id}?username=%0A"))
            .await
            .expect(400);
    }
    // (b) connect and close right after the status line.
    for _ in 0..100 {
        let sock = raw_stream(s.addr, &format!("/events/{id}"), "").await;
        drop(sock);
    }
    // (c) malformed Last-Event-ID, closed after the head too.
    for _ in 0..50 {
        let sock = raw_stream(s.addr, &format!("/events/{id}"), "Last-Event-ID: x\r\n").await;
        drop(sock);
    }
    s.http.patch(&id, &json!({"poke": 1})).await;
    s.http.wait_clients(&id, 0).await;
    assert_eq!(s.http.status().await["clients"], 0);

    // (e) a joiner's `join` count includes it and equals /status; a leave excludes the leaver.
    let mut o = s.sse(&format!("/events/{id}?username=o"), &[]).await;
    o.next_named("join").await;
    let mut j = s.sse(&format!("/events/{id}?username=j"), &[]).await;
    j.next_named("init").await;
    let join = o.next_named("join").await;
    assert_eq!(join.json()["clients"], 2);
    assert_eq!(join.json()["usernames"], json!(["j"]));
    assert_eq!(s.http.clients(&id).await, 2);
    drop(j);
    s.http.patch(&id, &json!({"poke": 2})).await;
    let leave = o.next_named("leave").await;
    assert_eq!(leave.json()["clients"], 1);
    assert_eq!(s.http.clients(&id).await, 1);

    // (d) 50 clients, then DELETE: each gets `delete` and its stream ends; S leaves /status.
    let mut many = Vec::new();
    for i in 0..50 {
        let mut c = s.sse(&format!("/events/{id}?username=c{i}"), &[]).await;
        c.next_named("init").await;
        many.push(c);
    }
    s.http.wait_clients(&id, 51).await;
    s.http
        .send(Method::DELETE, &format!("/sessions/{id}"), None, &[])
        .await
        .expect(204);
    for c in many.iter_mut().chain(std::iter::once(&mut o)) {
        c.next_named("delete").await;
        c.until_end().await;
    }
    let st = s.http.status().await;
    assert_eq!(st["clients"], 0);
    assert!(st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["id"] != id.as_str()));
    let (id2, _) = s.http.create(&json!({})).await;
    assert_eq!(s.http.clients(&id2).await, 0);
}

/// 300 clients joining at once cost a handful of `join` events per
/// subscriber, not one per joiner (presence is batched per window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_batched() {
    let s = TestServer::start().await;
    let (id, _) = s.http.create(&json!({})).await;
    let mut o = s.sse(&format!("/events/{id}?username=o"), &[]).await;
    o.next_named("join").await;
    let mut socks = Vec::new();
    for i in 0..300 {
        socks.push(raw_stream(s.addr, &format!("/events/{id}?username=u{i:03}"), "").await);
    }
    s.http.wait_clients(&id, 301).await;
    let mut joins = 0;
    let mut listed = 0;
    loop {
        let j = o.next_named("join").await;
        joins += 1;
        listed += j.json()["usernames"].as_array().unwrap().len();
        if j.json()["clients"] == 301 {
            break;
        }
    }
    assert!(listed <= 300);
    assert!(joins < 300 / 2, "{joins} join events for 300 joiners");
}

// cases.md case 13 (FIN/RST path): a killed client leaves within moments.
// The black-hole path (no FIN/RST ever) is bounded by TCP_USER_TIMEOUT and
// keepalive on accepted sockets; see README "Half-open connections".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_13_vanished_client_leaves() {
    let s = TestServer::start_with(new_dir(), |c| c.heartbeat_secs = 1).await;
    let (id, _) = s.http.create(&json!({})).await;
    let mut o = s.sse(&format!("/events/{id}?username=o"), &[]).await;
    o.next_named("join").await;
    let sock = raw_stream(s.addr, &format!("/events/{id}?username=gone"), "").await;
    o.next_named("join").await;
    socket2::SockRef::from(&sock)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(sock);
    // No writes: the heartbeat alone must notice.
    let leave = o.next_named("leave").await;
    assert_eq!(leave.json()["usernames"], json!(["gone"]));
    assert_eq!(leave.json()["clients"], 1);
    assert_eq!(s.http.clients(&id).await, 1);
}
