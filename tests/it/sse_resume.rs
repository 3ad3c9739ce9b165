//! Resume with `Last-Event-ID` / `?lastEventId=`: no gap, no duplicate,
//! `init` for ids that cannot be honoured, slow consumers.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Offsets of the `update` events in the blocks (presence skipped).
fn updates(blocks: &[Block]) -> Vec<u64> {
    blocks
        .iter()
        .filter(|b| b.name() == "update")
        .map(Block::offset)
        .collect()
}

/// Reads until an update with offset `until` arrives.
async fn read_until(sse: &mut Sse, until: u64) -> Vec<Block> {
    let mut out = Vec::new();
    loop {
        let b = sse.next_block().await.expect("stream open");
        let done = b.name() == "update" && b.offset() == until;
        out.push(b);
        if done {
            return out;
        }
    }
}

// cases.md case 1: a client that keeps resending a stale Last-Event-ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_01_stale_last_event_id_is_stateless() {
    let s = TestServer::start().await;
    let (id, _) = s.http.create(&json!({})).await;
    let mut o = Vec::new();
    for i in 1..=5 {
        o.push(s.http.patch(&id, &json!({"n": i})).await);
    }
    for _ in 0..3 {
        let mut sse = s
            .sse(
                &format!("/events/{id}?username=a"),
                &[("last-event-id", &o[1].to_string())],
            )
            .await;
        let blocks = read_until(&mut sse, o[4]).await;
        assert!(
            blocks.iter().all(|b| b.name() != "init"),
            "no init for a valid id"
        );
        assert_eq!(updates(&blocks), o[2..].to_vec());
    }
    let mut sse = s
        .sse(
            &format!("/events/{id}"),
            &[("last-event-id", &o[4].to_string())],
        )
        .await;
    sse.next_named("join").await; // stream is live
    let o6 = s.http.patch(&id, &json!({"n": 6})).await;
    let blocks = read_until(&mut sse, o6).await;
    assert_eq!(updates(&blocks), vec![o6]);
    assert!(blocks.iter().all(|b| b.name() != "init"));
}

