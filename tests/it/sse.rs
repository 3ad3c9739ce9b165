//! `GET /events/{id}`: the frames byte by byte, headers, heartbeats, the end
//! of a stream on delete.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::*;

fn assert_clean(raw: &[u8]) {
    assert!(!raw.contains(&b'\r'), "no CR byte anywhere in the stream");
    let text = std::str::from_utf8(raw).unwrap();
    assert!(
        !text.contains("\n\n\n"),
        "every block ends in exactly one blank line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_byte_by_byte() {
    let s = TestServer::start().await;
    let h = &s.http;
    let (id, o0) = h.create(&json!({"a": 1})).await;
    let mut sse = s.sse(&format!("/events/{id}?username=ana"), &[]).await;
    assert_eq!(sse.status.as_u16(), 200);
    let retry = sse.next_block().await.unwrap();
    assert_eq!(retry.raw, "retry: 2000");
    let init = sse.next_block().await.unwrap();
    let lines: Vec<&str> = init.raw.split('\n').collect();
    assert_eq!(lines[0], "event: init");
    assert_eq!(lines[1], format!("id: {o0}"));
    assert!(lines[2].starts_with("data: {"));
    assert_eq!(lines.len(), 3);
    let v = init.json();
    assert_eq!(v["session"]["id"], id.as_str());
    assert_eq!(v["session"]["data"], json!({"a": 1}));
    assert_eq!(v["session"]["offset"], o0);
    assert_eq!(v["session"]["clients"], 1);
    assert_eq!(v["username"], "ana");
    assert_eq!(v["clients"], 1);
    assert_eq!(v["usernames"], json!(["ana"]));
    // The client's own join, without an id.
    let join = sse.next_block().await.unwrap();
    assert_eq!(
        join.raw,
        "event: join\ndata: {\"clients\":1,\"usernames\":[\"ana\"]}"
    );

    let o1 = s
        .http
        .json(
            Method::PATCH,
            &format!("/sessions/{id}?username=bo"),
            &json!({"b": 2}),
        )
        .await
        .expect(200)
        .json()["offset"]
        .as_u64()
        .unwrap();
    let up = sse.next_block().await.unwrap();
    let lines: Vec<&str> = up.raw.split('\n').collect();
    assert_eq!(lines[0], "event: update");
    assert_eq!(lines[1], format!("id: {o1}"));
    assert_eq!(lines.len(), 3);
    let ev = up.json();
    assert_eq!(ev["offset"], o1);
    assert_eq!(ev["session"], id.as_str());
    assert_eq!(ev["kind"], "patched");
    assert_eq!(ev["patch"], json!({"b": 2}));
    assert_eq!(ev["username"], "bo");
    assert!(ev["at"].as_str().unwrap().ends_with('Z'));
    let o2 = s
        .http
        .json(Method::PUT, &format!("/sessions/{id}"), &json!([1]))
        .await
        .expect(200)
        .json()["offset"]
        .as_u64()
        .unwrap();
    let up = sse.next_named("update").await;
    assert_eq!(up.offset(), o2);
    assert_eq!(up.json()["kind"], "replaced");
    assert_eq!(up.json()["data"], json!([1]));

    // Delete: the `delete` event, then the stream ends.
    let d = h
        .send(
            Method::DELETE,
            &format!("/sessions/{id}?username=cy"),
            None,
            &[],
        )
        .await
        .expect(204);
    let o3: u64 = d.header("etag").unwrap().trim_matches('"').parse().unwrap();
    let del = sse.next_block().await.unwrap();
    assert_eq!(del.name(), "delete");
    assert_eq!(del.offset(), o3);
    assert_eq!(del.json()["kind"], "deleted");
    assert_eq!(del.json()["username"], "cy");
    assert!(sse.until_end().await.iter().all(|b| b.id.is_none()));
    assert!(sse.raw.ends_with(b"\n\n"));
    assert_clean(&sse.raw);
    h.wait_clients(&id, 0).await;
}

// cases.md case 10: proxy/compression buffering — headers and no compression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_10_stream_headers_and_no_compression() {
    let s = TestServer::start().await;
    let (id, _) = s.http.create(&json!({})).await;
    let mut sse = s
        .sse(&format!("/events/{id}"), &[("accept-encoding", "gzip, br")])
        .await;
    let h = |n: &str| sse.headers.get(n).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(h("content-type").as_deref(), Some("text/event-stream"));
    assert!(h("cache-control").unwrap().contains("no-cache"));
    assert!(h("cache-control").unwrap().contains("no-transform"));
    assert_eq!(h("x-accel-buffering").as_deref(), Some("no"));
    assert!(h("content-encoding").is_none());
    assert!(h("content-length").is_none());
    sse.next_named("init").await;
    let o = s.http.patch(&id, &json!({"x": 1})).await;
    assert_eq!(
        sse.next_named("update").await.offset(),
        o,
        "the update arrives without buffering"
    );
}

