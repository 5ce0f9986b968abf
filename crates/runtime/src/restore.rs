//! Restoring one operator of one subtask from a completed checkpoint: keyed state is
//! downloaded, CRC-verified and handed to the backend factory; a sink gets its staging
//! manifest back; a source its position (read inline in `api.rs`).
//!
//! A damaged or missing file is a [`TaskError::CheckpointDamaged`] naming the checkpoint and
//! the file, so the executor falls back to the previous completed checkpoint. Never restores
//! silently from damaged bytes.

use crate::operators::OpIdent;
use crate::snapshot::{damaged, KeyedUploads, TaskRestore, SINK_MANIFEST_FILE};
use crate::subtask::SubtaskCtx;
use crate::TaskError;
use weir_state::KeyedStateBackend;
use weir_state_transfer::TransferError;
use weir_storage::StorageError;
use weir_types::KeyGroupRange;

/// Whether a failed download means the checkpoint itself is unusable (missing, damaged or
/// inconsistent files) rather than storage being unreachable for now.
fn is_damage(e: &TransferError) -> bool {
    match e {
        TransferError::Download { source, .. } => {
            source.is_not_found() || matches!(**source, StorageError::CrcMismatch { .. })
        }
        TransferError::SizeMismatch { .. }
        | TransferError::Meta { .. }
        | TransferError::MissingHandle { .. }
        | TransferError::BadFileName { .. }
        | TransferError::Handle { .. }
        | TransferError::ObjectPath { .. } => true,
        _ => false,
    }
}

/// The keyed backend of `ctx`'s operator: restored when the job restores a checkpoint that
/// holds state for it (merged from the old subtasks whose key groups overlap this subtask's
/// when the parallelism changed), fresh otherwise; with the uploads record seeded by the
/// restored files when they are the job's own (the restored checkpoint is the next
/// incremental base).
pub(crate) fn keyed_backend(
    ctx: &SubtaskCtx,
    ident: &OpIdent,
) -> Result<(Box<dyn KeyedStateBackend>, KeyedUploads), TaskError> {
    let uploads = KeyedUploads::default();
    let fail = |e: weir_state::StateError| ident.fail(crate::error::chain(&e));
    let restore = ctx.restore.as_ref();
    if let Some((restore, op)) = restore.and_then(|r| r.rescaled_of(&ctx.uid).map(|o| (r, o))) {
        return rescaled_backend(ctx, ident, restore, op).map(|b| (b, uploads));
    }
    let Some((restore, state)) = restore.and_then(|r| r.state_of(&ctx.uid).map(|s| (r, s))) else {
        let backend = ctx
            .state_backend
            .create(&ctx.backend_scope())
            .map_err(fail)?;
        return Ok((backend, uploads));
    };
    let id = restore.checkpoint;
    let (snapshot, shared, dir) = download(ctx, ident, restore, state, "")?;
    // A canonical snapshot fills a fresh backend of the job's kind, whatever wrote it.
    let backend = if snapshot.backend == weir_state::canonical::CANONICAL_BACKEND {
        ctx.state_backend
            .create(&ctx.backend_scope())
            .and_then(|mut b| {
                merge_into(&*ctx.state_backend, &ctx.backend_scope(), &mut *b, snapshot).map(|_| b)
            })
    } else {
        ctx.state_backend.restore(&ctx.backend_scope(), snapshot)
    };
    let _ = std::fs::remove_dir_all(&dir);
    let backend = backend.map_err(|e| restore_failure(ident, &e))?;
    // A restored checkpoint of the job's own folder is the next incremental base; a snapshot
    // from elsewhere (a savepoint) is never referenced: the next checkpoint is a full one.
    if !restore.external {
        uploads.record(id, shared);
    }
    Ok((backend, uploads))
}

/// Downloads (or takes from the local copy) the files of `state` into a fresh directory and
/// adds the byte counts to the restore's; returns the snapshot, its shareable files and the
/// directory (the caller removes it).
fn download(
    ctx: &SubtaskCtx,
    ident: &OpIdent,
    restore: &TaskRestore,
    state: &weir_checkpoint::OperatorSubtaskState,
    tag: &str,
) -> Result<
    (
        weir_state::RestoredSnapshot,
        weir_state_transfer::SharedFiles,
        std::path::PathBuf,
    ),
    TaskError,
