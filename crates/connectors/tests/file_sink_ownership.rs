//! The file sink's output folder belongs to one job, seen only through the public API: what a
//! job builder and an operator can observe (the errors, the part files, the marker).

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use weir_connectors::{read_part_files, FileSink};
use weir_runtime::{Sink, SinkContext, SinkWriter};
use weir_types::{CheckpointId, OperatorUid, SubtaskIndex};

/// Subtask `subtask` of a checkpointed sink `sink`, in attempt `attempt`.
fn ctx(subtask: u32, attempt: u32) -> SinkContext {
    SinkContext {
        job: weir_types::JobId(1),
        uid: OperatorUid::new("sink").expect("uid"),
        subtask: SubtaskIndex(subtask),
        parallelism: 2,
        cancelled: Arc::new(AtomicBool::new(false)),
        attempt,
        checkpointing: true,
    }
}

/// Writes `records` and commits them as checkpoint `chk`; returns the manifest.
fn commit(writer: &mut Box<dyn SinkWriter<u32>>, chk: u64, records: Vec<u32>) -> Vec<u8> {
    writer.write_batch(records).expect("write");
    let manifest = writer
        .prepare_commit(CheckpointId(chk))
        .expect("prepare")
        .expect("a manifest");
    writer.commit(CheckpointId(chk)).expect("commit");
    manifest
}

fn lines(records: &[u32]) -> Vec<String> {
    records.iter().map(u32::to_string).collect()
}

fn job(dir: &Path, name: &str) -> FileSink<u32> {
    FileSink::new(dir).owned_by(name)
}

#[test]
fn another_job_is_refused_and_the_owner_resumes_with_nothing_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = job(dir.path(), "word-count");
    let mut writers: Vec<_> = (0..2)
        .map(|s| owner.create_writer(&ctx(s, 0), None).expect("writer"))
        .collect();
    let manifests: Vec<_> = writers
        .iter_mut()
        .zip([vec![1], vec![2]])
        .map(|(w, records)| commit(w, 1, records))
        .collect();
    drop(writers); // the job fails after chk-1

    let err = job(dir.path(), "keyed-agg")
        .create_writer(&ctx(0, 0), None)
        .err()
        .expect("another job is refused");
    let message = err.to_string();
    assert!(
        message.contains(&format!("output folder '{}'", dir.path().display()))
            && message.contains(&format!(
                "owner marker '{}'",
                dir.path().join("_weir_owner").display()
            ))
            && message.contains("belongs to job 'word-count'")
            && message.contains("job 'keyed-agg' may not write into it"),
        "{message}"
    );

    for (s, manifest) in manifests.iter().enumerate() {
        let mut w = owner
            .create_writer(&ctx(s as u32, 1), Some(manifest))
            .expect("the owner resumes");
        commit(&mut w, 2, vec![10 + s as u32]);
    }
    assert_eq!(
        read_part_files(dir.path()).expect("read"),
        lines(&[1, 10, 2, 11])
    );
}

#[test]
fn files_named_like_the_sinks_own_but_not_written_by_it_survive_a_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = job(dir.path(), "word-count");
    let mut writer = sink.create_writer(&ctx(0, 0), None).expect("writer");
    let first = commit(&mut writer, 1, vec![1]);
    fs::write(dir.path().join("part-sink-0-3"), "not ours\n").expect("write");
    fs::write(dir.path().join(".part-sink-0-a0-4.pending"), "not ours\n").expect("write");
    commit(&mut writer, 2, vec![2]);
    drop(writer);

    // Restoring chk-1 rolls back what chk-2 published, and only that.
    sink.create_writer(&ctx(0, 1), Some(&first))
        .expect("restore");
    assert_eq!(
        read_part_files(dir.path()).expect("read"),
        vec!["1".to_string(), "not ours".to_string()]
    );
    assert!(dir.path().join(".part-sink-0-a0-4.pending").exists());
}
