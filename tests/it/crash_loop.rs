//! Crash loop (issue 5; cases 22 and 23): the real binary, under concurrent
//! writers (POST/PUT/PATCH/DELETE) with SSE subscribers attached, is SIGKILLed
//! at a random moment and restarted on the same DATA_DIR, round after round.
//!
//! After each kill `sessionlog verify` finds nothing but (at most) a torn tail;
//! after each restart it is clean, and:
//! - every acknowledged write is in its session's history at its acknowledged
//!   offset, with its body; every write whose answer was lost is either wholly
//!   there (once) or absent; every rejected write is absent;
//! - an offset, once seen, always holds the same write (never reused), and
//!   writes acknowledged after a restart get offsets at or above the
//!   `log.nextOffset` reported at the restart;
//! - `GET` of each session equals the fold of its history;
//! - each subscriber, resumed with its last id, has received a contiguous run
//!   of its session's history after its start point: no gap, no duplicate,
//!   nothing a crash took back.
//!
//! `CRASH_ROUNDS` (default 30) sets the rounds, `CRASH_SEED` the seed (printed).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::chaos::{all_session_ids, history, sessionlog_verify, Rng};
use crate::common::{new_dir, BinServer, Block, Http, Sse};

const WRITERS: usize = 4;
const SUBSCRIBERS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Replace,
    Patch,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Acked(u64),
    /// The connection failed: the server may or may not have applied it.
    Lost,
    Rejected(u16),
}

#[derive(Debug, Clone)]
struct Write {
    op: Op,
    /// Known for everything but a create that got no answer.
    session: Option<String>,
    /// The document (create/replace) or merge patch; `w` = the write's token.
    body: Option<Value>,
    outcome: Outcome,
}

/// What the clients did and what the checks established.
#[derive(Default)]
struct Book {
    /// Token → write. Deletes use tokens too (looked up by session).
    writes: Vec<Write>,
    /// Live sessions the writers may use.
    live: Vec<String>,
    /// Sessions ever known (live or deleted).
    known: Vec<String>,
    /// Offset → (session, token) for every event ever seen or acknowledged.
    offsets: BTreeMap<u64, (String, usize)>,
}

impl Book {
    fn begin(&mut self, op: Op, session: Option<String>, body: Option<Value>) -> usize {
        self.writes.push(Write {
            op,
            session,
            body,
            outcome: Outcome::Pending,
        });
        self.writes.len() - 1
    }
}

fn token_of(v: &Value) -> Option<usize> {
    v.get("w").and_then(Value::as_u64).map(|t| t as usize)
}

