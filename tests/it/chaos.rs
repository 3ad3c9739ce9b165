//! Helpers shared by the reliability tests (issue 5): a seeded random
//! generator, the server's resident memory, the open-file limit,
//! `sessionlog verify`, and whole-history / whole-listing reads.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::Http;

/// A small seeded random generator (splitmix64) for the randomized
/// reliability tests: the seed is printed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeds from `var` if it is set (decimal), else from the clock; prints it.
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{var}={seed}");
        Rng(seed)
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of /proc/<pid>/status).
pub fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// Raises this process's open-file limit to its hard limit (inherited by
/// spawned servers), for tests that hold thousands of sockets.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

/// `sessionlog verify DIR`: (exit code, stderr).
pub fn sessionlog_verify(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sessionlog"))
        .arg("verify")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run sessionlog verify");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every event of a session's history, following `next` pages.
pub async fn history(http: &Http, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/sessions/{id}/events?limit=1000&after={a}"),
            None => format!("/sessions/{id}/events?limit=1000"),
        };
        let page = http.get(&path).await.expect(200).json();
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

/// Every live session id, following `next` pages of `GET /sessions`.
pub async fn all_session_ids(http: &Http) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/sessions?limit=1000&after={a}"),
            None => "/sessions?limit=1000".to_string(),
        };
        let page = http.get(&path).await.expect(200).json();
        for s in page["sessions"].as_array().unwrap() {
            out.push(s["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}
