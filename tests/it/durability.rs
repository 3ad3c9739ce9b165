//! Restarts: clean, SIGKILL and SIGTERM, with the real binary where a signal
//! is involved; refusals on bad settings and a locked directory.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

/// Every live session's full state, plus the log's next offset.
async fn snapshot(h: &Http) -> (Vec<Value>, u64) {
    let list = h.get("/sessions?limit=1000").await.expect(200).json();
    let mut states = Vec::new();
    for s in list["sessions"].as_array().unwrap() {
        let mut st = h.state(s["id"].as_str().unwrap()).await;
        st.as_object_mut().unwrap().remove("clients");
        states.push(st);
    }
    let next = h.status().await["log"]["nextOffset"].as_u64().unwrap();
    (states, next)
}

async fn some_writes(h: &Http) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(h.create(&json!({"i": i, "list": [1, 2]})).await.0);
    }
    for r in 0..20 {
        let id = &ids[r % 5];
        h.patch(id, &json!({"r": r, "list": null})).await;
    }
    h.json(
        Method::PUT,
        &format!("/sessions/{}", ids[1]),
        &json!("replaced"),
    )
    .await
    .expect(200);
    h.send(Method::DELETE, &format!("/sessions/{}", ids[2]), None, &[])
        .await
        .expect(204);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_identical_after_a_clean_restart() {
    let s = TestServer::start().await;
    let ids = some_writes(&s.http).await;
    let before = snapshot(&s.http).await;
    let dir = s.stop().await;
    let s = TestServer::start_with(dir, |_| {}).await;
    assert_eq!(snapshot(&s.http).await, before);
    s.http
        .get(&format!("/sessions/{}", ids[2]))
        .await
        .expect(410);
    // Offsets continue, never reused.
    let (id, o) = s.http.create(&json!({})).await;
    assert_eq!(o, before.1);
    let _ = id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_identical_after_sigkill_and_restart() {
    let dir = new_dir();
    let srv = BinServer::start(dir.path(), &[]).await;
    some_writes(&srv.http).await;
    let before = snapshot(&srv.http).await;
    srv.kill9();
    let srv = BinServer::start(dir.path(), &[]).await;
    assert_eq!(
        snapshot(&srv.http).await,
        before,
        "every acknowledged write survives kill -9"
    );
    let (_, o) = srv.http.create(&json!({})).await;
    assert_eq!(
        o, before.1,
        "the next offset follows the last acknowledged one"
    );
}

// cases.md case 9 (d) and issue 3: SIGTERM ends open streams and exits within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_09_sigterm_with_open_streams_exits_quickly_and_clients_resume() {
    let dir = new_dir();
    let mut srv = BinServer::start(dir.path(), &[]).await;
    let (id, _) = srv.http.create(&json!({})).await;
    let mut streams = Vec::new();
    let mut last = 0;
    for i in 0..20 {
        let mut c = Sse::connect(&format!("{}/events/{id}?username=c{i}", srv.base), &[]).await;
        last = c.next_named("init").await.offset();
        streams.push(c);
    }
    let w = srv.http.patch(&id, &json!({"before": "term"})).await;
    for c in &mut streams {
        assert_eq!(c.next_persisted().await.unwrap().offset(), w);
    }
    let started = Instant::now();
    srv.signal(libc::SIGTERM);
    for c in &mut streams {
        c.until_end().await;
        assert!(
            c.raw.ends_with(b"\n\n"),
            "streams end cleanly, after whole events"
        );
    }
    let status = srv.wait_exit().await;
    assert!(
        status.success(),
        "{status:?}: {}",
        srv.stderr.lock().unwrap()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let _ = last;
    // Restart; a client resumes from its last id with no gap.
    let srv = BinServer::start(dir.path(), &[]).await;
    let x = srv.http.patch(&id, &json!({"after": "restart"})).await;
    let mut c = Sse::connect(
        &format!("{}/events/{id}", srv.base),
        &[("last-event-id", &w.to_string())],
    )
    .await;
    assert_eq!(c.next_persisted().await.unwrap().offset(), x);
}

// cases.md case 4: no replay flood after a restart (SIGTERM and kill -9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_04_no_replay_flood_after_restart() {
    let dir = new_dir();
    let mut srv = BinServer::start(dir.path(), &[]).await;
    let (s1, _) = srv.http.create(&json!({})).await;
    let (s2, _) = srv.http.create(&json!({})).await;
    let mut c = Sse::connect(&format!("{}/events/{s1}", srv.base), &[]).await;
    c.next_named("init").await;
    let mut x = 0;
    for i in 0..20 {
        if i % 2 == 0 {
            x = srv.http.patch(&s1, &json!({"i": i})).await;
        } else {
            srv.http.patch(&s2, &json!({"i": i})).await;
        }
    }
    loop {
        if c.next_persisted().await.unwrap().offset() == x {
            break;
        }
    }
    drop(c);
    for kill in [false, true] {
        if kill {
            srv.kill9();
        } else {
            srv.signal(libc::SIGTERM);
            assert!(srv.wait_exit().await.success());
            drop(srv);
        }
        srv = BinServer::start(dir.path(), &[]).await;
        let mut c = Sse::connect(
            &format!("{}/events/{s1}", srv.base),
            &[("last-event-id", &x.to_string())],
        )
        .await;
        // Nothing is replayed: the first event after the join is the live write.
        c.next_named("join").await;
        srv.http.patch(&s2, &json!({"other": kill})).await;
        let y = srv.http.patch(&s1, &json!({"mine": kill})).await;
        let b = c.next_persisted().await.unwrap();
        assert_eq!(
            b.offset(),
            y,
            "exactly the live S1 write, no S2 event, nothing older"
        );
        assert_eq!(
            srv.http.clients(&s1).await,
            1,
            "no ghost from before the restart"
        );
        x = y;
    }
}

