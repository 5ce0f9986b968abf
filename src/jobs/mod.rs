//! The example jobs shipped in the `weir` binary's catalog. Each is an ordinary builder function
//! over the public API, the same way a user crate writes its own.

mod keyed_agg;
mod word_count;

pub use keyed_agg::{keyed_agg, keyed_agg_spec, CountSum, KeyedAggOptions};
pub use word_count::{word_count, word_count_spec, WordCountInput, WordCounter};

use std::path::{Path, PathBuf};
use weir_cli::{Catalog, ParamError, Params};

/// The catalog of the `weir` binary: `word-count` and `keyed-agg`.
pub fn catalog() -> Catalog {
    Catalog::new()
        .register(word_count_spec())
        .register(keyed_agg_spec())
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
