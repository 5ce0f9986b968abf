//! The one place object paths are built and parsed back (STYLE habit 6).
//!
//! Layout under a store's root (the storage URL; [`Store`](crate::Store) prepends the URL's
//! prefix, so these paths are relative to it):
//!
//! ```text
//! <job-id>/chk-<n>/_metadata            CheckpointPaths::metadata        (written last)
//! <job-id>/chk-<n>/<file>               CheckpointPaths::checkpoint_file (owned by checkpoint n)
//! <job-id>/shared/<file>                CheckpointPaths::shared_file     (shared by incremental checkpoints)
//! savepoint-<id>/_metadata              SavepointPaths::metadata         (under the savepoint directory)
//! savepoint-<id>/<file>                 SavepointPaths::file
//! ```
//!
//! `<job-id>` is [`JobId`]'s 32 hex digits and `<n>` is the decimal [`CheckpointId`] without
//! leading zeros, so parsing a path back gives exactly the id that built it. The path of a
//! `weir-checkpoint` `FileHandle` is relative to the job directory (`chk-<n>/…` or
//! `shared/…`); [`CheckpointPaths::handle_path`] resolves it.
//!
//! Everything here is pure: listing the store is [`Store`](crate::Store)'s job, turning the
//! listing into ids is this module's.

use std::fmt;

use object_store::path::Path;
use weir_types::{CheckpointId, JobId};

use crate::error::PathError;

/// The name of the metadata file inside a checkpoint or savepoint directory; equal to
/// `weir_checkpoint::METADATA_FILE_NAME` (this crate does not depend on `weir-checkpoint`).
pub const METADATA_FILE_NAME: &str = "_metadata";
/// The directory, under a job's directory, of files shared by incremental checkpoints.
pub const SHARED_DIR_NAME: &str = "shared";
/// How a checkpoint directory's name starts; the id follows.
pub const CHECKPOINT_DIR_PREFIX: &str = "chk-";
/// How a savepoint directory's name starts; the savepoint id follows.
pub const SAVEPOINT_DIR_PREFIX: &str = "savepoint-";
/// The directory, under a job's directory, of its ownership leases (`lease-<n>`).
pub const LEASE_DIR_NAME: &str = "_lease";
/// The directory, under a job's directory, of submission probes.
pub const PROBE_DIR_NAME: &str = "_probe";
/// How a lease object's name starts; its epoch follows.
pub const LEASE_PREFIX: &str = "lease-";

/// The directory name of checkpoint `id`: `chk-<n>`.
pub fn checkpoint_dir_name(id: CheckpointId) -> String {
    format!("{CHECKPOINT_DIR_PREFIX}{}", id.get())
}

/// Parses a directory name built by [`checkpoint_dir_name`]; anything else (`chk-01`, `chk-`,
/// `chk-+1`, `shared`) is `None`.
pub fn parse_checkpoint_dir_name(name: &str) -> Option<CheckpointId> {
    let digits = name.strip_prefix(CHECKPOINT_DIR_PREFIX)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok().map(CheckpointId)
}

