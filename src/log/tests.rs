//! Tests of the log as a whole: append/reopen, recovery at every cut, zero
//! fill, corruption, rolls, preconditions, injected I/O faults, and a crash
//! test that SIGKILLs a child process appending with `FSYNC=always`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::recovery::{scan_segment, CorruptionKind};
use super::segment;
use super::writer::Fault;
use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        fsync: FsyncPolicy::Always,
    }
}

fn open(dir: &Path, o: LogOptions) -> (Log, RecoveryReport) {
    let (log, report) = open_unstarted(dir, o).unwrap();
    log.start_writer(Box::new(|_| {}));
    (log, report)
}

/// Offsets the commit hook has seen, in the order it saw them.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<Offset>>>;

/// Starts the writer with a hook that records every committed offset.
fn start_recording(log: &Log) -> Seen {
    let seen = Seen::default();
    let s = seen.clone();
    log.start_writer(Box::new(move |records| {
        s.lock().unwrap().extend(records.iter().map(|r| r.offset));
    }));
    seen
}

/// `Log::open`, waiting out a lock that a concurrently spawned child process
/// holds for an instant: between fork and exec a child shares this process's
/// open file descriptions (flock locks included) until exec closes them
/// (O_CLOEXEC). Only tests spawn processes while reopening logs in-process.
fn open_unstarted(dir: &Path, o: LogOptions) -> Result<(Log, RecoveryReport), OpenError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Log::open(dir, o.clone()) {
            Err(OpenError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn entry(key: u128, kind: RecordKind, body: &[u8]) -> AppendEntry {
    AppendEntry {
        key,
        kind,
        body: body.to_vec(),
        precondition: Precondition::None,
    }
}

/// Every record in the log as (offset, key, kind, body).
fn read_all(log: &Log) -> Vec<(Offset, u128, RecordKind, Vec<u8>)> {
    let mut out = Vec::new();
    log.visit(0, u64::MAX, |r| {
        out.push((r.offset, r.key, r.kind, r.body.to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    segment::list(&dir.join("log"))
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect()
}

fn newest(dir: &Path) -> PathBuf {
    segments(dir).pop().unwrap()
}

/// Appends `commits` commits of `per_commit` records each, one commit at a time.
fn fill(log: &Log, commits: usize, per_commit: usize) -> Vec<Offset> {
    let rt = runtime();
    let mut offsets = Vec::new();
    for c in 0..commits {
        let batch = (0..per_commit)
            .map(|i| {
                entry(
                    (c * 1000 + i) as u128,
                    RecordKind::Created,
                    format!("body {c}/{i}").as_bytes(),
                )
            })
            .collect();
        for r in rt.block_on(log.append_batch(batch)) {
            offsets.push(r.unwrap());
        }
    }
    offsets
}

fn flip_bit(path: &Path, position: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn zero_range(path: &Path, from: u64, len: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let end = ((from + len) as usize).min(bytes.len());
    bytes[from as usize..end].fill(0);
    std::fs::write(path, bytes).unwrap();
}

fn append_zeros(path: &Path, n: usize) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(&vec![0u8; n]).unwrap();
}

/// Positions of the records in a segment file.
fn positions(path: &Path) -> Vec<u64> {
    let base = segment::parse_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
    scan_segment(&std::fs::read(path).unwrap(), base)
        .records
        .iter()
        .map(|r| r.position)
        .collect()
}

#[test]
fn reopen_returns_what_was_appended_and_offsets_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, report) = open(tmp.path(), opts(64 << 20));
    assert!(report.created.is_some());
    let offsets = fill(&log, 10, 3);
    assert_eq!(offsets, (0..30).collect::<Vec<_>>());
    let before = read_all(&log);
    drop(log);
    let (log, report) = open(tmp.path(), opts(64 << 20));
    assert_eq!(report, RecoveryReport::default());
    assert_eq!(read_all(&log), before);
    assert_eq!(fill(&log, 1, 1), vec![30]);
}

#[test]
fn offsets_are_contiguous_across_rolls_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(200));
    fill(&log, 20, 2);
    let segs = segments(tmp.path());
    assert!(segs.len() >= 10, "only {} segments", segs.len());
    drop(log);
    let (log, _) = open(tmp.path(), opts(200));
    let records = read_all(&log);
    assert_eq!(
        records.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..40).collect::<Vec<_>>()
    );
    // Segment names match the first offset each holds.
    for path in segments(tmp.path()) {
        let base = segment::parse_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
        let scan = scan_segment(&std::fs::read(&path).unwrap(), base);
        if let Some(first) = scan.records.first() {
            assert_eq!(first.offset, base);
        }
    }
    assert_eq!(fill(&log, 1, 1), vec![40]);
}

#[test]
fn a_second_opener_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 3, 1);
    // Plant a torn tail: the second opener must not truncate it.
    let seg = newest(tmp.path());
    append_zeros(&seg, 100);
    let len = std::fs::metadata(&seg).unwrap().len();
    match Log::open(tmp.path(), opts(64 << 20)) {
        Err(OpenError::Locked { lock }) => assert_eq!(lock, tmp.path().join("LOCK")),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("expected Locked, got an open log"),
    }
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
}