> {
    let id = restore.checkpoint;
    let dir = restore.local_dir.join(format!(
        "restore-{}-{}{tag}-{}-a{}",
        ctx.uid,
        ctx.subtask.0,
        std::process::id(),
        ctx.attempt
    ));
    let transfer = &restore.transfer;
    let downloaded = transfer
        .runtime
        .block_on(transfer.uploader.download_keyed(id, state, &dir));
    let (snapshot, shared, stats) = match downloaded {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(if is_damage(&e) {
                damaged(&ident.uid, ctx.subtask, id, e.to_string())
            } else {
                ident.fail(format!("cannot download {id}: {e}"))
            });
        }
    };
    {
        let mut total = restore
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        total.bytes += stats.bytes;
        total.files += stats.files;
        total.bytes_local += stats.bytes_local;
        total.files_local += stats.files_local;
    }
    tracing::info!(
        uid = %ctx.uid,
        subtask = %ctx.subtask,
        checkpoint = %id,
        bytes_downloaded = stats.bytes,
        files = stats.files,
        bytes_local = stats.bytes_local,
        files_local = stats.files_local,
        "keyed state restored"
    );
    Ok((snapshot, shared, dir))
}

/// A backend's refusal of a snapshot it can never read (another backend, format, range or
/// kind) is [`TaskError::IncompatibleState`]; anything else — a missing or damaged file, a full
/// disk — an operator failure that a restart may get past.
fn restore_failure(ident: &OpIdent, e: &weir_state::StateError) -> TaskError {
    match e {
        weir_state::StateError::Incompatible { .. }
        | weir_state::StateError::KindMismatch { .. } => ident.incompatible(e),
        _ => ident.fail(crate::error::chain(e)),
    }
}

/// Whether two inclusive key-group ranges share a key group.
fn overlaps(a: KeyGroupRange, b: KeyGroupRange) -> bool {
    !a.is_empty() && !b.is_empty() && a.start <= b.end && b.start <= a.end
}

/// Rescaling (DESIGN §4: state moves by key-group ranges): a fresh backend for this subtask's
/// key groups, filled from every old subtask whose range overlaps it — a canonical snapshot
/// entry by entry, a native one by opening it as a backend of its old range and copying the
/// entries of this subtask's key groups. The result is never an incremental base.
fn rescaled_backend(
    ctx: &SubtaskCtx,
    ident: &OpIdent,
    restore: &TaskRestore,
    op: &weir_checkpoint::RescaledOperator,
) -> Result<Box<dyn KeyedStateBackend>, TaskError> {
    let fail = |e: weir_state::StateError| ident.fail(crate::error::chain(&e));
    let mut backend = ctx
        .state_backend
        .create(&ctx.backend_scope())
        .map_err(fail)?;
    let mine = ctx.key_groups;
    let mut merged = Vec::new();
    for (old, state) in &op.subtasks {
        let Some(inline) = state.inline.as_deref() else {
            continue;
        };
        let meta = weir_state_transfer::KeyedStateMeta::decode(inline).map_err(|e| {
            damaged(
                &ident.uid,
                ctx.subtask,
                restore.checkpoint,
                format!("old subtask {old}: {e}"),
            )
        })?;
        if !overlaps(meta.key_groups, mine) {
            continue;
        }
        let (snapshot, _, dir) = download(ctx, ident, restore, state, &format!("-from-{old}"))?;
        let copied = merge_into(
            &*ctx.state_backend,
            &ctx.backend_scope(),
            &mut *backend,
            snapshot,
        );
        let _ = std::fs::remove_dir_all(&dir);
        let copied = copied.map_err(|e| restore_failure(ident, &e))?;
        merged.push(format!("{old}: {} ({copied} entries)", meta.key_groups));
    }
    tracing::info!(
        uid = %ctx.uid,
        subtask = %ctx.subtask,
        key_groups = %mine,
        old_parallelism = op.old_parallelism,
        parallelism = ctx.parallelism,
        from = %merged.join(", "),
        "keyed state rescaled"
    );
    Ok(backend)
}

