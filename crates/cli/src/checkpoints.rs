//! The local job's checkpoint history on disk, and `weir checkpoints`.
//!
//! While `weir local` follows a checkpointed job, it rewrites
//! `<state.backend.rocksdb.localdir>/jobs/<job-id>/checkpoints.json` (write, then rename) every
//! time it polls the JobMaster (ten times a second) and once at the end, so `weir checkpoints`
//! can show the history of a running, finished or killed job. The object store stays the truth about which checkpoints exist:
//! the file is only the history (durations, sizes, aborts and their reasons).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use weir_runtime::{CheckpointRecord, CheckpointStatus};

/// What `checkpoints.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobHistory {
    /// The job's id (its directory under the checkpoint root).
    pub job_id: String,
    /// The job's name.
    pub job: String,
    /// The checkpoint root URL.
    pub checkpoint_dir: String,
    /// Restarts after failures so far.
    pub restarts: u32,
    /// Every checkpoint triggered, oldest first.
    pub checkpoints: Vec<CheckpointRecord>,
}

/// The directory holding local job histories.
pub fn jobs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jobs")
}

/// Writes `history` to `file` (write, then rename), creating its folder.
pub fn write_atomically(file: &Path, history: &JobHistory) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(history).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

/// Reads the history of `job_id`, or of the most recently written job when `None`.
pub fn read_history(jobs_dir: &Path, job_id: Option<&str>) -> Result<JobHistory, String> {
    let file = match job_id {
        Some(id) => {
            weir_types::JobId::parse(id)?;
            jobs_dir.join(id).join("checkpoints.json")
        }
        None => latest_history(jobs_dir)?,
    };
    let bytes = std::fs::read(&file).map_err(|e| {
        format!(
            "no checkpoint history at '{}': {e} (was the job run with \
             execution.checkpointing.interval set?)",
            file.display()
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("checkpoint history '{}' is unreadable: {e}", file.display()))
}

fn latest_history(jobs_dir: &Path) -> Result<PathBuf, String> {
    let entries = std::fs::read_dir(jobs_dir).map_err(|e| {
        format!(
            "no local jobs with checkpoints under '{}': {e}",
            jobs_dir.display()
        )
    })?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path().join("checkpoints.json"))
        .filter_map(|f| Some((std::fs::metadata(&f).ok()?.modified().ok()?, f)))
        .max()
        .map(|(_, f)| f)
        .ok_or_else(|| {
            format!(
                "no local jobs with checkpoints under '{}'",
                jobs_dir.display()
            )
        })
}

/// The table `weir checkpoints` prints.
pub fn render(history: &JobHistory) -> String {
    let mut out = format!(
        "job {} ({}) — checkpoints under {}/{}; {} restart(s)\n",
        history.job, history.job_id, history.checkpoint_dir, history.job_id, history.restarts
    );
    out.push_str(&format!(
        "{:>6} {:>7} {:<11} {:>9} {:>8} {:>9} {:>9} {:>11} {:>11}  reason\n",
        "id", "attempt", "status", "duration", "sync", "async", "align", "uploaded", "full size"
    ));
    for c in &history.checkpoints {
        let (status, reason) = match &c.status {
            CheckpointStatus::InProgress => ("in progress", ""),
            CheckpointStatus::Completed => ("completed", ""),
            CheckpointStatus::Aborted(r) => ("aborted", r.as_str()),
        };
        out.push_str(&format!(
            "{:>6} {:>7} {:<11} {:>7}ms {:>6}ms {:>7}ms {:>7}ms {:>11} {:>11}  {}\n",
            c.id.0,
            c.attempt,
            status,
            c.duration_ms,
            c.sync_ms,
            c.async_ms,
            c.alignment_ms,
            crate::commands::human_bytes(c.bytes_uploaded),
            crate::commands::human_bytes(c.full_size),
            reason
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_history_is_the_most_recently_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = |id: &str| JobHistory {
            job_id: id.into(),
            job: "j".into(),
            checkpoint_dir: "file:///x".into(),
            restarts: 0,
            checkpoints: Vec::new(),
        };
        let a = format!("{:032x}", 1);
        let b = format!("{:032x}", 2);
        for id in [&a, &b] {
            std::fs::create_dir_all(dir.path().join(id)).expect("mkdir");
            write_atomically(&dir.path().join(id).join("checkpoints.json"), &history(id))
                .expect("write");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(read_history(dir.path(), None).expect("read").job_id, b);
        assert_eq!(read_history(dir.path(), Some(&a)).expect("read").job_id, a);
        assert!(read_history(dir.path(), Some(&format!("{:032x}", 3)))
            .unwrap_err()
            .contains("no checkpoint history"));
    }
}