/// Case 16: torn final record, and the truncation at every byte of the last commit.
#[test]
fn cutting_the_last_commit_at_every_byte_recovers_the_earlier_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 3, 1);
    fill(&log, 1, 3); // the last commit: three records
    drop(log);
    let seg = newest(tmp.path());
    let pristine = std::fs::read(&seg).unwrap();
    let last_commit_start = positions(&seg)[3] as usize;
    for cut in last_commit_start + 1..pristine.len() {
        std::fs::write(&seg, &pristine[..cut]).unwrap();
        let (log, report) = open(tmp.path(), opts(64 << 20));
        let torn = report
            .torn_tail
            .unwrap_or_else(|| panic!("cut at {cut}: no torn tail reported"));
        assert_eq!(torn.position, last_commit_start as u64, "cut at {cut}");
        assert_eq!(torn.first_dropped, 3);
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            last_commit_start as u64
        );
        assert_eq!(read_all(&log).len(), 3, "cut at {cut}");
        assert_eq!(fill(&log, 1, 1), vec![3], "cut at {cut}: next append");
        drop(log);
        let (log, report) = open(tmp.path(), opts(64 << 20));
        assert_eq!(report.torn_tail, None);
        assert_eq!(read_all(&log).len(), 4);
    }
}

/// Case 17: zero-filled tails are truncated, never decoded as records.
#[test]
fn zero_filled_tails_are_truncated() {
    for zeros in [4096usize, 1 << 20, record::HEADER_LEN] {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = open(tmp.path(), opts(64 << 20));
        fill(&log, 10, 1);
        drop(log);
        let seg = newest(tmp.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        append_zeros(&seg, zeros);
        let (log, report) = open(tmp.path(), opts(64 << 20));
        let torn = report.torn_tail.expect("zero tail reported");
        assert!(torn.zero_filled, "{zeros}: {torn}");
        assert_eq!(torn.dropped_bytes, zeros as u64);
        assert!(torn
            .to_string()
            .contains(&format!("zero-filled tail of {zeros} bytes")));
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
        assert_eq!(read_all(&log).len(), 10);
    }
}

/// Case 17 (c): the last record and the 4 KiB after it zeroed, size kept.
#[test]
fn zeroing_the_last_record_loses_only_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 10, 1);
    drop(log);
    let seg = newest(tmp.path());
    append_zeros(&seg, 4096);
    let last = *positions(&seg).last().unwrap();
    zero_range(&seg, last, u64::MAX / 2);
    let (log, report) = open(tmp.path(), opts(64 << 20));
    assert_eq!(report.torn_tail.unwrap().first_dropped, 9);
    assert_eq!(read_all(&log).len(), 9);
    assert_eq!(fill(&log, 1, 1), vec![9]);
}

/// Case 17 (d): the newest segment replaced by zeros of the same size.
#[test]
fn an_all_zero_newest_segment_restarts_at_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(300));
    fill(&log, 12, 1);
    drop(log);
    let seg = newest(tmp.path());
    let base = segment::parse_file_name(seg.file_name().unwrap().to_str().unwrap()).unwrap();
    assert!(base > 0);
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::write(&seg, vec![0u8; len as usize]).unwrap();
    let (log, report) = open(tmp.path(), opts(300));
    let torn = report.torn_tail.unwrap();
    assert!(torn.header_rewritten);
    assert_eq!(read_all(&log).len() as u64, base);
    assert_eq!(fill(&log, 1, 1), vec![base]);
    drop(log);
    let (log, _) = open(tmp.path(), opts(300));
    assert_eq!(read_all(&log).len() as u64, base + 1);
}