// cases.md case 7: multi-line payloads and mixed line terminators never reach the wire raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_07_multiline_payloads_have_no_raw_newlines() {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;

    let s = TestServer::start().await;
    let doc = json!({"t": "a\nb\r\nc\rd\n\n", "u": "\u{2028}\u{2029}", "e": ""});
    let (id, _) = s.http.create(&doc).await;
    let mut sse = s.sse(&format!("/events/{id}"), &[]).await;
    let init = sse.next_named("init").await;
    assert_eq!(init.json()["session"]["data"], doc);
    let patch = json!({"t": "x\r\n\r\ny"});
    s.http.patch(&id, &patch).await;
    let up = sse.next_named("update").await;
    assert_eq!(up.json()["patch"], patch);
    s.http
        .send(Method::DELETE, &format!("/sessions/{id}"), None, &[])
        .await
        .expect(204);
    sse.next_named("delete").await;
    sse.until_end().await;
    assert_clean(&sse.raw);
    for line in std::str::from_utf8(&sse.raw).unwrap().split('\n') {
        assert!(
            line.is_empty()
                || line.starts_with("data: ")
                || line.starts_with("event: ")
                || line.starts_with("id: ")
                || line.starts_with("retry: ")
                || line.starts_with(':'),
            "unexpected line {line:?}"
        );
    }
    // A conformant third-party parser reads the same events.
    let raw = bytes::Bytes::from(sse.raw.clone());
    let events: Vec<_> = futures_util::stream::iter([Ok::<_, std::io::Error>(raw)])
        .eventsource()
        .collect()
        .await;
    let events: Vec<_> = events.into_iter().map(|e| e.unwrap()).collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e.event.as_str())
        .filter(|n| *n != "join" && *n != "leave")
        .collect();
    assert_eq!(names, ["init", "update", "delete"]);
    let init: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(init["session"]["data"], doc);
}

// cases.md case 9: heartbeat cadence, ping framing and `retry`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_09_heartbeat_ping_and_retry() {
    let s = TestServer::start_with(new_dir(), |c| c.heartbeat_secs = 1).await;
    let (id, _) = s.http.create(&json!({})).await;
    let mut sse = s.sse(&format!("/events/{id}"), &[]).await;
    // (c) the first frame is `retry: <ms>` on its own, sane.
    let first = sse.next_block().await.unwrap();
    let ms: u64 = first.retry.as_deref().unwrap().parse().unwrap();
    assert!(ms >= 1000);
    assert_eq!(first.raw, format!("retry: {ms}"));
    // (a)/(b) pings come while writes are flowing, as whole comment blocks.
    let writer = {
        let h = s.http.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                h.patch(&id, &json!({"i": i})).await;
            }
        })
    };
    let mut pings = 0;
    let mut updates = 0;
    while pings < 2 {
        let b = sse.next_block().await.expect("stream open");
        if !b.comments.is_empty() {
            assert_eq!(b.raw, ": ping", "a ping block carries no fields");
            pings += 1;
        } else if b.name() == "update" {
            updates += 1;
        }
    }
    writer.abort();
    let _ = updates;
    assert_clean(&sse.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_before_it_starts() {
    let s = TestServer::start().await;
    let (id, _) = s.http.create(&json!({})).await;
    s.http.get("/events/nope").await.expect(400);
    s.http
        .get("/events/01ARZ3NDEKTSV4RRFFQ69G5FAV")
        .await
        .expect(404);
    s.http
        .get(&format!("/events/{id}?username=a%0Ab"))
        .await
        .expect(400);
    s.http
        .get(&format!("/events/{id}?username={}", "x".repeat(65)))
        .await
        .expect(400);
    assert_eq!(s.http.clients(&id).await, 0);
    // Nothing flows on an idle stream except within the heartbeat.
    let mut sse = s.sse(&format!("/events/{id}"), &[]).await;
    sse.next_named("init").await;
    sse.next_named("join").await;
    assert!(sse
        .next_block_within(Duration::from_millis(300))
        .await
        .is_none());
}
