//! `/sessions` and `/sessions/{id}`: every success and error path, merge
//! patch semantics (case 29) and body limits (case 30).

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

const CT: &str = "application/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_put_patch_delete() {
    let s = TestServer::start().await;
    let h = &s.http;

    let r = h
        .json(
            Method::POST,
            "/sessions?username=ana",
            &json!({"title": "x"}),
        )
        .await
        .expect(201);
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["offset"], 0);
    assert_eq!(r.header("location").unwrap(), format!("/sessions/{id}"));
    assert_eq!(id.len(), 26);

    let r = h.get(&format!("/sessions/{id}")).await.expect(200);
    assert_eq!(r.header("etag").unwrap(), "\"0\"");
    let v = r.json();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["data"], json!({"title": "x"}));
    assert_eq!(v["offset"], 0);
    assert_eq!(v["clients"], 0);
    assert!(v["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["createdAt"], v["updatedAt"]);

    let r = h
        .json(
            Method::PUT,
            &format!("/sessions/{id}?username=bo"),
            &json!([1, 2]),
        )
        .await
        .expect(200);
    assert_eq!(r.json(), json!({"id": id, "offset": 1}));
    assert_eq!(r.header("etag").unwrap(), "\"1\"");
    let off = h.patch(&id, &json!({"a": 1})).await;
    assert_eq!(off, 2);
    assert_eq!(
        h.state(&id).await["data"],
        json!({"a": 1}),
        "a merge patch on an array replaces it"
    );

    // Empty POST body = {}; a missing Content-Type is taken as JSON.
    let r = h
        .send(Method::POST, "/sessions", Some(("", Vec::new())), &[])
        .await
        .expect(201);
    let id2 = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(h.state(&id2).await["data"], json!({}));
    let r = h
        .send(Method::POST, "/sessions", None, &[])
        .await
        .expect(201);
    let id3 = r.json()["id"].as_str().unwrap().to_string();

    let list = h.get("/sessions").await.expect(200).json();
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    let mut sorted = vec![id.as_str(), id2.as_str(), id3.as_str()];
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(list["next"], Value::Null);
    assert!(
        list["sessions"][0].get("data").is_none(),
        "summaries carry no document"
    );

    let r = h
        .send(Method::DELETE, &format!("/sessions/{id}"), None, &[])
        .await
        .expect(204);
    assert!(r.body.is_empty());
    h.get(&format!("/sessions/{id}")).await.expect(410);
    assert_eq!(
        h.get("/sessions").await.expect(200).json()["sessions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_limit_and_after() {
    let s = TestServer::start().await;
    let h = &s.http;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(h.create(&json!({"i": i})).await.0);
    }
    ids.sort();
    let p1 = h.get("/sessions?limit=2").await.expect(200).json();
    assert_eq!(p1["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(p1["next"], ids[1].as_str());
    let p2 = h
        .get(&format!("/sessions?limit=2&after={}", ids[1]))
        .await
        .expect(200)
        .json();
    assert_eq!(p2["sessions"][0]["id"], ids[2].as_str());
    assert_eq!(p2["next"], ids[3].as_str());
    let p3 = h
        .get(&format!("/sessions?limit=2&after={}", ids[3]))
        .await
        .expect(200)
        .json();
    assert_eq!(p3["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(p3["next"], Value::Null);
    for bad in ["limit=0", "limit=1001", "limit=x", "after=nope", "limit=-1"] {
        h.get(&format!("/sessions?{bad}")).await.expect(400);
    }
    h.get("/sessions?limit=1000").await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_their_status_and_body() {
    let s = TestServer::start().await;
    let h = &s.http;
    let (id, _) = h.create(&json!({})).await;
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    assert_eq!(
        h.get("/sessions/nope").await.expect(400).error_code(),
        "invalid_id"
    );
    assert_eq!(
        h.get(&format!("/sessions/{unknown}"))
            .await
            .expect(404)
            .error_code(),
        "session_not_found"
    );
    for m in [Method::PUT, Method::PATCH] {
        h.json(m.clone(), &format!("/sessions/{unknown}"), &json!({}))
            .await
            .expect(404);
        h.json(m.clone(), "/sessions/bad-id", &json!({}))
            .await
            .expect(400);
    }
    h.send(Method::DELETE, &format!("/sessions/{unknown}"), None, &[])
        .await
        .expect(404);
    h.get("/no/such/route").await.expect(404);

    // 415 wrong content type, 422 not JSON, 422 empty PUT/PATCH; nothing appended.
    let before = h.status().await["log"]["nextOffset"].as_u64().unwrap();
    let path = format!("/sessions/{id}");
    assert_eq!(
        h.send(
            Method::PATCH,
            &path,
            Some(("text/plain", b"{}".to_vec())),
            &[]
        )
        .await
        .expect(415)
        .error_code(),
        "unsupported_media_type"
    );
    assert_eq!(
        h.send(
            Method::POST,
            "/sessions",
            Some(("text/plain", b"{}".to_vec())),
            &[]
        )
        .await
        .expect(415)
        .error_code(),
        "unsupported_media_type"
    );
    assert_eq!(
        h.send(Method::PATCH, &path, Some((CT, b"{nope".to_vec())), &[])
            .await
            .expect(422)
            .error_code(),
        "invalid_json"
    );
    h.send(Method::POST, "/sessions", Some((CT, b"[1,".to_vec())), &[])
        .await
        .expect(422);
    h.send(Method::PUT, &path, Some((CT, Vec::new())), &[])
        .await
        .expect(422);
    h.send(Method::PATCH, &path, Some((CT, Vec::new())), &[])
        .await
        .expect(422);
    assert_eq!(
        h.status().await["log"]["nextOffset"].as_u64().unwrap(),
        before
    );

    // Usernames: control characters and over-long names are refused.
    for bad in ["a%0Ab", "%00", "c%0D", &"x".repeat(65)] {
        h.json(Method::PATCH, &format!("{path}?username={bad}"), &json!({}))
            .await
            .expect(400);
        h.json(
            Method::POST,
            &format!("/sessions?username={bad}"),
            &json!({}),
        )
        .await
        .expect(400);
    }
    assert_eq!(
        h.status().await["log"]["nextOffset"].as_u64().unwrap(),
        before
    );

    // 410 for every operation on a deleted session.
    h.send(Method::DELETE, &path, None, &[]).await.expect(204);
    h.get(&path).await.expect(410);
    assert_eq!(
        h.json(Method::PUT, &path, &json!({}))
            .await
            .expect(410)
            .error_code(),
        "session_deleted"
    );
    h.json(Method::PATCH, &path, &json!({})).await.expect(410);
    h.send(Method::DELETE, &path, None, &[]).await.expect(410);
    h.get(&format!("/events/{id}")).await.expect(410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_guards_writes() {
    let s = TestServer::start().await;
    let h = &s.http;
    let (id, o0) = h.create(&json!({"n": 0})).await;
    let path = format!("/sessions/{id}");
    let body = || Some((CT, br#"{"n":1}"#.to_vec()));
    let tag = format!("\"{o0}\"");
    let r = h
        .send(Method::PATCH, &path, body(), &[("if-match", &tag)])
        .await
        .expect(200);
    let o1 = r.json()["offset"].as_u64().unwrap();
    // The old tag no longer matches: 412, nothing written.
    let r = h
        .send(Method::PUT, &path, body(), &[("if-match", &tag)])
        .await
        .expect(412);
    assert_eq!(r.error_code(), "precondition_failed");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains(&o1.to_string()));
    h.send(Method::DELETE, &path, None, &[("if-match", &tag)])
        .await
        .expect(412);
    assert_eq!(h.state(&id).await["offset"], o1);
    h.send(Method::PATCH, &path, body(), &[("if-match", "*")])
        .await
        .expect(200);
    h.send(Method::PATCH, &path, body(), &[("if-match", "12")])
        .await
        .expect(400);
    h.send(Method::PATCH, &path, body(), &[("if-match", "W/\"1\"")])
        .await
        .expect(400);
    let etag = h.get(&path).await.expect(200).header("etag").unwrap();
    h.send(Method::DELETE, &path, None, &[("if-match", &etag)])
        .await
        .expect(204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_if_match_writers_exactly_one_wins() {
    let s = TestServer::start().await;
    let (id, o0) = s.http.create(&json!({})).await;
    let tag = format!("\"{o0}\"");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let h = s.http.clone();
        let (id, tag) = (id.clone(), tag.clone());
        tasks.push(tokio::spawn(async move {
            h.send(
                Method::PATCH,
                &format!("/sessions/{id}"),
                Some((CT, format!("{{\"w\":{i}}}").into_bytes())),
                &[("if-match", &tag)],
            )
            .await
            .status
            .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 412).count(), 19, "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_with_at() {
    let s = TestServer::start().await;
    let h = &s.http;
    let (other, _) = h.create(&json!({})).await;
    let (id, o0) = h.create(&json!({"v": 0})).await;
    let o1 = h.patch(&id, &json!({"v": 1})).await;
    let between = h.patch(&other, &json!({"x": 1})).await;
    let o2 = h.patch(&id, &json!({"v": 2, "w": true})).await;
    let at = |o: u64| format!("/sessions/{id}?at={o}");
    assert_eq!(
        h.get(&at(o0)).await.expect(200).json()["data"],
        json!({"v": 0})
    );
    let r = h.get(&at(o1)).await.expect(200);
    assert_eq!(r.header("etag").unwrap(), format!("\"{o1}\""));
    assert_eq!(r.json()["data"], json!({"v": 1}));
    assert_eq!(h.get(&at(between)).await.expect(200).json()["offset"], o1);
    assert_eq!(
        h.get(&at(o2)).await.expect(200).json()["data"],
        json!({"v": 2, "w": true})
    );
    assert_eq!(
        h.get(&at(o0 - 1)).await.expect(404).error_code(),
        "session_not_found"
    );
    for bad in ["x", "-1", "1.0", "99999"] {
        assert_eq!(
            h.get(&at_str(&id, bad)).await.expect(400).error_code(),
            "invalid_offset"
        );
    }
    let d = h
        .send(Method::DELETE, &format!("/sessions/{id}"), None, &[])
        .await
        .expect(204);
    let deleted_at: u64 = d.header("etag").unwrap().trim_matches('"').parse().unwrap();
    assert_eq!(
        h.get(&at(o2)).await.expect(200).json()["data"],
        json!({"v": 2, "w": true}),
        "history stays reachable"
    );
    h.get(&at(deleted_at)).await.expect(410);
}

fn at_str(id: &str, at: &str) -> String {
    format!("/sessions/{id}?at={at}")
}

// cases.md case 29: JSON Merge Patch — null deletes, arrays replace, no lossy combining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_29_merge_patch_rfc7396() {
    let dir = new_dir();
    let srv = BinServer::start(dir.path(), &[]).await;
    let h = &srv.http;
    let table = [
        (json!({"a":"b"}), json!({"a":null}), json!({})),
        (
            json!({"a":{"b":"c"}}),
            json!({"a":{"b":"d","c":null}}),
            json!({"a":{"b":"d"}}),
        ),
        (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
        (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
        (
            json!({}),
            json!({"a":{"bb":{"ccc":null}}}),
            json!({"a":{"bb":{}}}),
        ),
        (
            json!({"a":1}),
            json!({"a":[1,null,2]}),
            json!({"a":[1,null,2]}),
        ),
        (json!({"a":"b"}), json!(["c"]), json!(["c"])),
        (json!({"a":"foo"}), json!(null), json!(null)),
    ];
    let mut ids = Vec::new();
    for (target, patch, want) in &table {
        let (id, _) = h.create(target).await;
        let url = format!("{}/events/{id}", srv.base);
        let mut sse = Sse::connect(&url, &[]).await;
        sse.next_named("init").await;
        h.patch(&id, patch).await;
        assert_eq!(&h.state(&id).await["data"], want, "{target} + {patch}");
        let up = sse.next_named("update").await.json();
        assert_eq!(&up["patch"], patch, "the update carries the patch as sent");
        let mut fresh = Sse::connect(&url, &[]).await;
        assert_eq!(
            &fresh.next_named("init").await.json()["session"]["data"],
            want
        );
        ids.push((id, want.clone()));
    }
    // Sequence: deletion then re-adding, also through ?at=.
    let (id, o0) = h.create(&json!({"a":{"a1":0,"a2":3}})).await;
    let o1 = h.patch(&id, &json!({"a": null})).await;
    let o2 = h.patch(&id, &json!({"a": {"a1": 8}})).await;
    assert_eq!(h.state(&id).await["data"], json!({"a":{"a1":8}}));
    for (o, want) in [
        (o0, json!({"a":{"a1":0,"a2":3}})),
        (o1, json!({})),
        (o2, json!({"a":{"a1":8}})),
    ] {
        assert_eq!(
            h.get(&format!("/sessions/{id}?at={o}"))
                .await
                .expect(200)
                .json()["data"],
            want
        );
    }
    // Wrong content type → 415, not JSON → 422; neither appends a record.
    let before = h.status().await["log"]["nextOffset"].clone();
    let path = format!("/sessions/{id}");
    h.send(
        Method::PATCH,
        &path,
        Some(("text/plain", b"{}".to_vec())),
        &[],
    )
    .await
    .expect(415);
    h.send(Method::PATCH, &path, Some((CT, b"not json".to_vec())), &[])
        .await
        .expect(422);
    assert_eq!(h.status().await["log"]["nextOffset"], before);
    ids.push((id, json!({"a":{"a1":8}})));
    // After kill -9 and a restart the fold gives the same values.
    srv.kill9();
    let srv = BinServer::start(dir.path(), &[]).await;
    for (id, want) in &ids {
        assert_eq!(&srv.http.state(id).await["data"], want);
    }
}

// cases.md case 30: large documents and oversized bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_30_body_limits_and_large_documents() {
    let max = 64 * 1024;
    let s = TestServer::start_with(new_dir(), |c| c.max_body_bytes = max).await;
    let h = &s.http;
    // (a) exactly MAX_BODY_BYTES is accepted, one more byte is 413 — also chunked.
    let exact = format!("\"{}\"", "x".repeat(max - 2)).into_bytes();
    assert_eq!(exact.len(), max);
    h.send(Method::POST, "/sessions", Some((CT, exact.clone())), &[])
        .await
        .expect(201);
    let before = h.status().await["log"]["nextOffset"].as_u64().unwrap();
    let over = format!("\"{}\"", "x".repeat(max - 1)).into_bytes();
    let r = h
        .send(Method::POST, "/sessions", Some((CT, over.clone())), &[])
        .await
        .expect(413);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains(&max.to_string()));
    let r = post_chunked(&h.client, &s.url("/sessions"), &over).await;
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "payload_too_large");
    let r = post_chunked(&h.client, &s.url("/sessions"), &exact).await;
    assert_eq!(
        r.status().as_u16(),
        201,
        "a chunked body within the limit is accepted"
    );
    assert_eq!(
        h.status().await["log"]["nextOffset"].as_u64().unwrap(),
        before + 1
    );

    // (d) deep nesting is refused with 422, a long escaped string is fine; the server stays up.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)).into_bytes();
    h.send(Method::POST, "/sessions", Some((CT, deep)), &[])
        .await
        .expect(422);
    let escaped = format!("\"{}\"", "\\n".repeat(30_000)).into_bytes();
    h.send(Method::POST, "/sessions", Some((CT, escaped)), &[])
        .await
        .expect(201);

    // (b) a large document with many updates: each new stream's init is the
    // current state (not the history) and updates carry only the patch.
    let big = json!({"blob": "y".repeat(60_000)});
    let (id, _) = h.create(&big).await;
    for i in 0..200 {
        h.patch(&id, &json!({"i": i})).await;
    }
    let want = h.state(&id).await["data"].clone();
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(s.sse(&format!("/events/{id}"), &[]).await);
    }
    for sse in &mut streams {
        let init = sse.next_named("init").await;
        assert_eq!(init.json()["session"]["data"], want);
    }
    h.patch(&id, &json!({"last": true})).await;
    for sse in &mut streams {
        let up = sse.next_named("update").await;
        assert!(
            up.data.as_ref().unwrap().len() < 1000,
            "updates carry the patch only"
        );
        assert_eq!(up.json()["patch"], json!({"last": true}));
    }
}

// cases.md case 30 (b): a large document sent to many new subscribers is
// serialized once and shared: server memory grows far less than one copy
// per subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_30_large_init_is_shared_not_copied_per_subscriber() {
    let dir = new_dir();
    let srv = BinServer::start(dir.path(), &[("MAX_BODY_BYTES", "16777216")]).await;
    let doc = json!({"blob": "z".repeat(4 << 20)});
    let (id, _) = srv.http.create(&doc).await;
    for i in 0..50 {
        srv.http.patch(&id, &json!({"i": i})).await;
    }
    let want = srv.http.state(&id).await["data"].clone();
    let baseline = crate::chaos::vm_rss_kib(srv.pid());
    let url = format!("{}/events/{id}", srv.base);
    let mut tasks = Vec::new();
    for _ in 0..25 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Sse::connect(&url, &[]).await;
            let init = c.next_named("init").await;
            (init.json()["session"]["data"].clone(), c)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        let (data, c) = t.await.unwrap();
        assert_eq!(data, want, "each init carries the current state");
        held.push(c);
    }
    let grown_kib = crate::chaos::vm_rss_kib(srv.pid()).saturating_sub(baseline);
    let per_copy_kib = 4 << 10;
    assert!(
        grown_kib < 25 * per_copy_kib / 4,
        "server RSS grew {grown_kib} KiB for 25 subscribers of a 4 MiB document"
    );
}

/// POSTs `body` as a chunked upload (no Content-Length), 1000 bytes a chunk.
async fn post_chunked(client: &reqwest::Client, url: &str, body: &[u8]) -> reqwest::Response {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    client
        .post(url)
        .header("content-type", CT)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap()
}