/// Case 19: one damaged record alone in the newest segment is a torn tail.
#[test]
fn damaged_only_record_of_the_newest_segment_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(300));
    while segments(tmp.path()).len() < 2 || positions(&newest(tmp.path())).len() != 1 {
        fill(&log, 1, 1);
    }
    let n = read_all(&log).len() as u64;
    drop(log);
    let seg = newest(tmp.path());
    flip_bit(&seg, positions(&seg)[0] + 4); // the length field
    let (log, report) = open(tmp.path(), opts(300));
    assert_eq!(report.torn_tail.unwrap().first_dropped, n - 1);
    // The next write goes to the same base-offset file, no "exists" error.
    assert_eq!(fill(&log, 1, 1), vec![n - 1]);
    assert_eq!(newest(tmp.path()), seg);
}

/// Cases 19 and 20 (b): damage followed by a later commit is corruption.
#[test]
fn damage_followed_by_a_later_commit_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 3, 1);
    drop(log);
    let seg = newest(tmp.path());
    let pos = positions(&seg);
    flip_bit(&seg, pos[0] + record::HEADER_LEN as u64 + 1);
    let before = std::fs::read(&seg).unwrap();
    let err = match open_unstarted(tmp.path(), opts(64 << 20)) {
        Err(OpenError::Corrupt(c)) => c,
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, got an open log"),
    };
    assert_eq!(err.position, pos[0]);
    assert_eq!(err.offset, 0);
    assert_eq!(err.intact_after, 2);
    let msg = err.to_string();
    assert!(
        msg.contains("00000000000000000000.seg") && msg.contains(&format!("byte {}", pos[0])),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        before,
        "a refused open changed the segment"
    );
}

/// Case 20 (b'): damage inside the final batch only is a torn tail.
#[test]
fn damage_inside_the_final_batch_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 2, 1);
    fill(&log, 1, 4);
    drop(log);
    let seg = newest(tmp.path());
    let pos = positions(&seg);
    flip_bit(&seg, pos[3] + record::HEADER_LEN as u64 + 1); // second record of the last batch; two intact ones follow
    let (log, report) = open(tmp.path(), opts(64 << 20));
    let torn = report.torn_tail.unwrap();
    assert_eq!(
        (torn.position, torn.first_dropped, torn.dropped_records),
        (pos[2], 2, 1)
    );
    assert_eq!(read_all(&log).len(), 2);
}

/// Case 20 (a), (c), (d): sealed damage, a missing or a misnamed segment.
#[test]
fn sealed_damage_missing_and_misnamed_segments_are_refused() {
    let make = || {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = open(tmp.path(), opts(400));
        fill(&log, 30, 1);
        drop(log);
        let segs = segments(tmp.path());
        assert!(segs.len() >= 4);
        (tmp, segs)
    };
    let refused = |dir: &Path| match open_unstarted(dir, opts(400)) {
        Err(OpenError::Corrupt(c)) => c,
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, got an open log"),
    };

    let (tmp, segs) = make();
    let p = positions(&segs[1])[0];
    flip_bit(&segs[1], p + 50);
    let c = refused(tmp.path());
    assert_eq!((c.file.clone(), c.position), (segs[1].clone(), p));

    let (tmp, segs) = make();
    std::fs::remove_file(&segs[1]).unwrap();
    let c = refused(tmp.path());
    assert!(matches!(c.kind, CorruptionKind::Gap { .. }), "{c}");
    assert_eq!(c.file, segs[2]);

    let (tmp, segs) = make();
    let wrong = segs[2].with_file_name(segment::file_name(999));
    std::fs::rename(&segs[2], &wrong).unwrap();
    let listing = segments(tmp.path());
    let c = refused(tmp.path());
    assert!(matches!(c.kind, CorruptionKind::Gap { .. }), "{c}");
    assert_eq!(
        segments(tmp.path()),
        listing,
        "a refused open renamed or removed files"
    );

    let (tmp, segs) = make();
    std::fs::rename(&segs[2], segs[2].with_file_name("7.seg")).unwrap();
    assert!(matches!(refused(tmp.path()).kind, CorruptionKind::Misnamed));
}

