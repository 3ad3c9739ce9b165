//! sessiond: collaborative sessions over Server-Sent Events, backed by an
//! event-sourced append log.

pub mod data_dir;
pub mod event;
pub mod log;