/// Validates a relative object name (one or more `/`-separated segments) and parses it.
fn relative_path(name: &str) -> Result<Path, PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    let bad_segment = name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad_segment || name.contains('\\') {
        return Err(PathError::NotRelative(name.to_owned()));
    }
    Path::parse(name).map_err(|e| PathError::Invalid {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// Appends the segments of an already validated relative `path` to `base`.
fn join(base: &Path, path: &Path) -> Path {
    base.parts().chain(path.parts()).collect()
}

/// The paths of one job's checkpoints under the checkpoint root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointPaths {
    job: JobId,
    job_dir: Path,
}

impl CheckpointPaths {
    /// The paths of `job`'s checkpoints.
    pub fn new(job: JobId) -> Self {
        Self {
            job,
            job_dir: Path::from(job.to_string()),
        }
    }

    /// Paths of `job`'s files in a store opened at a self-contained snapshot's own folder (a
    /// savepoint): the folder is the root, so every handle path is relative to the folder and
    /// the folder can be moved as a whole.
    pub fn rooted(job: JobId) -> Self {
        Self {
            job,
            job_dir: Path::default(),
        }
    }

    /// The job these paths belong to.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// `<job-id>`: everything of the job's checkpoints lies under it.
    pub fn job_dir(&self) -> &Path {
        &self.job_dir
    }

    /// `<job-id>/chk-<n>`.
    pub fn checkpoint_dir(&self, id: CheckpointId) -> Path {
        self.job_dir.clone().join(checkpoint_dir_name(id))
    }

    /// `<job-id>/chk-<n>/_metadata`: checkpoint `n` exists exactly when this exists and verifies.
    pub fn metadata(&self, id: CheckpointId) -> Path {
        self.checkpoint_dir(id).join(METADATA_FILE_NAME)
    }

    /// `<job-id>/chk-<n>/<name>`; `name` may have several segments (`vertex-1/0/state`) but no
    /// `.`, `..` or empty ones.
    pub fn checkpoint_file(&self, id: CheckpointId, name: &str) -> Result<Path, PathError> {
        Ok(join(&self.checkpoint_dir(id), &relative_path(name)?))
    }

    /// `<job-id>/shared`.
    pub fn shared_dir(&self) -> Path {
        self.job_dir.clone().join(SHARED_DIR_NAME)
    }

    /// `<job-id>/shared/<name>`.
    pub fn shared_file(&self, name: &str) -> Result<Path, PathError> {
        Ok(join(&self.shared_dir(), &relative_path(name)?))
    }

    /// `_probe/probe-<nonce>`, relative to the job directory: the object a submission writes
    /// for every TaskManager to read back (see [`handle_path`](Self::handle_path)).
    pub fn probe_relative(nonce: u64) -> String {
        format!("{PROBE_DIR_NAME}/probe-{nonce}")
    }

    /// `<job-id>/_lease`: the numbered ownership leases of the job's checkpoint folder.
    pub fn lease_dir(&self) -> Path {
        self.job_dir.clone().join(LEASE_DIR_NAME)
    }

    /// `<job-id>/_lease/lease-<epoch>`.
    pub fn lease(&self, epoch: u64) -> Path {
        self.lease_dir().join(format!("{LEASE_PREFIX}{epoch}"))
    }

    /// The epoch of a path built by [`lease`](Self::lease), or `None`.
    pub fn lease_epoch(&self, path: &Path) -> Option<u64> {
        let rest: Vec<_> = path.prefix_match(&self.lease_dir())?.collect();
        match rest.as_slice() {
            [name] => {
                let digits = name.as_ref().strip_prefix(LEASE_PREFIX)?;
                let canonical = !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && (digits == "0" || !digits.starts_with('0'));
                if canonical {
                    digits.parse().ok()
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Resolves a path relative to the job directory, as `weir-checkpoint`'s `FileHandle`
    /// records it (`chk-<n>/…` or `shared/…`): `<job-id>/<relative>`.
    pub fn handle_path(&self, relative: &str) -> Result<Path, PathError> {
        Ok(join(&self.job_dir, &relative_path(relative)?))
    }

    /// The inverse of [`handle_path`](Self::handle_path): `path` relative to the job directory,
    /// or `None` when `path` is not under it.
    pub fn relative_to_job(&self, path: &Path) -> Option<String> {
        let rest: Vec<_> = path.prefix_match(&self.job_dir)?.collect();
        if rest.is_empty() {
            return None;
        }
        Some(
            rest.iter()
                .map(|p| p.as_ref())
                .collect::<Vec<&str>>()
                .join("/"),
        )
    }

    /// The checkpoint whose directory is `path` or holds `path` (`<job-id>/chk-<n>[/…]`);
    /// `None` for paths of other jobs, `shared/` and anything not built by these helpers.
    pub fn checkpoint_id_of(&self, path: &Path) -> Option<CheckpointId> {
        let mut rest = path.prefix_match(&self.job_dir)?;
        parse_checkpoint_dir_name(rest.next()?.as_ref())
    }

    /// The ids of the checkpoint directories among `paths` (a listing of the job directory:
    /// common prefixes or object paths), ascending and without duplicates.
    pub fn checkpoint_ids<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a Path>,
    ) -> Vec<CheckpointId> {
        let mut ids: Vec<_> = paths
            .into_iter()
            .filter_map(|p| self.checkpoint_id_of(p))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// A savepoint's id: the `<id>` of `savepoint-<id>`, made of `[A-Za-z0-9._-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SavepointId(String);

impl SavepointId {
    /// Validates and wraps `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, PathError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && id != "."
            && id != "..";
        if ok {
            Ok(Self(id))
        } else {
            Err(PathError::BadSavepointId(id))
        }
    }

    /// The id Weir gives a savepoint of `job` taken as checkpoint `id`: the first 6 hex digits
    /// of the job id and the checkpoint number (`savepoint-3fa2c1-42`), like Flink's
    /// `savepoint-<job prefix>-<random>` but reproducible.
    pub fn for_checkpoint(job: JobId, id: CheckpointId) -> Self {
        let job = job.to_string();
        Self(format!("{}-{}", &job[..6], id.get()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SavepointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a directory name `savepoint-<id>`; `None` for anything else.
pub fn parse_savepoint_dir_name(name: &str) -> Option<SavepointId> {
    SavepointId::new(name.strip_prefix(SAVEPOINT_DIR_PREFIX)?).ok()
}

/// The paths of one savepoint under the savepoint directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavepointPaths {
    id: SavepointId,
    dir: Path,
}

impl SavepointPaths {
    /// The paths of savepoint `id`.
    pub fn new(id: SavepointId) -> Self {
        let dir = Path::from(format!("{SAVEPOINT_DIR_PREFIX}{id}"));
        Self { id, dir }
    }

    /// The savepoint's id.
    pub fn id(&self) -> &SavepointId {
        &self.id
    }

    /// `savepoint-<id>`: a savepoint is self-contained, so all its files lie under it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `savepoint-<id>/_metadata`.
    pub fn metadata(&self) -> Path {
        self.dir.clone().join(METADATA_FILE_NAME)
    }

    /// `savepoint-<id>/<name>`, where `name` is relative to the savepoint directory.
    pub fn file(&self, name: &str) -> Result<Path, PathError> {
        Ok(join(&self.dir, &relative_path(name)?))
    }

    /// The savepoint whose directory is `path` or holds it (`savepoint-<id>[/…]`).
    pub fn savepoint_id_of(path: &Path) -> Option<SavepointId> {
        parse_savepoint_dir_name(path.parts().next()?.as_ref())
    }

    /// The ids of the savepoint directories among `paths` (a listing of the savepoint
    /// directory), sorted and without duplicates.
    pub fn savepoint_ids<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<SavepointId> {
        let mut ids: Vec<_> = paths
            .into_iter()
            .filter_map(Self::savepoint_id_of)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const JOB: JobId = JobId(0x3fa2_c1d0_0000_0000_0000_0000_0000_00ab);

    fn paths() -> CheckpointPaths {
        CheckpointPaths::new(JOB)
    }

    #[test]
    fn checkpoint_paths_follow_the_documented_layout() {
        let p = paths();
        let job = "3fa2c1d00000000000000000000000ab";
        assert_eq!(p.job_dir().as_ref(), job);
        assert_eq!(
            p.metadata(CheckpointId(7)).as_ref(),
            format!("{job}/chk-7/_metadata")
        );
        assert_eq!(
            p.checkpoint_file(CheckpointId(7), "vertex-1/0/state.bin")
                .unwrap()
                .as_ref(),
            format!("{job}/chk-7/vertex-1/0/state.bin")
        );
        assert_eq!(
            p.shared_file("000042.sst").unwrap().as_ref(),
            format!("{job}/shared/000042.sst")
        );
        assert_eq!(
            p.handle_path("shared/a.sst").unwrap(),
            p.shared_file("a.sst").unwrap()
        );
    }

    #[test]
    fn rooted_paths_are_relative_to_the_store_root() {
        let p = CheckpointPaths::rooted(JobId(7));
        assert_eq!(p.handle_path("op/0/state").unwrap().as_ref(), "op/0/state");
        assert_eq!(p.metadata(CheckpointId(3)).as_ref(), "chk-3/_metadata");
        assert_eq!(
            p.relative_to_job(&Path::from("op/0/state")).as_deref(),
            Some("op/0/state")
        );
    }

    #[test]
    fn savepoint_paths_follow_the_documented_layout() {
        let id = SavepointId::for_checkpoint(JOB, CheckpointId(42));
        assert_eq!(id.as_str(), "3fa2c1-42");
        let p = SavepointPaths::new(id.clone());
        assert_eq!(p.metadata().as_ref(), "savepoint-3fa2c1-42/_metadata");
        assert_eq!(
            p.file("op/0.bin").unwrap().as_ref(),
            "savepoint-3fa2c1-42/op/0.bin"
        );
        assert_eq!(SavepointPaths::savepoint_id_of(&p.metadata()), Some(id));
    }

    #[test]
    fn names_that_escape_their_directory_are_rejected() {
        let p = paths();
        for bad in ["", "/abs", "a//b", "../x", "a/./b", "a\\b", "a/"] {
            assert!(
                p.checkpoint_file(CheckpointId(1), bad).is_err(),
                "{bad:?} was accepted"
            );
            assert!(p.shared_file(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            p.shared_file("../x").unwrap_err().to_string(),
            "object name '../x' must be a relative path without '.', '..', empty segments or backslashes"
        );
    }

    #[test]
    fn only_canonical_checkpoint_dir_names_parse() {
        assert_eq!(parse_checkpoint_dir_name("chk-0"), Some(CheckpointId(0)));
        assert_eq!(parse_checkpoint_dir_name("chk-12"), Some(CheckpointId(12)));
        for bad in [
            "chk-", "chk-01", "chk-+1", "chk--1", "chk-1a", "shared", "CHK-1",
        ] {
            assert_eq!(parse_checkpoint_dir_name(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_checkpoint_dir_name("chk-99999999999999999999999"),
            None
        );
    }

    #[test]
    fn a_listing_yields_the_jobs_checkpoint_ids_in_ascending_order() {
        let p = paths();
        let other = CheckpointPaths::new(JobId(1));
        let listing = vec![
            p.checkpoint_dir(CheckpointId(10)),
            p.metadata(CheckpointId(2)),
            p.checkpoint_file(CheckpointId(2), "x").unwrap(),
            p.shared_file("a.sst").unwrap(),
            p.checkpoint_dir(CheckpointId(9)),
            p.job_dir().clone().join("chk-007"),
            p.job_dir().clone().join("tmp"),
            other.checkpoint_dir(CheckpointId(5)),
        ];
        assert_eq!(
            p.checkpoint_ids(&listing),
            vec![CheckpointId(2), CheckpointId(9), CheckpointId(10)]
        );
    }

    #[test]
    fn a_handle_path_resolves_and_relativises_back() {
        let p = paths();
        let full = p.handle_path("chk-3/vertex-1/0").unwrap();
        assert_eq!(
            p.relative_to_job(&full).as_deref(),
            Some("chk-3/vertex-1/0")
        );
        assert_eq!(p.checkpoint_id_of(&full), Some(CheckpointId(3)));
        assert_eq!(p.relative_to_job(p.job_dir()), None);
        assert_eq!(p.relative_to_job(&Path::from("elsewhere/chk-3")), None);
    }

    #[test]
    fn bad_savepoint_ids_are_rejected() {
        for bad in ["", "a/b", "a b", "..", "é"] {
            assert!(SavepointId::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_savepoint_dir_name("chk-1"), None);
    }

    proptest! {
        #[test]
        fn every_checkpoint_path_parses_back_to_its_id(job: u128, n: u64, name in "[a-z0-9_.-]{1,12}(/[a-z0-9_-]{1,8}){0,2}") {
            prop_assume!(name.split('/').all(|s| s != "." && s != ".."));
            let p = CheckpointPaths::new(JobId(job));
            let id = CheckpointId(n);
            prop_assert_eq!(parse_checkpoint_dir_name(&checkpoint_dir_name(id)), Some(id));
            prop_assert_eq!(p.checkpoint_id_of(&p.checkpoint_dir(id)), Some(id));
            prop_assert_eq!(p.checkpoint_id_of(&p.metadata(id)), Some(id));
            let file = p.checkpoint_file(id, &name).unwrap();
            prop_assert_eq!(p.checkpoint_id_of(&file), Some(id));
            let rel = p.relative_to_job(&file).unwrap();
            prop_assert_eq!(&rel, &format!("chk-{n}/{name}"));
            prop_assert_eq!(p.handle_path(&rel).unwrap(), file);
            prop_assert_eq!(p.checkpoint_id_of(&p.shared_file(&name).unwrap()), None);
        }
    }
}
