//! Log engine benchmarks: append throughput per FSYNC policy with 1 and 64
//! concurrent appenders (~200-byte events), the same through `append_batch`
//! (64 entries a call, so the per-call wakeups are amortized), scan throughput over sealed
//! segments, and recovery time of a full 64 MiB active segment.
//!
//! Run: `cargo bench --bench log`. Figures are recorded in README.md.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sessiond::event::EventBody;
use sessiond::log::{AppendEntry, FsyncPolicy, Log, LogOptions, Precondition, RecordKind};

/// A ~200-byte event body, like a small PATCH.
fn body(i: u64) -> Vec<u8> {
    EventBody {
        json: format!(
            r##"{{"cursor":{{"x":{i},"y":{}}},"selection":[1,2,3],"text":"the quick brown fox jumps over the lazy dog","color":"#33aa77","seq":{i}}}"##,
            i * 7
        ),
        username: "benchmark-user".into(),
        at_ms: 1_764_780_350_123,
    }
    .encode()
}

/// Bodies made once, so the benchmarks time the log rather than JSON formatting.
fn bodies() -> &'static [Vec<u8>] {
    static BODIES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    BODIES.get_or_init(|| (0..64).map(body).collect())
}

fn entry(key: u128, i: u64) -> AppendEntry {
    AppendEntry {
        key,
        kind: RecordKind::Patched,
        body: bodies()[(i % 64) as usize].clone(),
        precondition: Precondition::None,
    }
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("append");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let policies = [
        ("always", FsyncPolicy::Always),
        (
            "interval-10ms",
            FsyncPolicy::Interval(Duration::from_millis(10)),
        ),
        ("never", FsyncPolicy::Never),
    ];
    for (name, fsync) in policies {
        for appenders in [1usize, 64] {
            // Appends per iteration: enough that one iteration spans many commits.
            let per_task = if appenders == 1 { 64 } else { 32 };
            let total = (appenders * per_task) as u64;
            let tmp = tempfile::tempdir().unwrap();
            let log = started(tmp.path(), 64 << 20, fsync);
            g.throughput(Throughput::Elements(total));
            g.bench_function(
                BenchmarkId::new(name, format!("{appenders}-appenders")),
                |b| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let start = Instant::now();
                            for _ in 0..iters {
                                let tasks: Vec<_> = (0..appenders)
                                    .map(|t| {
                                        let log = log.clone();
                                        tokio::spawn(async move {
                                            for i in 0..per_task as u64 {
                                                log.append(entry(t as u128, i)).await.unwrap();
                                            }
                                        })
                                    })
                                    .collect();
                                for t in tasks {
                                    t.await.unwrap();
                                }
                            }
                            start.elapsed()
                        })
                    })
                },
            );
            log.shutdown();
        }
    }
    g.finish();
}

/// The engine without per-call overhead: one caller appending batches of 64
/// entries (`append_batch`), each batch one commit.
fn append_batched(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("append-batch");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (name, fsync) in [
        ("always", FsyncPolicy::Always),
        ("never", FsyncPolicy::Never),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let log = started(tmp.path(), 64 << 20, fsync);
        let batches = 16u64;
        g.throughput(Throughput::Elements(batches * 64));
        g.bench_function(BenchmarkId::new(name, "64-per-batch"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters * batches {
                        let batch = (0..64).map(|i| entry(i as u128, i)).collect();
                        for r in log.append_batch(batch).await {
                            r.unwrap();
                        }
                    }
                    start.elapsed()
                })
            })
        });
        log.shutdown();
    }
    g.finish();
}

/// Opens a log in `dir` and starts its writer (with a no-op commit hook).
fn started(dir: &std::path::Path, segment_bytes: u64, fsync: FsyncPolicy) -> Log {
    let (log, _) = Log::open(
        dir,
        LogOptions {
            segment_bytes,
            fsync,
        },
    )
    .unwrap();
    log.start_writer(Box::new(|_| {}));
    log
}

/// Fills a log with `n` records in commits of 256, never syncing (speed only).
fn filled(dir: &std::path::Path, n: u64, segment_bytes: u64) -> Log {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = started(dir, segment_bytes, FsyncPolicy::Never);
    rt.block_on(async {
        let mut i = 0;
        while i < n {
            let k = (n - i).min(256);
            let batch = (i..i + k).map(|j| entry(j as u128 % 1000, j)).collect();
            for r in log.append_batch(batch).await {
                r.unwrap();
            }
            i += k;
        }
    });
    log
}

fn scan(c: &mut Criterion) {
    let n = 300_000;
    let tmp = tempfile::tempdir().unwrap();
    let log = filled(tmp.path(), n, 8 << 20);
    log.shutdown();
    drop(log);
    // Reopen: every segment but the newest is sealed and mapped.
    let (log, _) = Log::open(tmp.path(), LogOptions::default()).unwrap();
    let mut g = c.benchmark_group("scan");
    g.sample_size(10).throughput(Throughput::Elements(n));
    g.bench_function("sealed-segments", |b| {
        b.iter(|| {
            let mut count = 0u64;
            let mut bytes = 0usize;
            log.visit(0, u64::MAX, |r| {
                count += 1;
                bytes += r.body.len();
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(count, n);
            std::hint::black_box(bytes)
        })
    });
    g.finish();
}

fn recovery(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    // ~64 MiB in one active segment (segment limit above it).
    let per_record = (48 + body(0).len()) as u64;
    let n = (64 << 20) / per_record;
    let log = filled(tmp.path(), n, 128 << 20);
    log.shutdown();
    drop(log);
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(n * per_record));
    g.bench_function("open-64MiB-active-segment", |b| {
        b.iter(|| {
            let (log, report) = Log::open(tmp.path(), LogOptions::default()).unwrap();
            assert!(report.torn_tail.is_none());
            assert_eq!(log.stats().next_offset, n);
        })
    });
    g.finish();
}

criterion_group!(benches, append, append_batched, scan, recovery);
criterion_main!(benches);
