//! `sessiond`: load the configuration, start tracing, run the server until
//! SIGTERM or Ctrl-C, and exit non-zero with a message when it cannot run.

use std::io::IsTerminal;
use std::process::ExitCode;

use sessiond::config::Config;
use sessiond::server::{raise_open_file_limit, run, Listen};
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
