//! Server configuration: defaults < `.env` < environment < command-line flags.
//!
//! One clap definition carries every setting, its environment variable, its
//! default and its help text, so `sessiond --help` is the reference. `.env` is
//! loaded by [`Config::load`] before clap reads the environment (dotenvy never
//! overrides a variable that is already set). [`Config::validate`] rejects
//! settings that parse but cannot work, with a message that names the variable.
//!
//! The FSYNC policy type lives with the log ([`crate::log::FsyncPolicy`]) and is
//! parsed here through its `FromStr`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::log::FsyncPolicy;

/// Default `MAX_BODY_BYTES`: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default `SEGMENT_BYTES`: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Smallest `SEGMENT_BYTES` accepted: a segment must hold its header and some records.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest `MAX_BODY_BYTES` accepted: a document must fit in one record body
/// together with its username and timestamp.
pub const MAX_MAX_BODY_BYTES: usize = crate::log::record::MAX_BODY_LEN as usize - 4096;

/// Everything the server can be told at startup.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sessiond",
    version,
    about = "Collaborative sessions over Server-Sent Events, backed by an event-sourced append log",
    long_about = None
)]
pub struct Config {
    /// TCP port to listen on (0 = any free port; the chosen one is logged).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address to listen on. Use 0.0.0.0 to accept connections from other machines.
    #[arg(long, env = "HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,

    /// Directory holding the log segments and the LOCK file.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// When appends are synced: always (group commit before acknowledging),
    /// interval:<ms>, or never.
    #[arg(long, env = "FSYNC", default_value = "always", value_parser = parse_fsync)]
    pub fsync: FsyncPolicy,

    /// A log segment is sealed and a new one started once it holds this many bytes.
    #[arg(long, env = "SEGMENT_BYTES", default_value_t = DEFAULT_SEGMENT_BYTES)]
    pub segment_bytes: u64,

    /// Largest accepted request body in bytes (POST, PUT, PATCH); larger bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Seconds between `: ping` comments on idle SSE streams.
    #[arg(long, env = "HEARTBEAT_SECS", default_value_t = 15)]
    pub heartbeat_secs: u64,

    /// Comma-separated list of origins allowed by CORS; empty or `*` allows any origin.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,

    /// Serve this directory's files at `/` instead of the built-in web page
    /// (paths leading outside it are refused; the API paths stay the API's).
    #[arg(long, env = "STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
}

/// A setting that parses but cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("SEGMENT_BYTES={0} is too small: use at least {MIN_SEGMENT_BYTES} (the default is {DEFAULT_SEGMENT_BYTES})")]
    SegmentTooSmall(u64),
    #[error("MAX_BODY_BYTES={0} is not valid: use 1..={MAX_MAX_BODY_BYTES} (the default is {DEFAULT_MAX_BODY_BYTES})")]
    MaxBody(usize),
    #[error("HEARTBEAT_SECS={0} is not valid: use 1..=3600 seconds (the default is 15)")]
    Heartbeat(u64),
    #[error("CORS_ORIGINS contains {0:?}, which is not an origin: use a comma-separated list such as https://app.example.com,http://localhost:5173, or *")]
    CorsOrigin(String),
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    s.parse()
}

impl Default for Config {
    /// The documented defaults, ignoring the environment.
    fn default() -> Self {
        Config {
            port: 3000,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            data_dir: PathBuf::from("./data"),
            fsync: FsyncPolicy::Always,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            heartbeat_secs: 15,
            cors_origins: "*".into(),
            static_dir: None,
        }
    }
}

impl Config {
    /// Loads `.env` from the working directory (if present), then parses the
    /// environment and the command line. Exits with clap's message on a
    /// malformed value or `--help`, and with status 2 on a `.env` that
    /// exists but cannot be read or parsed.
    pub fn load() -> Config {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => {
                eprintln!(
                    "sessiond: cannot load .env from the working directory: {e}; fix or remove it"
                );
                std::process::exit(2);
            }
        }
        Config::parse()
    }

    /// Checks the settings that parse but cannot work.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable, its value and the accepted range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(ConfigError::SegmentTooSmall(self.segment_bytes));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_MAX_BODY_BYTES {
            return Err(ConfigError::MaxBody(self.max_body_bytes));
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs > 3600 {
            return Err(ConfigError::Heartbeat(self.heartbeat_secs));
        }
        self.cors_origin_list()?;
        Ok(())
    }

    /// The allowed CORS origins; `None` means any origin.
    ///
    /// # Errors
    /// [`ConfigError::CorsOrigin`] for an entry that is not `scheme://host[:port]`.
    pub fn cors_origin_list(&self) -> Result<Option<Vec<String>>, ConfigError> {
        let entries: Vec<&str> = self
            .cors_origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if entries.is_empty() || entries == ["*"] {
            return Ok(None);
        }
        for e in &entries {
            let ok = (e.starts_with("http://") || e.starts_with("https://"))
                && !e.ends_with('/')
                && !e.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(ConfigError::CorsOrigin((*e).to_string()));
            }
        }
        Ok(Some(entries.into_iter().map(String::from).collect()))
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// `HEARTBEAT_SECS` as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("sessiond").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::default();
        assert_eq!(c.listen_addr().to_string(), "127.0.0.1:3000");
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.segment_bytes, 64 << 20);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.heartbeat(), Duration::from_secs(15));
        assert_eq!(c.cors_origin_list(), Ok(None));
        c.validate().unwrap();
    }

    #[test]
    fn flags_parse_and_override() {
        let c = parse(&[
            "--port",
            "8080",
            "--fsync",
            "interval:50",
            "--segment-bytes",
            "65536",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(50)));
        assert_eq!(c.segment_bytes, 65536);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_fsync_names_the_variable_and_the_choices() {
        let err = parse(&["--fsync", "sometimes"]).unwrap_err().to_string();
        assert!(err.contains("FSYNC=sometimes is not valid"), "{err}");
        assert!(err.contains("interval:<ms>"), "{err}");
    }

    #[test]
    fn validation_names_the_setting() {
        let c = Config {
            segment_bytes: 10,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("SEGMENT_BYTES=10"));
        let c = Config {
            max_body_bytes: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("MAX_BODY_BYTES=0"));
        let c = Config {
            heartbeat_secs: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("HEARTBEAT_SECS=0"));
        let c = Config {
            cors_origins: "https://a.example, nope".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("\"nope\""));
    }

    #[test]
    fn cors_list_parses() {
        let c = Config {
            cors_origins: "https://a.example,http://localhost:5173".into(),
            ..Config::default()
        };
        assert_eq!(
            c.cors_origin_list().unwrap(),
            Some(vec![
                "https://a.example".to_string(),
                "http://localhost:5173".to_string()
            ])
        );
    }
}