/// Copies the entries of `backend`'s key groups from one old subtask's snapshot into it
/// (a native one is opened with `factory` under `scope` with the snapshot's key groups);
/// returns how many.
fn merge_into(
    factory: &dyn weir_state::StateBackendFactory,
    scope: &weir_state::BackendScope,
    backend: &mut dyn KeyedStateBackend,
    snapshot: weir_state::RestoredSnapshot,
) -> Result<u64, weir_state::StateError> {
    use weir_state::canonical::{
        restore_into, CanonicalFile, CANONICAL_BACKEND, CANONICAL_FILE_NAME,
    };
    if snapshot.backend == CANONICAL_BACKEND {
        let path = snapshot
            .file(CANONICAL_FILE_NAME)
            .ok_or_else(|| snapshot.error("canonical", format!("no {CANONICAL_FILE_NAME} file")))?;
        let bytes = std::fs::read(path).map_err(|e| {
            snapshot.error("canonical", format!("cannot read {}: {e}", path.display()))
        })?;
        let file = CanonicalFile::parse(&bytes).map_err(|e| snapshot.error("canonical", e))?;
        return restore_into(backend, &file);
    }
    let mut scope = scope.clone();
    scope.key_group_range = snapshot.key_groups;
    let mut old = factory.restore(&scope, snapshot)?;
    let range = backend.key_group_range();
    let descriptors = old.descriptors().to_vec();
    let mut copied = 0u64;
    for (i, d) in descriptors.iter().enumerate() {
        let id = backend.register(d)?;
        old.scan(weir_state::StateId(i as u32), &mut |e| {
            if range.contains(e.key.key_group) {
                backend.put(id, &e.key, e.value)?;
                copied += 1;
            }
            Ok(())
        })?;
    }
    Ok(copied)
}

/// What `ctx`'s sink restores: its own staging manifest, or — restored at another
/// parallelism — every old subtask's manifest with its index.
pub(crate) enum SinkRestore {
    /// A fresh start.
    None,
    /// The manifest of this subtask.
    Own(Vec<u8>),
    /// The old parallelism and the manifests of the old subtasks.
    Rescaled(u32, Vec<(u32, Vec<u8>)>),
}

/// The staging manifest(s) `ctx`'s sink stored with the checkpoint being restored.
pub(crate) fn sink_manifests(ctx: &SubtaskCtx, ident: &OpIdent) -> Result<SinkRestore, TaskError> {
    let Some(restore) = ctx.restore.as_ref() else {
        return Ok(SinkRestore::None);
    };
    if let Some(op) = restore.rescaled_of(&ctx.uid) {
        let mut all = Vec::new();
        for (old, state) in &op.subtasks {
            if let Some(bytes) = manifest_of(ctx, ident, restore, state)? {
                all.push((old.0, bytes));
            }
        }
        return Ok(SinkRestore::Rescaled(op.old_parallelism, all));
    }
    let Some(state) = restore.state_of(&ctx.uid) else {
        return Ok(SinkRestore::None);
    };
    Ok(match manifest_of(ctx, ident, restore, state)? {
        Some(bytes) => SinkRestore::Own(bytes),
        None => SinkRestore::None,
    })
}