#[test]
fn preconditions_are_checked_in_log_order_within_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    let rt = runtime();
    let with = |key, kind, pre| AppendEntry {
        key,
        kind,
        body: b"x".to_vec(),
        precondition: pre,
    };
    let results = rt.block_on(log.append_batch(vec![
        with(1, RecordKind::Created, Precondition::Absent),
        with(1, RecordKind::Created, Precondition::Absent),
        with(1, RecordKind::Patched, Precondition::LiveAt(0)),
        with(1, RecordKind::Patched, Precondition::LiveAt(0)),
        with(2, RecordKind::Patched, Precondition::Live),
        with(1, RecordKind::Deleted, Precondition::Live),
        with(1, RecordKind::Replaced, Precondition::Live),
    ]));
    assert_eq!(
        results,
        vec![
            Ok(0),
            Err(AppendError::Exists),
            Ok(1),
            Err(AppendError::Mismatch {
                expected: 0,
                current: 1
            }),
            Err(AppendError::NotFound),
            Ok(2),
            Err(AppendError::Deleted { deleted_at: 2 }),
        ]
    );
    drop(log);
    // Key states survive a restart.
    let (log, _) = open(tmp.path(), opts(64 << 20));
    let r = rt.block_on(log.append(with(1, RecordKind::Replaced, Precondition::Live)));
    assert_eq!(r, Err(AppendError::Deleted { deleted_at: 2 }));
}

#[test]
fn concurrent_if_match_writers_cannot_both_win() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        log.append(entry(7, RecordKind::Created, b"{}"))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move {
                    log.append(AppendEntry {
                        precondition: Precondition::LiveAt(0),
                        ..entry(7, RecordKind::Patched, b"{}")
                    })
                    .await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
    });
}

#[test]
fn the_commit_hook_sees_every_record_in_order_before_the_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open_unstarted(tmp.path(), opts(500)).unwrap();
    let seen = start_recording(&log);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..200u128)
            .map(|k| {
                let log = log.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let o = log
                        .append(entry(k, RecordKind::Created, b"{}"))
                        .await
                        .unwrap();
                    assert!(
                        seen.lock().unwrap().contains(&o),
                        "acked before the hook ran"
                    );
                    assert!(log.durable_end() > o);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(*seen.lock().unwrap(), (0..200).collect::<Vec<_>>());
}

#[test]
fn interval_policy_publishes_only_after_the_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let o = LogOptions {
        segment_bytes: 64 << 20,
        fsync: FsyncPolicy::Interval(Duration::from_millis(50)),
    };
    let (log, _) = open_unstarted(tmp.path(), o).unwrap();
    let seen = start_recording(&log);
    let rt = runtime();
    rt.block_on(async {
        let mut durable = log.watch_durable_end();
        let o = log
            .append(entry(1, RecordKind::Created, b"{}"))
            .await
            .unwrap();
        assert_eq!(o, 0);
        // Acknowledged, then visible once the periodic sync ran.
        tokio::time::timeout(Duration::from_secs(10), durable.wait_for(|&d| d > 0))
            .await
            .unwrap()
            .unwrap();
    });
    // The writer advances the durable end just before it runs the hook.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![0]);
}

#[test]
fn disk_full_on_write_rolls_back_and_the_log_keeps_taking_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 3, 1);
    let seg = newest(tmp.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    log.inject_fault(Fault::Write(libc::ENOSPC));
    let rt = runtime();
    let r = rt.block_on(log.append(entry(9, RecordKind::Created, &[7u8; 1000])));
    assert_eq!(r, Err(AppendError::DiskFull));
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len,
        "half a batch stayed behind"
    );
    assert_eq!(log.durable_end(), 3);
    // Case 18 variant: later appends land exactly where the good data ended.
    assert_eq!(fill(&log, 5, 1), (3..8).collect::<Vec<_>>());
    assert_eq!(positions(&seg)[3], len);
    drop(log);
    let (log, report) = open(tmp.path(), opts(64 << 20));
    assert_eq!(report.torn_tail, None);
    assert_eq!(read_all(&log).len(), 8);
}

