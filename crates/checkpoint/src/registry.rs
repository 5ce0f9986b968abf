//! The shared-state registry: which checkpoint references which file, so a file is deleted
//! exactly when nothing references it any more (invariant 3), and only a completed checkpoint's
//! shared files are offered as the next incremental base (invariant 4).
//!
//! A *holder* is a checkpoint id. Three kinds of holder reference files:
//!
//! 1. a **retained completed** checkpoint or savepoint: every file its metadata names
//!    ([`SharedStateRegistry::register_completed`]);
//! 2. a **pending** checkpoint: the files its tasks acknowledged so far, plus the incremental
//!    base its tasks may reuse ([`SharedStateRegistry::hold`], [`SharedStateRegistry::hold_base`]),
//!    so a base subsumed while the checkpoint runs stays until the checkpoint finishes;
//! 3. nothing else: files uploaded by an aborted checkpoint are never registered, so they are
//!    never offered for reuse.
//!
//! The registry tracks every file (exclusive ones included, with a count of one), so a single
//! rule decides every deletion: a path is deletable when its count drops to zero. On a
//! JobMaster restart a *new* registry is built from the checkpoints found in storage, so
//! deletions still running from the previous attempt cannot remove live files.

use crate::handle::FileHandle;
use crate::kind::CheckpointKind;
use std::collections::{BTreeMap, BTreeSet};
use weir_types::CheckpointId;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    Pending,
    Completed { reusable: bool },
}

#[derive(Clone, Debug)]
struct Holder {
    role: Role,
    paths: BTreeSet<String>,
    shared: BTreeSet<String>,
}

/// Reference counts of files over retained and pending checkpoints. Pure bookkeeping: it
/// returns the paths to delete and never deletes anything itself.
#[derive(Clone, Debug, Default)]
pub struct SharedStateRegistry {
    counts: BTreeMap<String, usize>,
    holders: BTreeMap<CheckpointId, Holder>,
}

