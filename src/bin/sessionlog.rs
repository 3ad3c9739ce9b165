//! `sessionlog`: look inside a sessiond data directory without the server.
//!
//! Parses the subcommand, calls [`sessiond::tool`], prints. Data goes to
//! stdout, messages to stderr prefixed `sessionlog:`. Exit codes: 0 clean,
//! 1 damage found (or a repair declined), 2 could not run. A closed stdout
//! (`sessionlog dump DIR | head`) ends the run quietly.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sessiond::event::RecordKind;
use sessiond::log::Offset;
use sessiond::tool::{self, dump::DumpOptions, Outcome, ToolError};
use ulid::Ulid;

/// Inspect, verify and repair a sessiond data directory (the server's DATA_DIR).
#[derive(Debug, Parser)]
#[command(name = "sessionlog", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every segment as the server's recovery does; exit 1 on any damage.
    Verify {
        /// The data directory (DATA_DIR).
        dir: PathBuf,
    },
    /// Print records in offset order, one per line.
    Dump {
        dir: PathBuf,
        /// JSON lines: offset, segment, position, kind, session, username, at, data/patch.
        #[arg(long)]
        json: bool,
        /// Only this session (ULID).
        #[arg(long, value_parser = parse_ulid)]
        session: Option<Ulid>,
        /// First offset to print (inclusive).
        #[arg(long, value_parser = parse_offset)]
        from: Option<Offset>,
        /// Last offset to print (inclusive).
        #[arg(long, value_parser = parse_offset)]
        to: Option<Offset>,
        /// Only this kind: created, replaced, patched or deleted.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<RecordKind>,
    },
    /// Segments, records, bytes, offsets, sessions, records per kind, time range.
    Stats { dir: PathBuf },
    /// A session's state as the server would serve it (GET /sessions/{id}[?at=]).
    Fold {
        dir: PathBuf,
        /// The session id (ULID).
        #[arg(value_parser = parse_ulid)]
        session: Ulid,
        /// The state as of this offset (inclusive), like `?at=`.
        #[arg(long, value_parser = parse_offset)]
        at: Option<Offset>,
    },
    /// Cut the log at its first damage, after confirmation; needs the server stopped.
    Repair {
        dir: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_ulid(s: &str) -> Result<Ulid, String> {
    Ulid::from_string(s)
        .map_err(|e| format!("{s:?} is not a session id (a 26-character ULID): {e}"))
}

fn parse_offset(s: &str) -> Result<Offset, String> {
    sessiond::sse::resume::parse_offset(s)
        .ok_or_else(|| format!("{s:?} is not an offset: use plain decimal digits"))
}

fn parse_kind(s: &str) -> Result<RecordKind, String> {
    RecordKind::parse(s)
        .ok_or_else(|| format!("{s:?} is not a kind: use created, replaced, patched or deleted"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(outcome) => ExitCode::from(outcome.exit_code() as u8),
        Err(ToolError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessionlog: {e}");
            ExitCode::from(2)
        }
    }
}

fn bar(dir: &Path) -> indicatif::ProgressBar {
    // Sizing the bar is best effort: a directory that cannot be listed fails
    // with a clear message in the subcommand itself.
    tool::progress_bar(tool::segment_bytes(dir).unwrap_or(0))
}

fn complain(problem: Option<String>) {
    if let Some(p) = problem {
        eprintln!("sessionlog: {p}");
    }
}

fn run(command: Command) -> Result<Outcome, ToolError> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match command {
        Command::Verify { dir } => {
            let report = tool::verify::verify(&dir, &mut out, &bar(&dir))?;
            out.flush()?;
            complain(report.problem());
            Ok(report.outcome())
        }
        Command::Dump {
            dir,
            json,
            session,
            from,
            to,
            kind,
        } => {
            let opts = DumpOptions {
                json,
                session,
                from,
                to,
                kind,
            };
            let report = tool::dump::dump(&dir, &opts, &mut out, &bar(&dir))?;
            out.flush()?;
            if let Some(p) = report.walk.first_problem() {
                eprintln!(
                    "sessionlog: dumped only the consistent prefix (offsets below {}): {p}",
                    report.walk.next_offset
                );
            }
            if let Some(b) = &report.body {
                eprintln!(
                    "sessionlog: stopped at offset {} in {} at byte {}: the body does not decode ({})",
                    b.offset,
                    b.file.display(),
                    b.position,
                    b.error
                );
            }
            Ok(report.outcome())
        }
        Command::Stats { dir } => {
            let stats = tool::stats::stats(&dir, &mut out, &bar(&dir))?;
            out.flush()?;
            if let Some(p) = stats.walk.first_problem() {
                eprintln!("sessionlog: figures cover only the consistent prefix: {p}");
            }
            Ok(stats.outcome())
        }
        Command::Fold { dir, session, at } => {
            let report = tool::fold::fold(&dir, session, at, &mut out, &bar(&dir))?;
            out.flush()?;
            if let Some(p) = report.walk.first_problem() {
                eprintln!(
                    "sessionlog: folded only the consistent prefix (offsets below {}): {p}",
                    report.walk.next_offset
                );
            }
            match report.problem(session, at) {
                None if report.walk.is_clean() => Ok(Outcome::Clean),
                None => Ok(Outcome::Damage),
                Some(p) => Err(ToolError::Usage(p)),
            }
        }
        Command::Repair { dir, yes } => {
            let report = tool::repair::repair(&dir, yes, &mut out, &bar(&dir), ask)?;
            out.flush()?;
            Ok(report.outcome())
        }
    }
}

/// Asks on stderr and reads the answer from stdin; anything but y/yes is no.
fn ask() -> io::Result<bool> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        eprintln!("sessionlog: reading the confirmation from stdin (pass --yes to skip it)");
    }
    eprint!("sessionlog: drop this and repair? [y/N] ");
    io::stderr().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