/// Case 22: a failed sync is never retried; the log refuses writes until restart.
#[test]
fn failed_sync_fails_the_batch_and_the_log_stays_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 3, 1);
    log.inject_fault(Fault::Sync(libc::EIO));
    let rt = runtime();
    let r = rt.block_on(log.append(entry(9, RecordKind::Created, b"lost?")));
    assert!(matches!(r, Err(AppendError::Unavailable(_))), "{r:?}");
    let r = rt.block_on(log.append(entry(10, RecordKind::Created, b"later")));
    assert!(matches!(r, Err(AppendError::Unavailable(_))), "{r:?}");
    // Reads keep working and show nothing that was not acknowledged.
    assert_eq!(read_all(&log).len(), 3);
    assert_eq!(log.durable_end(), 3);
    drop(log);
    // After a restart the outcome of the failed batch is whatever is on disk.
    let (log, _) = open(tmp.path(), opts(64 << 20));
    let n = read_all(&log).len();
    assert!(n == 3 || n == 4, "{n}");
    assert_eq!(fill(&log, 1, 1), vec![n as u64]);
}

#[test]
fn a_failed_write_that_is_not_disk_full_fails_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 1, 1);
    log.inject_fault(Fault::Write(libc::EIO));
    let rt = runtime();
    let r = rt.block_on(log.append(entry(9, RecordKind::Created, b"x")));
    assert!(matches!(r, Err(AppendError::Unavailable(_))));
    let r = rt.block_on(log.append(entry(10, RecordKind::Created, b"y")));
    assert!(matches!(r, Err(AppendError::Unavailable(_))));
    drop(log);
    let (log, report) = open(tmp.path(), opts(64 << 20));
    assert_eq!(
        report.torn_tail, None,
        "the partial batch was cut off before restart"
    );
    assert_eq!(read_all(&log).len(), 1);
}

#[test]
fn reads_are_bounded_by_the_durable_end_and_validate_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(300));
    fill(&log, 20, 1);
    let got = log.read(5, |r| (r.offset, r.body.to_vec())).unwrap();
    assert_eq!(got, (5, b"body 5/0".to_vec()));
    assert!(matches!(
        log.read(20, |_| ()),
        Err(ReadError::OutOfRange { .. })
    ));
    let mut seen = Vec::new();
    log.visit(7, 12, |r| {
        seen.push(r.offset);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen, vec![7, 8, 9, 10, 11]);
    let stats = log.stats();
    assert_eq!((stats.first_offset, stats.next_offset), (0, 20));
    assert_eq!(stats.segments, segments(tmp.path()).len());
}

#[test]
fn shutdown_syncs_and_later_appends_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(
        tmp.path(),
        LogOptions {
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Never,
        },
    );
    fill(&log, 4, 1);
    log.shutdown();
    let rt = runtime();
    let r = rt.block_on(log.append(entry(1, RecordKind::Created, b"x")));
    assert!(matches!(r, Err(AppendError::Unavailable(_))));
    drop(log);
    let (log, _) = open(tmp.path(), opts(64 << 20));
    assert_eq!(read_all(&log).len(), 4);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Append random batches across rolls, reopen: exactly the same records back.
    #[test]
    fn reopen_round_trip(batches in prop::collection::vec(
        prop::collection::vec((0u128..8, prop::collection::vec(any::<u8>(), 1..300)), 1..6), 1..12),
        segment_bytes in 200u64..4000)
    {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = open(tmp.path(), opts(segment_bytes));
        let rt = runtime();
        let mut expected = Vec::new();
        for batch in batches {
            let entries: Vec<_> = batch.iter().map(|(k, b)| entry(*k, RecordKind::Replaced, b)).collect();
            for (r, (k, b)) in rt.block_on(log.append_batch(entries)).into_iter().zip(batch) {
                expected.push((r.unwrap(), k, RecordKind::Replaced, b));
            }
        }
        drop(log);
        let (log, report) = open(tmp.path(), opts(segment_bytes));
        prop_assert_eq!(report, RecoveryReport::default());
        prop_assert_eq!(read_all(&log), expected);
    }

    /// Flip any bit of a log: opening either refuses or recovers a prefix of
    /// whole commits; it never serves a changed record.
    #[test]
    fn any_flipped_bit_is_detected(pick in any::<prop::sample::Index>(), bit in 0u8..8) {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = open(tmp.path(), opts(400));
        fill(&log, 12, 2);
        let before = read_all(&log);
        drop(log);
        let segs = segments(tmp.path());
        let sizes: Vec<u64> = segs.iter().map(|s| std::fs::metadata(s).unwrap().len()).collect();
        let mut at = pick.index(sizes.iter().sum::<u64>() as usize) as u64;
        let mut i = 0;
        while at >= sizes[i] { at -= sizes[i]; i += 1; }
        let mut bytes = std::fs::read(&segs[i]).unwrap();
        bytes[at as usize] ^= 1 << bit;
        std::fs::write(&segs[i], bytes).unwrap();
        if let Ok((log, _)) = open_unstarted(tmp.path(), opts(400)) {
            let after = read_all(&log);
            prop_assert!(after.len() < before.len() && after.len().is_multiple_of(2));
            prop_assert_eq!(&before[..after.len()], &after[..]);
        }
    }
}

