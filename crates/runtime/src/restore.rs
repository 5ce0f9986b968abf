//! Restoring one operator of one subtask from a completed checkpoint: keyed state is
//! downloaded, CRC-verified and handed to the backend factory; a sink gets its staging
//! manifest back; a source its position (read inline in `api.rs`).
//!
//! A damaged or missing file is a [`TaskError::CheckpointDamaged`] naming the checkpoint and
//! the file, so the executor falls back to the previous completed checkpoint. Never restores
//! silently from damaged bytes.

use crate::operators::OpIdent;
use crate::snapshot::{damaged, KeyedUploads, SINK_MANIFEST_FILE};
use crate::subtask::SubtaskCtx;
use crate::TaskError;
use weir_state::KeyedStateBackend;
use weir_state_transfer::TransferError;
use weir_storage::StorageError;

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
/// holds state for it, fresh otherwise; with the uploads record seeded by the restored files
/// (the restored checkpoint is the next incremental base).
pub(crate) fn keyed_backend(
    ctx: &SubtaskCtx,
    ident: &OpIdent,
) -> Result<(Box<dyn KeyedStateBackend>, KeyedUploads), TaskError> {
    let uploads = KeyedUploads::default();
    let fail = |e: weir_state::StateError| ident.fail(crate::error::chain(&e));
    let restore = ctx.restore.as_ref();
    let Some((restore, state)) = restore.and_then(|r| r.state_of(&ctx.uid).map(|s| (r, s))) else {
        let backend = ctx
            .state_backend
            .create(&ctx.backend_scope())
            .map_err(fail)?;
        return Ok((backend, uploads));
    };
    let id = restore.checkpoint;
    let dir = restore.local_dir.join(format!(
        "restore-{}-{}-{}-a{}",
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
    let backend = if snapshot.backend == weir_state::canonical::CANONICAL_BACKEND {
        restore_canonical(ctx, &snapshot)
    } else {
        ctx.state_backend.restore(&ctx.backend_scope(), snapshot)
    };
    let _ = std::fs::remove_dir_all(&dir);
    let backend = backend.map_err(fail)?;
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
    // A restored checkpoint of the job's own folder is the next incremental base; a snapshot
    // from elsewhere (a savepoint) is never referenced: the next checkpoint is a full one.
    if !restore.external {
        uploads.record(id, shared);
    }
    Ok((backend, uploads))
}

/// A fresh backend of the job's kind, filled from a canonical snapshot's entries of the key
/// groups this subtask owns.
fn restore_canonical(
    ctx: &SubtaskCtx,
    snapshot: &weir_state::RestoredSnapshot,
) -> Result<Box<dyn KeyedStateBackend>, weir_state::StateError> {
    use weir_state::canonical::{
        restore_into, CanonicalFile, CANONICAL_FILE_NAME, CANONICAL_VERSION,
    };
    if snapshot.format != u32::from(CANONICAL_VERSION) {
        return Err(snapshot.error(
            "canonical",
            format!(
                "canonical format {} is not the supported format {CANONICAL_VERSION}",
                snapshot.format
            ),
        ));
    }
    let path = snapshot
        .file(CANONICAL_FILE_NAME)
        .ok_or_else(|| snapshot.error("canonical", format!("no {CANONICAL_FILE_NAME} file")))?;
    let bytes = std::fs::read(path)
        .map_err(|e| snapshot.error("canonical", format!("cannot read {}: {e}", path.display())))?;
    let file = CanonicalFile::parse(&bytes).map_err(|e| snapshot.error("canonical", e))?;
    let mut backend = ctx.state_backend.create(&ctx.backend_scope())?;
    restore_into(&mut *backend, &file)?;
    Ok(backend)
}

/// The staging manifest `ctx`'s sink stored with the checkpoint being restored, if any.
pub(crate) fn sink_manifest(
    ctx: &SubtaskCtx,
    ident: &OpIdent,
) -> Result<Option<Vec<u8>>, TaskError> {
    let Some(restore) = ctx.restore.as_ref() else {
        return Ok(None);
    };
    let Some(state) = restore.state_of(&ctx.uid) else {
        return Ok(None);
    };
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