// cases.md case 3: unknown, future, malformed or oversized Last-Event-ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_03_unusable_last_event_id_gets_init() {
    let s = TestServer::start().await;
    let (other, _) = s.http.create(&json!({})).await;
    let before = s.http.patch(&other, &json!({"x": 0})).await;
    let (id, created) = s.http.create(&json!({"n": 0})).await;
    let first = s.http.patch(&id, &json!({"n": 1})).await;
    let between = s.http.patch(&other, &json!({"x": 1})).await;
    let second = s.http.patch(&id, &json!({"n": 2})).await;
    s.http.patch(&id, &json!({"n": 3})).await;
    let n = s.http.status().await["log"]["nextOffset"].as_u64().unwrap();
    let big = "9".repeat(10_000);
    let bad: Vec<String> = vec![
        n.to_string(),
        (n + 1000).to_string(),
        "18446744073709551615".into(),
        "18446744073709551616".into(),
        "-1".into(),
        "abc".into(),
        "5.0".into(),
        "+5".into(),
        "0x5".into(),
        "1e3".into(),
        "５".into(),
        big,
        before.to_string(),
    ];
    for (i, v) in bad.iter().enumerate() {
        let state = s.http.state(&id).await;
        let mut sse = s
            .sse(&format!("/events/{id}"), &[("last-event-id", v.as_str())])
            .await;
        assert_eq!(sse.status.as_u16(), 200, "{v:?}");
        let init = sse.next_named("init").await;
        assert_eq!(init.offset(), state["offset"].as_u64().unwrap(), "{v:?}");
        assert_eq!(init.json()["session"]["data"], state["data"]);
        let o = s.http.patch(&id, &json!({"i": i})).await;
        assert_eq!(sse.next_named("update").await.offset(), o, "{v:?}");
    }
    // The same through ?lastEventId=, and an empty header counts as none.
    let mut sse = s.sse(&format!("/events/{id}?lastEventId=abc"), &[]).await;
    sse.next_named("init").await;
    let mut sse = s
        .sse(&format!("/events/{id}"), &[("last-event-id", "")])
        .await;
    sse.next_named("init").await;
    // ` 5 ` is trimmed (HTTP optional whitespace); `05` = 5.
    let now = s.http.state(&id).await["offset"].as_u64().unwrap();
    let padded = format!("0{second}");
    for v in [format!(" {second} "), padded] {
        let mut sse = s
            .sse(&format!("/events/{id}"), &[("last-event-id", v.as_str())])
            .await;
        let blocks = read_until(&mut sse, now).await;
        assert!(blocks.iter().all(|b| b.name() != "init"), "{v:?}");
        assert!(updates(&blocks).iter().all(|&o| o > second));
    }
    // An id of another session inside this one's lifetime is valid.
    let mut sse = s
        .sse(
            &format!("/events/{id}"),
            &[("last-event-id", &between.to_string())],
        )
        .await;
    let blocks = read_until(&mut sse, now).await;
    assert!(blocks.iter().all(|b| b.name() != "init"));
    assert_eq!(updates(&blocks)[0], second);
    // The session's own creation offset replays everything after it.
    let mut sse = s
        .sse(
            &format!("/events/{id}"),
            &[("last-event-id", &created.to_string())],
        )
        .await;
    let blocks = read_until(&mut sse, now).await;
    assert_eq!(updates(&blocks)[0], first);
    // The header wins over the query parameter.
    let mut sse = s
        .sse(
            &format!("/events/{id}?lastEventId=abc"),
            &[("last-event-id", &second.to_string())],
        )
        .await;
    let blocks = read_until(&mut sse, now).await;
    assert!(blocks.iter().all(|b| b.name() != "init"));
    let mut sse = s
        .sse(&format!("/events/{id}?lastEventId={second}"), &[])
        .await;
    let blocks = read_until(&mut sse, now).await;
    assert!(blocks.iter().all(|b| b.name() != "init"));
}