impl SharedStateRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that completed checkpoint `id` references exactly `files`. Replaces whatever `id`
    /// held while pending; returns the paths that nothing references any more as a result
    /// (e.g. base files offered to `id` that its tasks did not reuse, after the base was
    /// subsumed). A savepoint's files are counted but never offered for reuse.
    pub fn register_completed<'a>(
        &mut self,
        id: CheckpointId,
        kind: CheckpointKind,
        files: impl IntoIterator<Item = &'a FileHandle>,
    ) -> Vec<String> {
        let mut paths = BTreeSet::new();
        let mut shared = BTreeSet::new();
        for f in files {
            paths.insert(f.path().to_owned());
            if f.is_shared() {
                shared.insert(f.path().to_owned());
            }
        }
        let holder = Holder {
            role: Role::Completed {
                reusable: !kind.is_savepoint(),
            },
            paths,
            shared,
        };
        self.replace(id, Some(holder))
    }

    /// Adds `paths` to what pending checkpoint `id` holds (files its tasks acknowledged).
    pub fn hold(&mut self, id: CheckpointId, paths: impl IntoIterator<Item = String>) {
        let holder = self.holders.entry(id).or_insert_with(|| Holder {
            role: Role::Pending,
            paths: BTreeSet::new(),
            shared: BTreeSet::new(),
        });
        for p in paths {
            if holder.paths.insert(p.clone()) {
                *self.counts.entry(p).or_default() += 1;
            }
        }
    }

    /// Makes pending checkpoint `id` hold the current reusable base (the shared files of the
    /// newest completed checkpoint), so they outlive a subsumption while `id` may still
    /// reference them. Returns the base's id, if there is one.
    pub fn hold_base(&mut self, id: CheckpointId) -> Option<CheckpointId> {
        let (base_id, files) = self.reusable_base()?;
        let files: Vec<String> = files.iter().cloned().collect();
        self.hold(id, files);
        Some(base_id)
    }

    /// Forgets `id` (subsumed, aborted, or its metadata write failed); returns the paths that
    /// nothing references any more, sorted.
    pub fn unregister_checkpoint(&mut self, id: CheckpointId) -> Vec<String> {
        self.replace(id, None)
    }

    /// Whether any holder references `path`.
    pub fn is_referenced(&self, path: &str) -> bool {
        self.counts.contains_key(path)
    }

    /// How many holders reference `path`.
    pub fn reference_count(&self, path: &str) -> usize {
        self.counts.get(path).copied().unwrap_or(0)
    }

    /// Whether `id` holds anything (pending or completed).
    pub fn is_registered(&self, id: CheckpointId) -> bool {
        self.holders.contains_key(&id)
    }

    /// The newest completed checkpoint (never a savepoint, never a pending or aborted one) and
    /// its shared files: the only files a new incremental snapshot may reuse.
    pub fn reusable_base(&self) -> Option<(CheckpointId, &BTreeSet<String>)> {
        self.holders
            .iter()
            .rev()
            .find(|(_, h)| h.role == Role::Completed { reusable: true })
            .map(|(id, h)| (*id, &h.shared))
    }

    fn replace(&mut self, id: CheckpointId, new: Option<Holder>) -> Vec<String> {
        let old_paths = self
            .holders
            .remove(&id)
            .map(|h| h.paths)
            .unwrap_or_default();
        if let Some(h) = &new {
            for p in h.paths.difference(&old_paths) {
                *self.counts.entry(p.clone()).or_default() += 1;
            }
        }
        let empty = BTreeSet::new();
        let new_paths = new.as_ref().map(|h| &h.paths).unwrap_or(&empty);
        let mut released = Vec::new();
        for p in old_paths.difference(new_paths) {
            if let Some(count) = self.counts.get_mut(p) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(p);
                    released.push(p.clone());
                }
            }
        }
        if let Some(h) = new {
            self.holders.insert(id, h);
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::SavepointFormat;

    fn shared(p: &str) -> FileHandle {
        FileHandle::new(p, 1, 0, true).unwrap()
    }
    fn own(p: &str) -> FileHandle {
        FileHandle::new(p, 1, 0, false).unwrap()
    }

    #[test]
    fn a_shared_file_is_deleted_only_when_its_last_checkpoint_goes() {
        let mut r = SharedStateRegistry::new();
        let c = CheckpointKind::Checkpoint;
        r.register_completed(CheckpointId(1), c, &[shared("shared/a"), own("chk-1/x")]);
        r.register_completed(
            CheckpointId(2),
            c,
            &[shared("shared/a"), shared("shared/b")],
        );
        assert_eq!(r.reference_count("shared/a"), 2);
        assert_eq!(r.unregister_checkpoint(CheckpointId(1)), vec!["chk-1/x"]);
        assert!(r.is_referenced("shared/a"));
        assert_eq!(
            r.unregister_checkpoint(CheckpointId(2)),
            vec!["shared/a", "shared/b"]
        );
    }

    #[test]
    fn only_a_completed_checkpoint_is_offered_as_incremental_base() {
        let mut r = SharedStateRegistry::new();
        assert!(r.reusable_base().is_none());
        r.register_completed(
            CheckpointId(1),
            CheckpointKind::Checkpoint,
            &[shared("s/1")],
        );
        r.hold(CheckpointId(2), ["s/2".to_owned()]);
        r.register_completed(
            CheckpointId(3),
            CheckpointKind::Savepoint {
                format: SavepointFormat::Native,
            },
            &[shared("s/3")],
        );
        let (id, files) = r.reusable_base().unwrap();
        assert_eq!(id, CheckpointId(1));
        assert_eq!(files.iter().collect::<Vec<_>>(), vec!["s/1"]);
    }

    #[test]
    fn a_held_base_outlives_its_subsumed_checkpoint_until_the_holder_finishes() {
        let mut r = SharedStateRegistry::new();
        r.register_completed(
            CheckpointId(1),
            CheckpointKind::Checkpoint,
            &[shared("s/1")],
        );
        assert_eq!(r.hold_base(CheckpointId(2)), Some(CheckpointId(1)));
        assert!(r.unregister_checkpoint(CheckpointId(1)).is_empty());
        // Checkpoint 2 completes without reusing s/1: now it can go.
        let released = r.register_completed(
            CheckpointId(2),
            CheckpointKind::Checkpoint,
            &[shared("s/2")],
        );
        assert_eq!(released, vec!["s/1"]);
    }
}
