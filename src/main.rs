//! `sessiond`: load the configuration, start tracing, run the server until
//! SIGTERM or Ctrl-C, and exit non-zero with a message when it cannot run.

use std::io::IsTerminal;
use std::process::ExitCode;

use sessiond::config::Config;
use sessiond::server::{run, Listen};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::load();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let open_files = raise_open_file_limit();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        fsync = %config.fsync,
        segment_bytes = config.segment_bytes,
        max_body_bytes = config.max_body_bytes,
        heartbeat_secs = config.heartbeat_secs,
        open_files,
        "sessiond {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let addr = config.listen_addr();
    match run(config, Listen::Addr(addr), sessiond::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let text = s.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
                source = s.source();
            }
            eprintln!("sessiond: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit and
/// returns the limit in force. Every SSE stream holds one descriptor for as
/// long as it is open, and the usual soft limit of 1024 would refuse
/// connections long before memory runs out; the hard limit is the ceiling an
/// administrator set (`ulimit -Hn`, systemd `LimitNOFILE=`), so going up to
/// it needs no privilege.
fn raise_open_file_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}
