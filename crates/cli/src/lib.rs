//! The commands behind `weir …`: argument parsing, configuration (`weir.toml`, environment,
//! `-D key=value`), the job [`Catalog`], and the `plan`, `local` and `bench` commands.
//!
//! The crate is a library so that a user crate can register its own jobs in a [`Catalog`] and
//! reuse the whole CLI through [`main`]; the `weir` binary of the root package is exactly that,
//! with the example jobs. It must not depend on the root `weir` package.
//!
//! Exit codes: 0 success, 1 the job failed while running, 2 bad input (an unknown job, flag,
//! `--param` or config key, a bad value, an unreadable input, an unwritable directory) — always
//! with a one-line message naming what is wrong; 3 a `weir jobmanager` with high availability
//! lost its leadership (it stops at once; restart it to stand by again).

#![warn(missing_docs)]

mod bench;
mod catalog;
pub mod checkpoints;
mod cluster;
mod commands;
mod config;
mod drill;
mod params;
mod progress;
mod render;
mod rss;
mod savepoint;

pub use catalog::{Catalog, JobSpec, ParamSpec, StateSchema};
pub use config::{parse_duration, Config, ConfigError, RestartStrategyType, StateBackendKind};
pub use params::{ParamError, Params};
pub use rss::peak_rss_bytes;

use std::process::ExitCode;

/// The exit code of a `weir jobmanager` that lost its leadership.
pub(crate) const EXIT_LEADERSHIP_LOST: i32 = 3;

/// Runs the CLI with `std::env::args()` over `catalog`, and returns the process exit code.
pub fn main(catalog: Catalog) -> ExitCode {
    commands::run(catalog, std::env::args_os().collect())
}

/// Runs the CLI with explicit arguments (the first is the program name).
pub fn run_with_args(catalog: Catalog, args: Vec<std::ffi::OsString>) -> ExitCode {
    commands::run(catalog, args)
}
