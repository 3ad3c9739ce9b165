//! Integration tests: the real server on a loopback port, real HTTP and SSE
//! clients. One crate, one module per area; `common` holds what they share.
//! Tests named `case_NN_*` are the regressions of `cases.md` case NN.

mod common;

mod abuse;
mod bad_input;
mod chaos;
mod crash_loop;
mod disk_full;
mod durability;
mod events;
mod fold_model;
mod openapi;
mod presence;
mod sessionlog;
mod sessions;
mod sse;
mod sse_resume;
