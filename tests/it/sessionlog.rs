//! `sessionlog`, the real binary, against data directories built with the
//! log's own code (and the real server for `fold --at`), then damaged by
//! helpers: torn tail, zero fill, flipped bits in sealed and newest segments,
//! missing and renamed segments (cases 16, 17, 19, 20, 26). Checks exit codes,
//! messages naming file and byte, `dump --json` against what was written,
//! `fold --at` against the server's `?at=`, and `repair`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use sessiond::event::{EventBody, RecordKind};
use sessiond::log::recovery::scan_segment;
use sessiond::log::segment;
use sessiond::log::{AppendEntry, FsyncPolicy, Log, LogOptions, OpenError, Precondition};
use tempfile::TempDir;
use ulid::Ulid;

use crate::common::TestServer;

/// One event as the test wrote it.
#[derive(Debug, Clone)]
struct Written {
    offset: u64,
    session: Ulid,
    kind: RecordKind,
    json: Value,
    username: String,
    at_ms: i64,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn sessionlog(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessionlog"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sessionlog runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn run(args: &[&str]) -> Run {
    sessionlog(args, "")
}

fn p(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        fsync: FsyncPolicy::Never,
    }
}

fn entry(session: Ulid, kind: RecordKind, json: &Value, username: &str, at_ms: i64) -> AppendEntry {
    let text = if kind == RecordKind::Deleted {
        String::new()
    } else {
        json.to_string()
    };
    AppendEntry {
        key: session.0,
        kind,
        body: EventBody {
            json: text,
            username: username.into(),
            at_ms,
        }
        .encode(),
        precondition: Precondition::None,
    }
}

/// Builds a log with the log's own writer: `sessions` sessions, each created
/// then patched `patches` times, one commit per event, then one final commit
/// of three patches (a multi-record batch at the end of the newest segment).
async fn build(segment_bytes: u64, sessions: usize, patches: usize) -> (TempDir, Vec<Written>) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), opts(segment_bytes)).unwrap();
    log.start_writer(Box::new(|_| {}));
    let ids: Vec<Ulid> = (0..sessions)
        .map(|i| Ulid::from_parts(1_700_000_000_000 + i as u64, 7))
        .collect();
    let mut written = Vec::new();
    let mut at_ms = 1_764_780_350_000;
    let mut plan: Vec<(Ulid, RecordKind, Value)> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        plan.push((
            *id,
            RecordKind::Created,
            json!({"name": format!("s{i}"), "n": 0}),
        ));
    }
    for n in 1..=patches {
        for id in &ids {
            plan.push((
                *id,
                RecordKind::Patched,
                json!({"n": n, "note": "x".repeat(n % 7)}),
            ));
        }
    }
    for (id, kind, j) in plan {
        at_ms += 1;
        let user = format!("user{}", at_ms % 3);
        let offset = log.append(entry(id, kind, &j, &user, at_ms)).await.unwrap();
        written.push(Written {
            offset,
            session: id,
            kind,
            json: j,
            username: user,
            at_ms,
        });
    }
    let last: Vec<(Ulid, RecordKind, Value)> = vec![
        (ids[0], RecordKind::Patched, json!({"batch": 1})),
        (ids[0], RecordKind::Replaced, json!(["replaced"])),
        (ids[sessions - 1], RecordKind::Deleted, Value::Null),
    ];
    let entries = last
        .iter()
        .map(|(id, k, j)| entry(*id, *k, j, "batcher", at_ms + 1))
        .collect();
    let offsets = log.append_batch(entries).await;
    for ((id, kind, j), off) in last.into_iter().zip(offsets) {
        written.push(Written {
            offset: off.unwrap(),
            session: id,
            kind,
            json: j,
            username: "batcher".into(),
            at_ms: at_ms + 1,
        });
    }
    log.shutdown();
    drop(log);
    (dir, written)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    segment::list(&dir.join("log"))
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect()
}

/// Positions of the records in a segment file, as the scanner finds them.
fn positions(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let base = segment::parse_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
    scan_segment(&bytes, base)
        .records
        .iter()
        .map(|r| r.position)
        .collect()
}

fn truncate_by(path: &Path, n: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - n).unwrap();
}

