//! sessiond: collaborative sessions over Server-Sent Events, backed by an
//! event-sourced append log.
//!
//! # The map
//! Dependencies point one way: `event` ← `log` ← `fold` ← `sse` ← `api` ←
//! `server` ← `main`.
//! - [`config`]: settings from defaults, `.env`, environment and flags.
//! - [`data_dir`], [`log`], [`event`]: the durable log and what its records mean.
//! - [`fold`]: replaying the log into per-session state; state as of an offset.
//! - [`sse`]: one subscriber's stream (resume, catch-up, live), presence, fan-out.
//! - [`api`]: the HTTP API (poem-openapi), its errors, and the body limit.
//! - [`web`]: the built-in web page (or `STATIC_DIR`), routed beside the API
//!   by path prefix so it never shadows it; used by [`server`] only.
//! - [`server`]: wiring and the commit hook; [`shutdown`]: the stop signal;
//!   [`conn`]: accepted sockets and noticing a client that closed.
//!
//! # The life of a write
//! `PATCH /sessions/{id}` → [`api::sessions`] checks id, username, `If-Match`
//! → [`log::Log::append`] → the writer checks the precondition in log order,
//! writes and syncs the batch → the commit hook in [`server`] applies the
//! event to [`fold::Sessions`] and publishes its frame through
//! [`sse::hub::Hub`] → the handler answers 200 with the offset.
//!
//! # The life of a resume
//! `GET /events/{id}` with `Last-Event-ID: n` → [`api::events`] checks the
//! session and the id ([`sse::resume`]) → [`sse::Streams::open`] subscribes to
//! the hub first, then replays the session's events after `n` from the log,
//! then forwards live frames above the last offset sent.

pub mod api;
pub mod config;
pub mod conn;
pub mod data_dir;
pub mod event;
pub mod fold;
pub mod fuzz;
pub mod log;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod tool;
pub mod web;
