//! `GET /sessions/{id}/events`: the history from the log, paged.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_through_the_log() {
    let s = TestServer::start().await;
    let h = &s.http;
    let (id, o0) = h.create(&json!({"n": 0})).await;
    let (other, _) = h.create(&json!({})).await;
    let mut offsets = vec![o0];
    for i in 1..=5 {
        offsets.push(h.patch(&id, &json!({"n": i})).await);
        h.patch(&other, &json!({"x": i})).await;
    }
    let r = h
        .json(
            Method::PUT,
            &format!("/sessions/{id}?username=zoe"),
            &json!({"r": 1}),
        )
        .await
        .expect(200);
    offsets.push(r.json()["offset"].as_u64().unwrap());

    let all = h
        .get(&format!("/sessions/{id}/events"))
        .await
        .expect(200)
        .json();
    let events = all["events"].as_array().unwrap();
    let got: Vec<u64> = events
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got, offsets, "only this session's events, in order");
    assert_eq!(all["next"], Value::Null);
    assert_eq!(events[0]["kind"], "created");
    assert_eq!(events[0]["data"], json!({"n": 0}));
    assert_eq!(events[0]["username"], "anonymous");
    assert_eq!(events[1]["kind"], "patched");
    assert_eq!(events[1]["patch"], json!({"n": 1}));
    assert!(events[1].get("data").is_none());
    assert_eq!(events[6]["kind"], "replaced");
    assert_eq!(events[6]["username"], "zoe");
    assert_eq!(events[6]["session"], id.as_str());
    assert!(events[6]["at"].as_str().unwrap().ends_with('Z'));

    let p = h
        .get(&format!("/sessions/{id}/events?limit=3"))
        .await
        .expect(200)
        .json();
    assert_eq!(p["events"].as_array().unwrap().len(), 3);
    assert_eq!(p["next"], offsets[2]);
    let p = h
        .get(&format!(
            "/sessions/{id}/events?limit=3&after={}",
            offsets[2]
        ))
        .await
        .expect(200)
        .json();
    assert_eq!(p["events"][0]["offset"], offsets[3]);
    assert_eq!(p["next"], offsets[5]);
    let p = h
        .get(&format!("/sessions/{id}/events?after={}", offsets[6]))
        .await
        .expect(200)
        .json();
    assert_eq!(p["events"], json!([]));
    assert_eq!(p["next"], Value::Null);
    // `after` accepts leading zeros like Last-Event-ID does.
    let p = h
        .get(&format!("/sessions/{id}/events?after=0{}", offsets[5]))
        .await
        .expect(200)
        .json();
    assert_eq!(p["events"][0]["offset"], offsets[6]);

    for bad in ["after=x", "after=-1", "after=%2B5", "limit=0", "limit=1001"] {
        h.get(&format!("/sessions/{id}/events?{bad}"))
            .await
            .expect(400);
    }
    h.get("/sessions/01ARZ3NDEKTSV4RRFFQ69G5FAV/events")
        .await
        .expect(404);
    h.get("/sessions/x/events").await.expect(400);

    // A deleted session keeps its history, ending with the tombstone.
    h.send(Method::DELETE, &format!("/sessions/{id}"), None, &[])
        .await
        .expect(204);
    let all = h
        .get(&format!("/sessions/{id}/events"))
        .await
        .expect(200)
        .json();
    let last = all["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "deleted");
    assert!(last.get("data").is_none() && last.get("patch").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_live_sessions_and_log_figures() {
    let s = TestServer::start().await;
    let h = &s.http;
    let (a, _) = h.create(&json!({})).await;
    let (b, _) = h.create(&json!({})).await;
    h.send(Method::DELETE, &format!("/sessions/{b}"), None, &[])
        .await
        .expect(204);
    let mut sse = s.sse(&format!("/events/{a}?username=ana"), &[]).await;
    sse.next_named("init").await;
    let st = h.status().await;
    assert_eq!(st["clients"], 1);
    let sessions = st["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["id"], a.as_str());
    assert_eq!(sessions[0]["clients"], 1);
    assert_eq!(sessions[0]["usernames"], json!(["ana"]));
    assert_eq!(sessions[0]["offset"], 0);
    assert_eq!(st["log"]["firstOffset"], 0);
    assert_eq!(st["log"]["nextOffset"], 3);
    assert_eq!(st["log"]["segments"], 1);
    assert!(st["log"]["bytes"].as_u64().unwrap() > 0);
    assert!(st["uptimeSeconds"].is_u64());
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
}