/// Downloads the manifest file among `state`'s files, if it has one.
fn manifest_of(
    ctx: &SubtaskCtx,
    ident: &OpIdent,
    restore: &TaskRestore,
    state: &weir_checkpoint::OperatorSubtaskState,
) -> Result<Option<Vec<u8>>, TaskError> {
    let Some(handle) = state
        .files
        .iter()
        .find(|h| h.path().rsplit('/').next() == Some(SINK_MANIFEST_FILE))
    else {
        return Ok(None);
    };
    let transfer = &restore.transfer;
    transfer
        .runtime
        .block_on(
            transfer
                .uploader
                .download_private(restore.checkpoint, handle),
        )
        .map(Some)
        .map_err(|e| {
            if is_damage(&e) {
                damaged(&ident.uid, ctx.subtask, restore.checkpoint, e.to_string())
            } else {
                ident.fail(format!("cannot download {}: {e}", restore.checkpoint))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use weir_state::{
        BackendScope, HeapStateBackendFactory, StateBackendFactory, StateDescriptor, StateId,
        StateKey, StateKind,
    };
    use weir_types::{key_group_range_for_subtask, KeyGroup, OperatorUid, SubtaskIndex};

    fn scope(range: KeyGroupRange, max_p: u32, p: u32, i: u32) -> BackendScope {
        BackendScope {
            operator_uid: OperatorUid::new("agg").expect("uid"),
            subtask: SubtaskIndex(i),
            parallelism: p,
            max_parallelism: max_p,
            key_group_range: range,
            keyed_subtasks_in_process: 1,
        }
    }

    /// Every entry of `b`'s first state: (key group, key) -> value.
    fn entries(b: &mut dyn KeyedStateBackend) -> BTreeMap<(u16, Vec<u8>), Vec<u8>> {
        let mut out = BTreeMap::new();
        if b.descriptors().is_empty() {
            return out;
        }
        b.scan(StateId(0), &mut |e| {
            let prev = out.insert((e.key.key_group.0, e.key.key.to_vec()), e.value.to_vec());
            assert!(prev.is_none(), "an entry seen twice");
            Ok(())
        })
        .expect("scan");
        out
    }

    #[test]
    fn only_a_snapshot_no_restart_can_read_fails_the_job_for_good() {
        let ident = OpIdent {
            uid: "agg".into(),
            subtask: SubtaskIndex(0),
            parallelism: 2,
        };
        let checkpoint = weir_types::CheckpointId(3);
        let incompatible = weir_state::StateError::Incompatible {
            checkpoint,
            backend: "rocksdb",
            detail: "the snapshot was taken by the heap backend".into(),
        };
        let disk_full = weir_state::StateError::Restore {
            checkpoint,
            backend: "rocksdb",
            detail: "IO error: No space left on device".into(),
        };
        assert!(matches!(
            restore_failure(&ident, &incompatible),
            TaskError::IncompatibleState { .. }
        ));
        let restartable = restore_failure(&ident, &disk_full);
        assert!(
            matches!(restartable, TaskError::Operator { .. }),
            "{restartable:?}"
        );
        assert!(restartable.to_string().contains("No space left"));
    }

    proptest::proptest! {
        /// Rescaling keyed state: for any (old, new) parallelism up to the max parallelism,
        /// every key group's entries end on exactly the one new subtask that owns it, and no
        /// entry is lost or duplicated.
        #[test]
        fn every_key_group_is_restored_on_exactly_one_subtask(
            max_p in 1u32..40,
            old_p_seed in 1u32..40,
            new_p_seed in 1u32..40,
            keys in proptest::collection::vec((0u16..40, 0u8..8), 0..60),
            canonical in proptest::bool::ANY,
        ) {
            let (old_p, new_p) = (old_p_seed.min(max_p), new_p_seed.min(max_p));
            let factory = HeapStateBackendFactory::new();
            let tmp = tempfile::tempdir().expect("tempdir");
            let descriptor = StateDescriptor { name: "count".into(), kind: StateKind::Value };
            // The old subtasks' state and snapshots.
            let mut expected = BTreeMap::new();
            let mut snapshots = Vec::new();
            for i in 0..old_p {
                let range = key_group_range_for_subtask(max_p, old_p, i);
                let mut b = factory.create(&scope(range, max_p, old_p, i)).expect("create");
                let id = b.register(&descriptor).expect("register");
                for (kg, k) in &keys {
                    let kg = KeyGroup(kg % max_p as u16);
                    if range.contains(kg) {
                        let key = [*k];
                        let cell = StateKey { key_group: kg, key: &key, namespace: b"", user_key: b"" };
                        b.put(id, &cell, &[kg.0 as u8, *k]).expect("put");
                        expected.insert((kg.0, vec![*k]), vec![kg.0 as u8, *k]);
                    }
                }
                let snap = if canonical {
                    let bytes = weir_state::canonical::write_from(&mut *b).expect("canonical");
                    let dir = tmp.path().join(format!("old-{i}"));
                    std::fs::create_dir_all(&dir).expect("dir");
                    let file = dir.join(weir_state::canonical::CANONICAL_FILE_NAME);
                    std::fs::write(&file, bytes).expect("write");
                    weir_state::RestoredSnapshot {
                        checkpoint: weir_types::CheckpointId(1),
                        backend: weir_state::canonical::CANONICAL_BACKEND.into(),
                        format: 1,
                        key_groups: range,
                        descriptors: vec![descriptor.clone()],
                        files: vec![(weir_state::canonical::CANONICAL_FILE_NAME.into(), file)],
                        dir,
                    }
                } else {
                    let local = b
                        .snapshot(weir_types::CheckpointId(1))
                        .and_then(weir_state::LocalSnapshot::resolve)
                        .expect("snapshot");
                    local.copy_to_dir(&tmp.path().join(format!("old-{i}"))).expect("copy")
                };
                snapshots.push(snap);
            }
            // Each new subtask merges the old snapshots whose ranges overlap its own.
            let mut restored = BTreeMap::new();
            for j in 0..new_p {
                let range = key_group_range_for_subtask(max_p, new_p, j);
                let sc = scope(range, max_p, new_p, j);
                let mut b = factory.create(&sc).expect("create");
                for snap in &snapshots {
                    if overlaps(snap.key_groups, range) {
                        merge_into(&factory, &sc, &mut *b, snap.clone()).expect("merge");
                    }
                }
                for (k, v) in entries(&mut *b) {
                    proptest::prop_assert!(range.contains(KeyGroup(k.0)));
                    proptest::prop_assert!(restored.insert(k, v).is_none(), "restored twice");
                }
            }
            proptest::prop_assert_eq!(restored, expected);
        }
    }
}