/// One writer: random operations until the server stops answering.
async fn writer(base: String, book: Arc<Mutex<Book>>, seed: u64) {
    let http = Http::new(&base);
    let mut rng = Rng::new(seed);
    loop {
        let (token, method, path, body) = {
            let mut b = book.lock().unwrap();
            let target = if b.live.is_empty() {
                None
            } else {
                Some(b.live[rng.below(b.live.len() as u64) as usize].clone())
            };
            let roll = rng.below(100);
            let op = match (&target, roll) {
                (None, _) | (_, 0..=14) => Op::Create,
                (_, 15..=34) => Op::Replace,
                (_, 35..=94) => Op::Patch,
                _ => Op::Delete,
            };
            let token = b.writes.len() as u64;
            let body = match op {
                Op::Create => Some(json!({"w": token, "doc": {"n": rng.below(1000)}})),
                Op::Replace => Some(json!({"w": token, "r": rng.below(1000), "list": [1, 2]})),
                Op::Patch => {
                    let key = format!("k{}", rng.below(6));
                    let val = if rng.chance(20) {
                        Value::Null
                    } else {
                        json!({"v": rng.below(100), "x": "y".repeat(rng.below(200) as usize)})
                    };
                    Some(json!({"w": token, key: val}))
                }
                Op::Delete => None,
            };
            let session = if op == Op::Create { None } else { target };
            let token = b.begin(op, session.clone(), body.clone());
            let (method, path) = match op {
                Op::Create => (Method::POST, "/sessions".to_string()),
                Op::Replace => (Method::PUT, format!("/sessions/{}", session.unwrap())),
                Op::Patch => (Method::PATCH, format!("/sessions/{}", session.unwrap())),
                Op::Delete => (Method::DELETE, format!("/sessions/{}", session.unwrap())),
            };
            (token, method, path, body)
        };
        let mut rb = http.client.request(
            method,
            format!("{base}{path}?username=writer-{}", seed % 1000),
        );
        if let Some(v) = &body {
            rb = rb.json(v);
        }
        let answer = match rb.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let etag = r
                    .headers()
                    .get("etag")
                    .map(|v| v.to_str().unwrap().to_string());
                match r.bytes().await {
                    Ok(bytes) => Some((status, etag, bytes.to_vec())),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        let mut b = book.lock().unwrap();
        let Some((status, etag, bytes)) = answer else {
            b.writes[token].outcome = Outcome::Lost;
            return;
        };
        let w = &mut b.writes[token];
        match status {
            200 | 201 => {
                let v: Value = serde_json::from_slice(&bytes).expect("write answer is JSON");
                let offset = v["offset"].as_u64().expect("offset");
                w.outcome = Outcome::Acked(offset);
                if w.op == Op::Create {
                    let id = v["id"].as_str().unwrap().to_string();
                    w.session = Some(id.clone());
                    b.live.push(id.clone());
                    b.known.push(id);
                }
            }
            204 => {
                let offset: u64 = etag
                    .expect("ETag on 204")
                    .trim_matches('"')
                    .parse()
                    .unwrap();
                w.outcome = Outcome::Acked(offset);
                let id = w.session.clone().unwrap();
                b.live.retain(|s| *s != id);
            }
            404 | 410 => w.outcome = Outcome::Rejected(status),
            other => panic!(
                "write {:?} on {:?} got {other}: {}",
                w.op,
                w.session,
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}

/// A subscriber's round: where it started, what it received.
struct Watch {
    session: String,
    /// The resume id sent, or `None` for a fresh `init`.
    resumed_from: Option<u64>,
    blocks: Vec<Block>,
}

async fn subscribe(base: &str, session: &str, cursor: Option<u64>) -> Sse {
    let url = format!("{base}/events/{session}?username=watcher");
    let header;
    let headers: Vec<(&str, &str)> = match cursor {
        Some(c) => {
            header = c.to_string();
            vec![("last-event-id", header.as_str())]
        }
        None => vec![],
    };
    let sse = Sse::connect(&url, &headers).await;
    assert_eq!(sse.status, 200, "subscribe to {session}");
    sse
}

/// Reads a stream until it ends (the server was killed or the session deleted).
async fn drain(mut sse: Sse) -> Vec<Block> {
    let mut out = Vec::new();
    while let Some(b) = sse.next_block().await {
        out.push(b);
    }
    out
}

/// The checks after a restart. Returns the new subscriber cursors.
async fn check(
    http: &Http,
    book: &mut Book,
    watches: Vec<Watch>,
    cursors: &mut HashMap<String, u64>,
) -> usize {
    // Sessions created by a write whose answer was lost: adopt the ones present.
    let listed = all_session_ids(http).await;
    for id in &listed {
        if book.known.contains(id) {
            continue;
        }
        let h = history(http, id).await;
        let token =
            token_of(&h[0]["data"]).unwrap_or_else(|| panic!("unknown session {id}: {h:?}"));
        let w = &mut book.writes[token];
        assert!(
            w.op == Op::Create && w.outcome == Outcome::Lost && w.session.is_none(),
            "session {id} was created by write {token} ({w:?}), which was not a lost create"
        );
        w.session = Some(id.clone());
        book.known.push(id.clone());
        book.live.push(id.clone());
    }
    let mut checked = 0;
    let mut histories: HashMap<String, Vec<Value>> = HashMap::new();
    for id in book.known.clone() {
        let h = history(http, &id).await;
        let mut doc = Value::Null;
        let mut deleted = None;
        let mut last = None;
        for e in &h {
            let offset = e["offset"].as_u64().unwrap();
            assert!(last < Some(offset), "history of {id} out of order: {h:?}");
            last = Some(offset);
            assert!(deleted.is_none(), "event after the tombstone of {id}: {e}");
            let kind = e["kind"].as_str().unwrap();
            let token = match kind {
                "created" | "replaced" => token_of(&e["data"]),
                "patched" => token_of(&e["patch"]),
                "deleted" => book.writes.iter().position(|w| {
                    w.op == Op::Delete
                        && w.session.as_deref() == Some(id.as_str())
                        && (w.outcome == Outcome::Acked(offset) || w.outcome == Outcome::Lost)
                }),
                other => panic!("unknown kind {other}"),
            }
            .unwrap_or_else(|| panic!("event of no write: {e}"));
            let w = &book.writes[token];
            assert_eq!(
                w.session.as_deref(),
                Some(id.as_str()),
                "write {token} landed on {id}: {e}"
            );
            let want_kind = match w.op {
                Op::Create => "created",
                Op::Replace => "replaced",
                Op::Patch => "patched",
                Op::Delete => "deleted",
            };
            assert_eq!(kind, want_kind, "write {token}: {e}");
            match kind {
                "created" | "replaced" => assert_eq!(Some(&e["data"]), w.body.as_ref(), "{e}"),
                "patched" => assert_eq!(Some(&e["patch"]), w.body.as_ref(), "{e}"),
                _ => {}
            }
            match w.outcome {
                Outcome::Acked(o) => assert_eq!(
                    o, offset,
                    "write {token} acknowledged at {o}, found at {offset}"
                ),
                Outcome::Lost => {}
                Outcome::Rejected(s) => {
                    panic!("write {token} was rejected with {s} but is in the log: {e}")
                }
                Outcome::Pending => unreachable!("writers have finished"),
            }
            match book.offsets.get(&offset) {
                Some((s, t)) => assert!(
                    *s == id && *t == token,
                    "offset {offset} held write {t} of {s}, now holds write {token} of {id}"
                ),
                None => {
                    book.offsets.insert(offset, (id.clone(), token));
                }
            }
            match kind {
                "created" | "replaced" => doc = e["data"].clone(),
                "patched" => json_patch::merge(&mut doc, &e["patch"]),
                _ => deleted = Some(offset),
            }
        }
        // Every acknowledged write of this session is there. A lost write
        // found now is durable: from now on it counts as acknowledged; one
        // not found must never appear later.
        for t in 0..book.writes.len() {
            if book.writes[t].session.as_deref() != Some(id.as_str()) {
                continue;
            }
            match book.writes[t].outcome {
                Outcome::Acked(o) => {
                    assert!(
                        h.iter().any(|e| e["offset"] == o),
                        "acknowledged write {t} ({:?}) at offset {o} of {id} is missing",
                        book.writes[t].op
                    );
                    checked += 1;
                }
                Outcome::Lost => {
                    let found = book
                        .offsets
                        .iter()
                        .find(|(_, (s, tok))| *s == id && *tok == t)
                        .map(|(o, _)| *o);
                    book.writes[t].outcome = match found {
                        Some(o) => Outcome::Acked(o),
                        None => Outcome::Rejected(0),
                    };
                }
                _ => {}
            }
        }
        let r = http.get(&format!("/sessions/{id}")).await;
        match deleted {
            Some(_) => {
                r.expect(410);
                book.live.retain(|s| *s != id);
            }
            None => {
                let v = r.expect(200).json();
                assert_eq!(
                    v["data"], doc,
                    "state of {id} differs from the fold of its history"
                );
                assert_eq!(Some(v["offset"].as_u64().unwrap()), last, "offset of {id}");
            }
        }
        histories.insert(id, h);
    }
    // Lost writes that are absent stay absent: they can no longer appear.
    for w in &mut book.writes {
        if w.outcome == Outcome::Lost && w.session.is_none() {
            w.outcome = Outcome::Rejected(0);
        }
    }
    // Subscribers: a contiguous run of the history after their start.
    for watch in watches {
        let h = &histories[&watch.session];
        let offsets: Vec<u64> = h.iter().map(|e| e["offset"].as_u64().unwrap()).collect();
        let mut start = watch.resumed_from;
        let mut got = Vec::new();
        for b in &watch.blocks {
            match b.name() {
                "init" => {
                    assert!(
                        watch.resumed_from.is_none(),
                        "init after a valid resume id: {b:?}"
                    );
                    assert!(got.is_empty() && start.is_none(), "second init: {b:?}");
                    let o = b.offset();
                    assert!(
                        offsets.contains(&o),
                        "init at {o}, not an offset of {}",
                        watch.session
                    );
                    start = Some(o);
                }
                "update" | "delete" => got.push(b.offset()),
                _ => assert!(b.id.is_none(), "a non-persisted frame with an id: {b:?}"),
            }
        }
        let Some(start) = start else {
            assert!(got.is_empty(), "events before init: {got:?}");
            continue;
        };
        let expected: Vec<u64> = offsets
            .iter()
            .copied()
            .filter(|&o| o > start)
            .take(got.len())
            .collect();
        assert_eq!(
            got, expected,
            "subscriber of {} from {start}: gap or duplicate (history {offsets:?})",
            watch.session
        );
        let cursor = got.last().copied().unwrap_or(start);
        if offsets.last() == Some(&cursor) && h.last().unwrap()["kind"] == "deleted" {
            cursors.remove(&watch.session);
        } else {
            cursors.insert(watch.session.clone(), cursor);
        }
    }
    checked
}

const ENV: [(&str, &str); 2] = [("FSYNC", "always"), ("SEGMENT_BYTES", "65536")];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_keeps_every_acknowledged_write() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut rng = Rng::from_env("CRASH_SEED");
    let dir = new_dir();
    let book = Arc::new(Mutex::new(Book::default()));
    let mut cursors: HashMap<String, u64> = HashMap::new();
    let mut watches: Vec<Watch> = Vec::new();
    let mut checked = 0;
    let mut in_flight_at_kill = 0;
    let mut resumed = 0;
    for round in 0..=rounds {
        let mut server = BinServer::start(dir.path(), &ENV).await;
        // The restarted server is idle: recovery must have left a clean log.
        let (code, err) = sessionlog_verify(dir.path());
        assert_eq!(
            code,
            Some(0),
            "round {round}: sessionlog verify after the restart: {err}"
        );
        let next_at_start = server.http.status().await["log"]["nextOffset"]
            .as_u64()
            .unwrap();
        {
            let mut b = std::mem::take(&mut *book.lock().unwrap());
            if let Some((&max, _)) = b.offsets.iter().next_back() {
                assert!(
                    next_at_start > max,
                    "round {round}: nextOffset {next_at_start} after offset {max} was seen"
                );
            }
            resumed += watches.iter().filter(|w| w.resumed_from.is_some()).count();
            checked = check(
                &server.http,
                &mut b,
                std::mem::take(&mut watches),
                &mut cursors,
            )
            .await;
            *book.lock().unwrap() = b;
        }
        if round == rounds {
            server.signal(libc::SIGTERM);
            let status = server.wait_exit().await;
            assert!(status.success(), "SIGTERM exit: {status:?}");
            let (code, err) = sessionlog_verify(dir.path());
            assert_eq!(code, Some(0), "sessionlog verify after SIGTERM: {err}");
            break;
        }
        // Subscribers: resume the known cursors, or start fresh on live sessions.
        let live = book.lock().unwrap().live.clone();
        let mut picks: Vec<(String, Option<u64>)> = cursors
            .iter()
            .map(|(s, c)| (s.clone(), Some(*c)))
            .take(SUBSCRIBERS)
            .collect();
        for s in &live {
            if picks.len() >= SUBSCRIBERS {
                break;
            }
            if !picks.iter().any(|(p, _)| p == s) {
                picks.push((s.clone(), None));
            }
        }
        let mut readers = Vec::new();
        for (session, cursor) in picks {
            let sse = subscribe(&server.base, &session, cursor).await;
            readers.push((session, cursor, tokio::spawn(drain(sse))));
        }
        let first_write = book.lock().unwrap().writes.len();
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| tokio::spawn(writer(server.base.clone(), book.clone(), rng.next_u64())))
            .collect();
        // A random moment to kill at: not a wait for anything.
        tokio::time::sleep(Duration::from_millis(30 + rng.below(300))).await;
        server.kill9();
        for w in writers {
            w.await.expect("writer task");
        }
        for (session, resumed_from, task) in readers {
            watches.push(Watch {
                session,
                resumed_from,
                blocks: task.await.expect("subscriber task"),
            });
        }
        let b = book.lock().unwrap();
        if b.writes[first_write..]
            .iter()
            .any(|w| w.outcome == Outcome::Lost)
        {
            in_flight_at_kill += 1;
        }
        for w in &b.writes[first_write..] {
            if let Outcome::Acked(o) = w.outcome {
                assert!(o >= next_at_start, "round {round}: offset {o} acknowledged below nextOffset {next_at_start} at the restart");
            }
        }
        let acked = b.writes[first_write..]
            .iter()
            .filter(|w| matches!(w.outcome, Outcome::Acked(_)))
            .count();
        drop(b);
        let (code, err) = sessionlog_verify(dir.path());
        assert!(
            code == Some(0) || (code == Some(1) && err.contains("torn")),
            "round {round}: sessionlog verify after SIGKILL: exit {code:?}: {err}"
        );
        eprintln!("round {round}: {acked} writes acknowledged before the kill");
    }
    let b = book.lock().unwrap();
    eprintln!(
        "crash loop: {rounds} rounds, {} writes sent, {checked} acknowledged writes checked after the last restart, {} offsets, {in_flight_at_kill} rounds with writes in flight at the kill, {resumed} subscriber resumes",
        b.writes.len(),
        b.offsets.len()
    );
    assert!(
        checked > rounds,
        "too few writes acknowledged to prove anything: {checked}"
    );
    assert!(resumed > 0, "no subscriber resumed");
}
