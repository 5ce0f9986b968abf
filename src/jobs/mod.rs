//! The example jobs shipped in the `weir` binary's catalog. Each is an ordinary builder function
//! over the public API, the same way a user crate writes its own.

mod keyed_agg;
mod nexmark;
mod window_count;
mod word_count;

pub use keyed_agg::{keyed_agg, keyed_agg_spec, CountSum, KeyedAggOptions};
pub use nexmark::{euros, nexmark_query, nexmark_specs, QUERIES as NEXMARK_QUERIES};
pub use window_count::{
    format_window, parse_line, window_count, window_count_spec, TimedKey, WindowCountOptions,
    WindowShape,
};
pub use word_count::{word_count, word_count_spec, WordCountInput, WordCounter};

use std::path::{Path, PathBuf};
use weir_cli::{Catalog, ParamError, ParamSpec, Params};
use weir_runtime::{OpenContext, UserError};

/// The catalog of the `weir` binary: `word-count`, `keyed-agg`, `window-count` and the
/// Nexmark queries `nexmark-q0` … `nexmark-q8`.
pub fn catalog() -> Catalog {
    let mut c = Catalog::new()
        .register(word_count_spec())
        .register(keyed_agg_spec())
        .register(window_count_spec());
    for spec in nexmark_specs() {
        c = c.register(spec);
    }
    c
}

/// Checks, without creating anything, that `dir` can hold a job's output: it is a writable
/// directory, or it does not exist yet and its nearest existing ancestor is a writable
/// directory. The error names the parameter and the path.
pub(crate) fn check_output_dir(params: &Params, key: &str, dir: &Path) -> Result<(), ParamError> {
    let mut probe_dir: PathBuf = dir.to_path_buf();
    if dir.exists() && !dir.is_dir() {
        return Err(params.invalid(
            key,
            format!("'{}' exists and is not a directory", dir.display()),
        ));
    }
    while !probe_dir.exists() {
        probe_dir = match probe_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
    }
    let probe = probe_dir.join(format!(".weir-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(|e| {
        params.invalid(
            key,
            format!("output directory '{}' is not writable: {e}", dir.display()),
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Failure injection for tests and recovery drills (`--param fail-after=N`): subtask 0 of the
/// keyed operator fails once, after `N` records, on the job's first attempt only.
#[derive(Clone, Copy, Debug, Default)]
pub struct FailAfter {
    after: Option<u64>,
    armed: bool,
    seen: u64,
}

impl FailAfter {
    /// Fails after `after` records (`None`: never).
    pub fn new(after: Option<u64>) -> Self {
        Self {
            after,
            armed: false,
            seen: 0,
        }
    }

    /// Arms the failure in subtask 0 of attempt 0.
    pub fn open(&mut self, ctx: &OpenContext<'_>) {
        self.armed = self.after.is_some() && ctx.subtask().0 == 0 && ctx.attempt() == 0;
        self.seen = 0;
    }

    /// Call before processing each record: the failure, when its time has come.
    pub fn check(&mut self) -> Result<(), UserError> {
        if let (true, Some(after)) = (self.armed, self.after) {
            if self.seen >= after {
                return Err(format!(
                    "injected failure after {after} records (--param fail-after={after})"
                )
                .into());
            }
            self.seen += 1;
        }
        Ok(())
    }
}

/// The `fail-after` parameter every example job takes.
pub(crate) fn fail_after_param() -> ParamSpec {
    ParamSpec {
        name: "fail-after",
        help:
            "drill: subtask 0 of the keyed operator fails once after N records (first attempt only)",
    }
}

/// Reads `fail-after`.
pub(crate) fn fail_after(params: &Params) -> Result<FailAfter, ParamError> {
    Ok(FailAfter::new(params.get("fail-after")?))
}