// cases.md case 28: never serve a partial state; early subscribers get the POSTed data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_28_no_partial_state_while_starting() {
    let dir = new_dir();
    {
        let s =
            TestServer::start_with(dir.clone(), |c| c.fsync = sessiond::log::FsyncPolicy::Never)
                .await;
        let (id, _) = s.http.create(&json!({"n": 0})).await;
        for i in 1..=2000 {
            s.http.patch(&id, &json!({"n": i})).await;
        }
        s.stop().await;
    }
    // Start the binary and poll from the moment it is spawned: every answer
    // is either "connection refused" or the full state.
    let id = {
        let s = TestServer::start_with(dir.clone(), |_| {}).await;
        let list = s.http.get("/sessions").await.expect(200).json();
        let id = list["sessions"][0]["id"].as_str().unwrap().to_string();
        s.stop().await;
        id
    };
    let mut child = BinServer::command(dir.path(), &[("PORT", "39517")])
        .spawn()
        .unwrap();
    let h = Http::new("http://127.0.0.1:39517");
    let deadline = Instant::now() + DEADLINE;
    let mut ok = 0;
    while ok < 5 {
        assert!(Instant::now() < deadline, "server did not come up");
        match h
            .client
            .get(format!("{}/sessions/{id}", h.base))
            .send()
            .await
        {
            Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
            Ok(r) => {
                assert_eq!(
                    r.status().as_u16(),
                    200,
                    "never a 404 or 503 for an existing session"
                );
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["data"], json!({"n": 2000}), "never a partial state");
                ok += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A fresh session's first subscribers, opened at once, all get its data.
    let (new_id, _) = h.create(&json!({"fresh": true})).await;
    let mut subs = Vec::new();
    for _ in 0..5 {
        let url = format!("{}/events/{new_id}", h.base);
        subs.push(tokio::spawn(async move {
            let mut c = Sse::connect(&url, &[]).await;
            c.next_named("init").await.json()["session"]["data"].clone()
        }));
    }
    for t in subs {
        assert_eq!(t.await.unwrap(), json!({"fresh": true}));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_on_bad_settings_and_a_locked_dir() {
    let dir = new_dir();
    let (code, err) = run_to_exit(dir.path(), &[("FSYNC", "sometimes")]);
    assert_ne!(code, Some(0));
    assert!(err.contains("FSYNC=sometimes is not valid"), "{err}");
    let (code, err) = run_to_exit(dir.path(), &[("SEGMENT_BYTES", "10")]);
    assert_ne!(code, Some(0));
    assert!(err.contains("SEGMENT_BYTES=10"), "{err}");
    let (code, err) = run_to_exit(dir.path(), &[("PORT", "notaport")]);
    assert_ne!(code, Some(0));
    assert!(err.contains("PORT") || err.contains("port"), "{err}");

    let running = BinServer::start(dir.path(), &[]).await;
    let (code, err) = run_to_exit(dir.path(), &[]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("LOCK") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    // The first server keeps serving.
    running.http.status().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_dot_env_and_a_broken_one_is_refused() {
    let dir = new_dir();
    // The working directory is the data dir (see BinServer::command).
    std::fs::write(dir.path().join(".env"), "HEARTBEAT_SECS=0\n").unwrap();
    let (code, err) = run_to_exit(dir.path(), &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("HEARTBEAT_SECS=0"), "{err}");
    // The environment wins over .env.
    let srv = BinServer::start(dir.path(), &[("HEARTBEAT_SECS", "5")]).await;
    srv.http.status().await;
    drop(srv);
    std::fs::write(dir.path().join(".env"), "NOT A VALID LINE\n").unwrap();
    let (code, err) = run_to_exit(dir.path(), &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains(".env"), "{err}");
}