/// Child side of the crash test: appends until killed, printing each
/// acknowledged offset and key. Runs only when the parent asks for it.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("SESSIOND_CRASH_CHILD_DIR") else {
        return;
    };
    use std::io::Write;
    let (log, _) = open(Path::new(&dir), opts(4096));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    rt.block_on(async {
        let tasks: Vec<_> = (0..8u128)
            .map(|w| {
                let log = log.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    for i in 0u128.. {
                        let key = (w << 64) | i;
                        let o = log
                            .append(entry(key, RecordKind::Created, &[w as u8; 150]))
                            .await
                            .unwrap();
                        let mut out = out.lock().unwrap();
                        writeln!(out, "{o} {key}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Kills a child appending with FSYNC=always at random moments; every append
/// it reported as acknowledged must be there after reopening, in order.
#[test]
fn acknowledged_appends_survive_sigkill() {
    let rounds: usize = std::env::var("SESSIOND_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: std::collections::BTreeMap<Offset, u128> = Default::default();
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..rounds {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "log::tests::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SESSIOND_CRASH_CHILD_DIR", tmp.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        std::thread::sleep(Duration::from_millis(20 + rng_state % 150));
        child.kill().unwrap(); // SIGKILL
        let output = child.wait_with_output().unwrap();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut parts = line.split(' ');
            let (Some(o), Some(k)) = (parts.next(), parts.next()) else {
                continue;
            };
            // A line cut by the kill is incomplete, so it may not parse: skip it.
            if let (Ok(o), Ok(k)) = (o.parse::<Offset>(), k.parse::<u128>()) {
                let prev = acked.insert(o, k);
                assert!(
                    prev.is_none() || prev == Some(k),
                    "round {round}: offset {o} reused"
                );
            }
        }
        let (log, _) = open_unstarted(tmp.path(), opts(4096))
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let records = read_all(&log);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.0, i as u64, "round {round}: offsets not dense");
        }
        for (&o, &k) in &acked {
            let r = records
                .get(o as usize)
                .unwrap_or_else(|| panic!("round {round}: acked offset {o} lost"));
            assert_eq!(r.1, k, "round {round}: offset {o} holds another record");
        }
    }
    assert!(
        acked.len() > rounds,
        "the child acknowledged too little to prove anything: {}",
        acked.len()
    );
}

// ---- The log cases of ../shared/cases/cases.md, one test each ----

/// Case 16: torn final record after a crash (truncate -7, last 7 bytes zeroed,
/// cut inside the last header); the next append reuses the dropped offset.
#[test]
fn case16_torn_final_record() {
    for variant in ["truncate-7", "zero-last-7", "cut-mid-header"] {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = open(tmp.path(), opts(64 << 20));
        fill(&log, 4, 1);
        drop(log);
        let seg = newest(tmp.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        let last = *positions(&seg).last().unwrap();
        match variant {
            "truncate-7" => std::fs::OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_len(len - 7)
                .unwrap(),
            "zero-last-7" => zero_range(&seg, len - 7, 7),
            _ => std::fs::OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_len(last + 20)
                .unwrap(),
        }
        let (log, report) = open(tmp.path(), opts(64 << 20));
        let torn = report.torn_tail.unwrap();
        assert_eq!((torn.position, torn.first_dropped), (last, 3), "{variant}");
        assert!(
            torn.to_string().contains("00000000000000000000.seg"),
            "{variant}: {torn}"
        );
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            last,
            "{variant}: not physically truncated"
        );
        assert_eq!(read_all(&log).len(), 3);
        assert_eq!(fill(&log, 1, 1), vec![3], "{variant}");
        drop(log);
        let (log, _) = open(tmp.path(), opts(64 << 20));
        assert_eq!(read_all(&log).len(), 4, "{variant}");
    }
}

/// Case 18: appends after a repaired torn tail start exactly where the valid
/// data ended and survive the next crash.
#[test]
fn case18_appending_after_a_partial_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 3, 1);
    drop(log);
    let seg = newest(tmp.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    let good_end = positions(&seg)[2]; // where the record about to be torn starts
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    assert_eq!(fill(&log, 5, 1), (2..7).collect::<Vec<_>>());
    drop(log); // like a kill: nothing is flushed at drop that was not already synced
    assert_eq!(
        positions(&seg)[2],
        good_end,
        "a gap was left before the new records"
    );
    let (log, report) = open(tmp.path(), opts(64 << 20));
    assert_eq!(report.torn_tail, None);
    assert_eq!(read_all(&log).len(), 7);
}

/// Case 23 (a): offsets never go backwards after a tombstone and a restart.
#[test]
fn case23_offsets_not_reused_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    let rt = runtime();
    rt.block_on(log.append(entry(1, RecordKind::Created, b"c")))
        .unwrap();
    for _ in 0..3 {
        rt.block_on(log.append(entry(1, RecordKind::Patched, b"p")))
            .unwrap();
    }
    let tombstone = rt
        .block_on(log.append(entry(1, RecordKind::Deleted, b"d")))
        .unwrap();
    drop(log);
    let (log, _) = open(tmp.path(), opts(64 << 20));
    let next = rt
        .block_on(log.append(entry(2, RecordKind::Created, b"c")))
        .unwrap();
    assert!(next > tombstone);
}

/// Case 23 (c): with `interval`, an acknowledged record is not published (the
/// durable end does not move, the hook does not run) before it is synced.
#[test]
fn case23_interval_mode_never_publishes_unsynced_records() {
    let tmp = tempfile::tempdir().unwrap();
    let o = LogOptions {
        segment_bytes: 64 << 20,
        fsync: FsyncPolicy::Interval(Duration::from_secs(60)),
    };
    let (log, _) = open_unstarted(tmp.path(), o).unwrap();
    let seen = start_recording(&log);
    let rt = runtime();
    assert_eq!(
        rt.block_on(log.append(entry(1, RecordKind::Created, b"c"))),
        Ok(0)
    );
    assert_eq!(log.durable_end(), 0);
    assert!(seen.lock().unwrap().is_empty());
    assert!(
        log.read(0, |_| ()).is_err(),
        "an unsynced record was readable"
    );
    log.shutdown(); // syncs, then publishes
    assert_eq!(log.durable_end(), 1);
    assert_eq!(*seen.lock().unwrap(), vec![0]);
}

/// Case 26: reads never map past a file's end: a tiny active segment under the
/// default 64 MiB segment size, and sealed segments after a roll.
#[test]
fn case26_reads_of_small_segments_never_touch_past_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(tmp.path(), opts(64 << 20));
    fill(&log, 1, 1);
    assert_eq!(log.read(0, |r| r.body.to_vec()).unwrap(), b"body 0/0");
    drop(log);
    let (log, _) = open(tmp.path(), opts(100));
    fill(&log, 3, 1); // rolls: the first segment is now sealed and mapped
    assert!(segments(tmp.path()).len() >= 2);
    assert_eq!(read_all(&log).len(), 4);
}

/// Case 27: a stale lock after kill -9 is covered by the crash test (every
/// round reopens after SIGKILL); garbage in LOCK and an unusable DATA_DIR here.
#[test]
fn case27_lock_file_contents_do_not_matter_and_bad_dirs_get_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("LOCK"), b"1\n").unwrap(); // "pid 1 is alive"
    let (log, _) = open(tmp.path(), opts(64 << 20));
    drop(log);
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    match open_unstarted(&file, opts(64 << 20)) {
        Err(e @ OpenError::Io { .. }) => assert!(e.to_string().contains("not-a-dir"), "{e}"),
        Err(e) => panic!("expected an I/O error naming the path, got {e}"),
        Ok(_) => panic!("opened a file as a data directory"),
    }
}