fn flip(path: &Path, byte: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[byte as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn append_zeros(path: &Path, n: usize) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(&vec![0u8; n]).unwrap();
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// A copy of a data directory, so the server's recovery can be asked for its
/// verdict without changing the original.
fn copy_dir(from: &Path) -> TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::create_dir(to.path().join("log")).unwrap();
    for f in std::fs::read_dir(from.join("log")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.path().join("log").join(f.file_name())).unwrap();
    }
    to
}

fn dump_json(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["dump", p(dir), "--json"];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn event_json(w: &Written) -> Value {
    let mut v = json!({
        "offset": w.offset,
        "session": w.session.to_string(),
        "kind": w.kind.as_str(),
        "username": w.username,
        "at": sessiond::event::rfc3339_millis(w.at_ms),
    });
    match w.kind {
        RecordKind::Created | RecordKind::Replaced => v["data"] = w.json.clone(),
        RecordKind::Patched => v["patch"] = w.json.clone(),
        RecordKind::Deleted => {}
    }
    v
}

#[tokio::test]
async fn clean_log_verifies_dumps_what_was_written_and_counts_it() {
    let (dir, written) = build(4096, 5, 20).await;
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "several segments: {segs:?}");

    let r = run(&["verify", p(dir.path())]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "clean: {} segments, {} records",
            segs.len(),
            written.len()
        )),
        "{}",
        r.stdout
    );
    assert!(r.stderr.is_empty(), "{}", r.stderr);

    let dumped = dump_json(dir.path(), &[]);
    assert_eq!(dumped.len(), written.len());
    for (d, w) in dumped.iter().zip(&written) {
        let mut d = d.clone();
        let obj = d.as_object_mut().unwrap();
        let seg = obj.remove("segment").unwrap();
        let pos = obj.remove("position").unwrap().as_u64().unwrap();
        assert!(positions(&dir.path().join("log").join(seg.as_str().unwrap())).contains(&pos));
        assert_eq!(d, event_json(w));
    }

    // Filters.
    let s1 = written[1].session;
    let only = dump_json(dir.path(), &["--session", &s1.to_string()]);
    let want: Vec<Value> = written
        .iter()
        .filter(|w| w.session == s1)
        .map(event_json)
        .collect();
    assert_eq!(only.len(), want.len());
    assert!(only
        .iter()
        .zip(&want)
        .all(|(d, w)| d["offset"] == w["offset"]));
    let range = dump_json(dir.path(), &["--from", "10", "--to", "19"]);
    assert_eq!(
        range
            .iter()
            .map(|v| v["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (10..=19).collect::<Vec<_>>()
    );
    let created = dump_json(dir.path(), &["--kind", "created"]);
    assert_eq!(created.len(), 5);
    assert!(created.iter().all(|v| v["kind"] == "created"));

    let human = run(&["dump", p(dir.path()), "--to", "0"]);
    assert_eq!(human.code, 0);
    assert!(
        human.stdout.contains("created") && human.stdout.contains("00000000000000000000.seg:32"),
        "{}",
        human.stdout
    );

    let r = run(&["stats", p(dir.path())]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for line in [
        format!("segments: {}", segs.len()),
        format!("records: {}", written.len()),
        format!("offsets: 0..{}", written.len()),
        "sessions: 4 live, 1 deleted".to_string(),
        "created: 5".to_string(),
        "patched: 101".to_string(),
        "replaced: 1".to_string(),
        "deleted: 1".to_string(),
        format!("largest session: {}", written[0].session),
    ] {
        assert!(
            r.stdout.contains(&line),
            "missing {line:?} in\n{}",
            r.stdout
        );
    }
}

#[tokio::test]
async fn torn_tail_is_reported_like_recovery_and_repair_makes_it_clean() {
    // Case 16: the newest segment's last record cut short.
    let (dir, written) = build(4096, 2, 4).await;
    let newest = segments(dir.path()).pop().unwrap();
    let last = *positions(&newest).last().unwrap();
    truncate_by(&newest, 7);

    let r = run(&["verify", p(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.starts_with("sessionlog: "), "{}", r.stderr);
    assert!(r.stderr.contains("torn tail"), "{}", r.stderr);
    assert!(r.stderr.contains(&name(&newest)), "{}", r.stderr);

    // Same verdict as the server's recovery (run on a copy).
    let copy = copy_dir(dir.path());
    let (_log, report) = Log::open(copy.path(), opts(4096)).unwrap();
    let torn = report.torn_tail.expect("recovery truncates a torn tail");
    assert!(
        r.stderr.contains(&format!("at byte {}", torn.position)),
        "{} vs {torn:?}",
        r.stderr
    );
    // The final commit held three records; cutting its last one drops the whole commit.
    let batch_start = positions(&newest)[positions(&newest).len() - 2];
    assert!(torn.position <= batch_start && batch_start < last);

    // The dump is the consistent prefix, and says so.
    let d = run(&["dump", p(dir.path()), "--json"]);
    assert_eq!(d.code, 1);
    assert_eq!(d.stdout.lines().count() as u64, torn.first_dropped);
    assert!(d.stderr.contains("consistent prefix"), "{}", d.stderr);

    let r = run(&["repair", p(dir.path()), "--yes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "truncate {} at byte {}",
            name(&newest),
            torn.position
        )),
        "{}",
        r.stdout
    );
    let r = run(&["verify", p(dir.path())]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(std::fs::metadata(&newest).unwrap().len(), torn.position);
    let (log, report) = Log::open(dir.path(), opts(4096)).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(log.durable_end(), torn.first_dropped);
    assert!(written.len() as u64 > torn.first_dropped);
}

#[tokio::test]
async fn zero_filled_tail_is_a_torn_tail() {
    // Case 17 (a).
    let (dir, written) = build(1 << 20, 2, 3).await;
    let newest = segments(dir.path()).pop().unwrap();
    append_zeros(&newest, 4096);
    let r = run(&["verify", p(dir.path())]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("zero-filled tail of 4096 bytes"),
        "{}",
        r.stderr
    );
    let r = run(&["repair", p(dir.path()), "--yes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let (log, _) = Log::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(log.durable_end(), written.len() as u64, "no record lost");
}

#[tokio::test]
async fn flipped_bit_in_a_sealed_segment_is_corruption_and_repair_asks_first() {
    // Case 20 (a).
    let (dir, written) = build(2048, 3, 30).await;
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let second = &segs[1];
    let pos = positions(second);
    let hit = pos[pos.len() / 2];
    flip(second, hit + 60);

    let r = run(&["verify", p(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let copy = copy_dir(dir.path());
    let Err(OpenError::Corrupt(c)) = Log::open(copy.path(), opts(2048)) else {
        panic!("recovery must refuse a damaged sealed segment");
    };
    assert_eq!(c.position, hit);
    for needle in [
        format!("corruption in {}", second.display()),
        format!("at byte {hit} (offset {})", c.offset),
        "the server refuses to start".to_string(),
        format!("sessionlog repair {}", p(dir.path())),
    ] {
        assert!(
            r.stderr.contains(&needle),
            "missing {needle:?} in {}",
            r.stderr
        );
    }
    assert!(
        r.stdout.contains(&format!("{}: sealed", name(second))) && r.stdout.contains("DAMAGED"),
        "{}",
        r.stdout
    );

    // Declined: nothing changes.
    let before: Vec<Vec<u8>> = segs.iter().map(|s| std::fs::read(s).unwrap()).collect();
    let r = sessionlog(&["repair", p(dir.path())], "n\n");
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("nothing was changed"));
    assert_eq!(
        segs.iter()
            .map(|s| std::fs::read(s).unwrap())
            .collect::<Vec<_>>(),
        before
    );

    // Accepted on stdin: cut there; later segments moved aside, not deleted.
    let r = sessionlog(&["repair", p(dir.path())], "y\n");
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains(&format!("this drops offsets {} and later", c.offset)),
        "{}",
        r.stdout
    );
    assert_eq!(segments(dir.path()).len(), 2);
    let saved: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("repair-"))
        .collect();
    assert_eq!(saved.len(), 1);
    assert!(dir.path().join(&saved[0]).join(name(&segs[2])).exists());

    let r = run(&["verify", p(dir.path())]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let (log, _) = Log::open(dir.path(), opts(4096)).unwrap();
    assert_eq!(log.durable_end(), c.offset);
    let dumped = dump_json(dir.path(), &[]);
    assert_eq!(dumped.len() as u64, c.offset);
    assert_eq!(
        dumped.last().unwrap()["offset"],
        written[c.offset as usize - 1].offset
    );
}

#[tokio::test]
async fn damage_in_the_newest_segment_followed_by_a_later_commit_is_corruption() {
    // Case 19 (three-record variant) / case 20 (b).
    let (dir, _) = build(1 << 20, 2, 5).await;
    let newest = segments(dir.path()).pop().unwrap();
    let pos = positions(&newest);
    flip(&newest, pos[3] + 5);
    let r = run(&["verify", p(dir.path())]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "corruption in {} at byte {} (offset 3)",
            newest.display(),
            pos[3]
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("intact records of a later commit follow"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn damage_inside_the_final_batch_only_is_a_torn_tail() {
    // Case 20 (b'): the final commit is three records; damage its first.
    let (dir, written) = build(1 << 20, 2, 5).await;
    let newest = segments(dir.path()).pop().unwrap();
    let pos = positions(&newest);
    let first_of_batch = pos[pos.len() - 3];
    flip(&newest, first_of_batch + 50);
    let r = run(&["verify", p(dir.path())]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "torn tail in {} at byte {first_of_batch}",
            newest.display()
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("from offset {}", written.len() - 3)),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn missing_and_misnamed_segments_are_corruption() {
    // Case 20 (c), (d).
    let (dir, _) = build(2048, 3, 30).await;
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "{segs:?}");
    let missing = copy_dir(dir.path());
    std::fs::remove_file(missing.path().join("log").join(name(&segs[1]))).unwrap();
    let r = run(&["verify", p(missing.path())]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&name(&segs[2])) && r.stderr.contains("missing or misnamed segment"),
        "{}",
        r.stderr
    );
    let r = run(&["repair", p(missing.path()), "--yes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(run(&["verify", p(missing.path())]).code, 0);
    Log::open(missing.path(), opts(4096)).unwrap();

    let renamed = copy_dir(dir.path());
    let log = renamed.path().join("log");
    let last = segs.last().unwrap();
    std::fs::rename(log.join(name(last)), log.join(segment::file_name(999_999))).unwrap();
    let r = run(&["verify", p(renamed.path())]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("00000000000000999999.seg"),
        "{}",
        r.stderr
    );

    let misnamed = copy_dir(dir.path());
    let log = misnamed.path().join("log");
    std::fs::rename(log.join(name(&segs[2])), log.join("2.seg")).unwrap();
    let r = run(&["verify", p(misnamed.path())]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("2.seg") && r.stderr.contains("not 20 digits"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn repair_is_refused_while_the_directory_is_locked() {
    let (dir, _) = build(1 << 20, 1, 2).await;
    let newest = segments(dir.path()).pop().unwrap();
    let (_log, _) = Log::open(dir.path(), opts(1 << 20)).unwrap();
    append_zeros(&newest, 100);
    let r = run(&["repair", p(dir.path()), "--yes"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("another process holds") && r.stderr.contains("LOCK"),
        "{}",
        r.stderr
    );
    // Read-only subcommands take no lock.
    assert_eq!(
        run(&["stats", p(dir.path())]).code,
        1,
        "the zero fill is reported, without the lock"
    );
}

#[test]
fn missing_or_wrong_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("nope");
    let r = run(&["verify", p(&gone)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.starts_with("sessionlog: no such data directory"),
        "{}",
        r.stderr
    );
    assert!(!gone.exists(), "nothing is created");
    let r = run(&["repair", p(&gone), "--yes"]);
    assert_eq!(r.code, 2);
    assert!(!gone.exists(), "repair creates nothing either");
    let r = run(&["stats", p(tmp.path())]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("has no log/ directory"), "{}", r.stderr);
    let r = run(&["dump", p(tmp.path()), "--from", "x1"]);
    assert_eq!(r.code, 2);
}

#[tokio::test]
async fn dump_into_a_closed_pipe_ends_quietly() {
    let (dir, _) = build(1 << 20, 20, 60).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessionlog"))
        .args(["dump", p(dir.path()), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the pipe is closed like `| head -1`.
    let out = child.wait_with_output().unwrap();
    assert_eq!(serde_json::from_str::<Value>(&first).unwrap()["offset"], 0);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fold_at_equals_the_servers_at() {
    let s = TestServer::start().await;
    let h = &s.http;
    let (id, _) = h.create(&json!({"title": "t", "tags": ["a"]})).await;
    let (other, _) = h.create(&json!({})).await;
    for i in 0..6 {
        h.patch(
            &id,
            &json!({"i": i, "tags": if i % 2 == 0 { Value::Null } else { json!([i]) }}),
        )
        .await;
        h.patch(&other, &json!({"o": i})).await;
    }
    let end = h.status().await["log"]["nextOffset"].as_u64().unwrap();
    let dir = s.dir.path().to_path_buf();
    for at in 0..end {
        let server = h.get(&format!("/sessions/{id}?at={at}")).await;
        // Read-only while the server runs: no lock taken.
        let r = run(&["fold", p(&dir), &id, "--at", &at.to_string()]);
        if server.status == 200 {
            assert_eq!(r.code, 0, "{}", r.stderr);
            let mut want = server.json();
            want.as_object_mut().unwrap().remove("clients");
            assert_eq!(
                serde_json::from_str::<Value>(&r.stdout).unwrap(),
                want,
                "at {at}"
            );
        } else {
            assert_eq!(r.code, 2, "at {at}: server said {}", server.status);
            assert!(r.stderr.contains("did not exist yet"), "{}", r.stderr);
        }
    }
    let r = run(&["fold", p(&dir), &id]);
    let mut now = h.state(&id).await;
    now.as_object_mut().unwrap().remove("clients");
    assert_eq!(serde_json::from_str::<Value>(&r.stdout).unwrap(), now);
    let r = run(&["fold", p(&dir), &id, "--at", &end.to_string()]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("beyond the end of the log"),
        "{}",
        r.stderr
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_subcommands_see_a_consistent_prefix_while_the_log_appends() {
    // Case 26 (c): verify and dump in a loop while a writer appends.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), opts(64 << 10)).unwrap();
    log.start_writer(Box::new(|_| {}));
    let id = Ulid::from_parts(1, 1);
    log.append(entry(id, RecordKind::Created, &json!({}), "w", 1))
        .await
        .unwrap();
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..3000 {
                let batch = (0..1 + i % 4)
                    .map(|k| entry(id, RecordKind::Patched, &json!({"i": i, "k": k}), "w", 2))
                    .collect();
                for r in log.append_batch(batch).await {
                    r.unwrap();
                }
            }
        })
    };
    let path = dir.path().to_path_buf();
    let mut runs = 0;
    while !writer.is_finished() || runs < 2 {
        let path = path.clone();
        let (v, d) = tokio::task::spawn_blocking(move || {
            (
                run(&["verify", p(&path)]),
                run(&["dump", p(&path), "--json"]),
            )
        })
        .await
        .unwrap();
        assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
        assert_eq!(d.code, 0, "{}", d.stderr);
        for (i, line) in d.stdout.lines().enumerate() {
            let e: Value = serde_json::from_str(line).unwrap();
            assert_eq!(e["offset"], i as u64, "a gap-free prefix");
        }
        runs += 1;
    }
    writer.await.unwrap();
    log.shutdown();
    let r = run(&["verify", p(&path)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("clean:"), "{}", r.stdout);
}

#[tokio::test]
async fn an_event_the_fold_refuses_is_reported() {
    // Intact frames, but a patch of a session that was never created: the
    // server's fold refuses it, so verify does too.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), opts(1 << 20)).unwrap();
    log.start_writer(Box::new(|_| {}));
    let id = Ulid::from_parts(9, 9);
    log.append(entry(id, RecordKind::Patched, &json!({"a": 1}), "x", 1))
        .await
        .unwrap();
    log.shutdown();
    drop(log);
    let r = run(&["verify", p(dir.path())]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("cannot fold") && r.stderr.contains(&id.to_string()),
        "{}",
        r.stderr
    );
}