// cases.md case 3, raw bytes: a header value with a 0xFF byte, sent by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_03_non_ascii_header_bytes_get_init() {
    let s = TestServer::start().await;
    let (id, o) = s.http.create(&json!({})).await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut req = format!("GET /events/{id} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5").into_bytes();
    req.extend_from_slice(&[0xFF]);
    req.extend_from_slice(b"\r\n\r\n");
    sock.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let want = format!("event: init\nid: {o}\n");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&buf).contains(&want) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, sock.read(&mut chunk))
            .await
            .expect("init in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

/// Resume while a writer runs: the reader reconnects hundreds of times at
/// random moments with the last id it dispatched; in the end it has every
/// write offset exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_has_no_gap_and_no_duplicate_under_reconnects() {
    let s =
        TestServer::start_with(new_dir(), |c| c.fsync = sessiond::log::FsyncPolicy::Never).await;
    let (id, created) = s.http.create(&json!({"n": 0})).await;
    let (other, _) = s.http.create(&json!({})).await;
    let writes = 1500u64;
    let writer = {
        let h = s.http.clone();
        let (id, other) = (id.clone(), other.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..writes {
                mine.push(h.patch(&id, &json!({"n": i})).await);
                if i % 3 == 0 {
                    h.patch(&other, &json!({"n": i})).await;
                }
            }
            mine
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut last = created;
    let mut reconnects = 0u64;
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut step = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    loop {
        let mut sse = s
            .sse(
                &format!("/events/{id}"),
                &[("last-event-id", &last.to_string())],
            )
            .await;
        // Read a random number of blocks (0..12), then drop the connection.
        let n = step() % 12;
        let mut got = 0;
        while got < n {
            match sse.next_block_within(Duration::from_millis(500)).await {
                Some(Some(b)) => {
                    assert_ne!(b.name(), "init", "a valid id never gets init");
                    if b.name() == "update" {
                        let o = b.offset();
                        assert!(o > last, "no duplicate: {o} after {last}");
                        seen.push(o);
                        last = o;
                    }
                    got += 1;
                }
                _ => break,
            }
        }
        drop(sse);
        reconnects += 1;
        if writer.is_finished() && last == s.http.state(&id).await["offset"].as_u64().unwrap() {
            break;
        }
        assert!(reconnects < 20_000, "reader never caught up");
    }
    let mine = writer.await.unwrap();
    assert!(reconnects >= 200, "only {reconnects} reconnects");
    assert_eq!(seen, mine, "every write exactly once, in order");
}

// cases.md case 12: a stalled consumer costs bounded memory, loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_12_stalled_consumer_catches_up_from_the_log() {
    let s =
        TestServer::start_with(new_dir(), |c| c.fsync = sessiond::log::FsyncPolicy::Never).await;
    let (s1, c1) = s.http.create(&json!({})).await;
    let (s2, c2) = s.http.create(&json!({})).await;
    // Z: a raw socket that sends its request and then stops reading.
    let zsock = tokio::net::TcpSocket::new_v4().unwrap();
    zsock.set_recv_buffer_size(4096).unwrap();
    let mut z = zsock.connect(s.addr).await.unwrap();
    z.write_all(
        format!("GET /events/{s1}?username=z&lastEventId={c1} HTTP/1.1\r\nHost: x\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut f1 = s
        .sse(
            &format!("/events/{s1}?username=f1"),
            &[("last-event-id", &c1.to_string())],
        )
        .await;
    let mut f2 = s
        .sse(
            &format!("/events/{s2}?username=f2"),
            &[("last-event-id", &c2.to_string())],
        )
        .await;
    s.http.wait_clients(&s1, 2).await;
    // Enough bytes to fill the kernel buffers and far more frames than a
    // hub channel holds, so Z's receiver lags and must catch up from the log.
    let pad = "p".repeat(16_000);
    let writes = 2048;
    let mut w1 = Vec::new();
    let mut w2 = Vec::new();
    // Readers run concurrently with the writes.
    let r1 = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < writes * 7 / 8 {
            let b = f1.next_persisted().await.expect("f1 open");
            got.push(b.offset());
        }
        got
    });
    let r2 = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < writes / 8 {
            let b = f2.next_persisted().await.expect("f2 open");
            got.push(b.offset());
        }
        got
    });
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let h = s.http.clone();
        let (s1, s2, pad) = (s1.clone(), s2.clone(), pad.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = (Vec::new(), Vec::new());
            for i in 0..writes / 8 {
                let n = chunk * 1000 + i;
                if i % 8 != 0 {
                    mine.0
                        .push(h.patch(&s1, &json!({"n": n, "pad": pad})).await);
                } else {
                    mine.1
                        .push(h.patch(&s2, &json!({"n": n, "pad": pad})).await);
                }
            }
            mine
        }));
    }
    for t in tasks {
        let (a, b) = t.await.unwrap();
        w1.extend(a);
        w2.extend(b);
    }
    w1.sort();
    w2.sort();
    let got1 = r1.await.unwrap();
    let got2 = r2.await.unwrap();
    assert_eq!(got1, w1, "F1 got every write of S1, in order");
    assert_eq!(got2, w2, "F2 got every write of S2, in order");
    // Z now reads: it receives a contiguous sequence of S1's writes.
    let mut buf = Vec::new();
    let last = *w1.last().unwrap();
    let needle = format!("id: {last}\n");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = tokio::time::timeout_at(deadline, z.read(&mut chunk))
            .await
            .expect("Z catches up")
            .unwrap();
        assert!(n > 0);
        let from = buf.len().saturating_sub(needle.len());
        buf.extend_from_slice(&chunk[..n]);
        if buf[from..]
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let ids: Vec<u64> = text
        .split('\n')
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(ids, w1, "Z: no gap, no duplicate after stalling");
    drop(z);
    s.http.wait_clients(&s1, 0).await;
}
