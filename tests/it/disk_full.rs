//! Disk full (issue 5; case 21): DATA_DIR on a 2 MiB tmpfs, and on a 4 MiB
//! ext4 image mounted through a loop device. Needs root to mount; otherwise
//! each test says SKIPPED on stderr and passes without checking anything.
//!
//! 64 KB merge patches are written, with three subscribers attached, until
//! one gets 503; then small ones until they do too. While full: the failing
//! writes get 503 `log_unavailable` with a message, reads, history, `/status`
//! and new streams work, and nothing failed is broadcast or applied. The
//! server is stopped and restarted while still full; a filler file is
//! deleted; writes resume; the subscribers, resumed with their last ids, have
//! seen exactly the acknowledged writes; after a final SIGKILL and restart
//! every acknowledged write is in the history and `sessionlog verify` is clean.
//! The filesystem is unmounted on every path (a Drop guard).

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};

use crate::chaos::{history, sessionlog_verify};
use crate::common::{BinServer, Sse};

/// A mounted filesystem, unmounted (lazily if busy) on drop.
struct Mount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts with `mount args… <dir>`; `None` (with a message) when that fails.
    fn new(what: &str, args: &[&str]) -> Option<Mount> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            eprintln!("SKIPPED disk full on {what}: mounting needs root (euid {uid})");
            return None;
        }
        let dir = tempfile::tempdir().expect("mount point");
        let out = Command::new("mount")
            .args(args)
            .arg(dir.path())
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!(
                "SKIPPED disk full on {what}: mount {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Mount {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

const ENV: [(&str, &str); 2] = [("FSYNC", "always"), ("SEGMENT_BYTES", "524288")];

/// Reads persisted events (update/delete ids) until the stream ends or `until` is seen.
async fn persisted_ids(sse: &mut Sse, until: Option<u64>) -> Vec<u64> {
    let mut ids = Vec::new();
    while let Some(b) = sse.next_persisted().await {
        ids.push(b.offset());
        if Some(b.offset()) == until {
            break;
        }
    }
    ids
}

async fn fill_and_recover(data: &Path, filler: &Path) {
    std::fs::create_dir_all(data).unwrap();
    let server = BinServer::start(data, &ENV).await;
    let http = server.http.clone();
    let (s, created) = http.create(&json!({"title": "full"})).await;
    let mut model = json!({"title": "full"});
    let mut acked = vec![created];
    let mut subs = Vec::new();
    for n in 0..3 {
        let mut sse =
            Sse::connect(&format!("{}/events/{s}?username=sub{n}", server.base), &[]).await;
        assert_eq!(sse.next_named("init").await.offset(), created);
        subs.push(sse);
    }
    let mut refusals = 0;
    // Big patches until one is refused, then small ones until they are too.
    for (size, cap) in [(64 * 1024, 100), (40, 5000)] {
        let mut refused = false;
        for i in 0..cap {
            let patch = json!({format!("k{}-{i}", size): "x".repeat(size)});
            let r = http
                .send(
                    Method::PATCH,
                    &format!("/sessions/{s}"),
                    Some(("application/json", serde_json::to_vec(&patch).unwrap())),
                    &[],
                )
                .await;
            match r.status.as_u16() {
                200 => {
                    acked.push(r.json()["offset"].as_u64().unwrap());
                    json_patch::merge(&mut model, &patch);
                }
                503 => {
                    let r = r.expect(503);
                    assert_eq!(r.error_code(), "log_unavailable");
                    assert!(
                        r.json()["message"].as_str().unwrap().contains("disk space"),
                        "{:?}",
                        r.json()
                    );
                    refused = true;
                    refusals += 1;
                    break;
                }
                other => panic!(
                    "PATCH while filling got {other}: {}",
                    String::from_utf8_lossy(&r.body)
                ),
            }
        }
        assert!(
            refused,
            "{cap} patches of {size} bytes never filled the disk"
        );
    }
    // Full: reads, history, status and new streams work; nothing failed is visible.
    let last = *acked.last().unwrap();
    let v = http.state(&s).await;
    assert_eq!(v["data"], model);
    assert_eq!(v["offset"], last);
    let h: Vec<u64> = history(&http, &s)
        .await
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(h, acked, "history while full");
    assert_eq!(http.status().await["log"]["nextOffset"], last + 1);
    let mut late = Sse::connect(&format!("{}/events/{s}?username=late", server.base), &[]).await;
    assert_eq!(late.next_named("init").await.offset(), last);
    drop(late);
    let mut seen: Vec<Vec<u64>> = Vec::new();
    for sub in &mut subs {
        seen.push(persisted_ids(sub, Some(last)).await);
    }

    // Stop and restart while still full.
    server.signal(libc::SIGTERM);
    let mut server = server;
    assert!(
        server.wait_exit().await.success(),
        "SIGTERM while full: {}",
        server.stderr.lock().unwrap()
    );
    for (sub, ids) in subs.iter_mut().zip(&mut seen) {
        ids.extend(persisted_ids(sub, None).await);
    }
    let (code, err) = sessionlog_verify(data);
    assert_eq!(code, Some(0), "verify while full: {err}");
    let server = BinServer::start(data, &ENV).await;
    let http = server.http.clone();
    assert_eq!(
        http.state(&s).await["data"],
        model,
        "state after a restart while full"
    );

    // Free space; writes resume.
    std::fs::remove_file(filler).unwrap();
    let patch = json!({"after": "freed"});
    let next = http.patch(&s, &patch).await;
    json_patch::merge(&mut model, &patch);
    acked.push(next);
    assert!(next > last);
    for ids in &mut seen {
        let from = ids.last().copied().unwrap_or(created).to_string();
        let mut sub = Sse::connect(
            &format!("{}/events/{s}?username=back", server.base),
            &[("last-event-id", from.as_str())],
        )
        .await;
        ids.extend(persisted_ids(&mut sub, Some(next)).await);
        assert_eq!(
            ids[..],
            acked[1..],
            "a subscriber saw other than the acknowledged writes"
        );
    }

    // Every acknowledged write survives a crash.
    server.kill9();
    let (code, err) = sessionlog_verify(data);
    assert!(
        code == Some(0) || err.contains("torn"),
        "verify after SIGKILL: {err}"
    );
    let server = BinServer::start(data, &ENV).await;
    let h: Vec<Value> = history(&server.http, &s).await;
    let offsets: Vec<u64> = h.iter().map(|e| e["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, acked);
    assert_eq!(server.http.state(&s).await["data"], model);
    eprintln!(
        "disk full: {} writes acknowledged, {refusals} refused with 503, all survived two restarts",
        acked.len()
    );
}

fn make_filler(path: &Path, bytes: usize) {
    std::fs::write(path, vec![7u8; bytes]).expect("write the filler file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_on_tmpfs() {
    let Some(mount) = Mount::new("tmpfs", &["-t", "tmpfs", "-o", "size=2m", "tmpfs"]) else {
        return;
    };
    let filler = mount.path.join("filler");
    make_filler(&filler, 256 * 1024);
    fill_and_recover(&mount.path.join("data"), &filler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_on_ext4_loop() {
    let img_dir = tempfile::tempdir().unwrap();
    let img = img_dir.path().join("ext4.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .output();
    if !mkfs.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED disk full on ext4: mkfs.ext4 failed: {mkfs:?}");
        return;
    }
    let img_arg = img.to_str().unwrap().to_string();
    let Some(mount) = Mount::new("ext4 (loop)", &["-o", "loop", &img_arg]) else {
        return;
    };
    let filler = mount.path.join("filler");
    make_filler(&filler, 512 * 1024);
    fill_and_recover(&mount.path.join("data"), &filler).await;
}
