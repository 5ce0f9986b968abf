//! `weir local word-count` as a real process, checked against `tr | sort | uniq -c`.

mod common;

use common::{final_counts, read_parts, stderr, weir, write_text};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

fn counts_by_coreutils(input: &std::path::Path) -> BTreeMap<String, u64> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tr -s ' ' '\\n' < '{}' | sort | uniq -c",
            input.display()
        ))
        .output()
        .expect("run tr | sort | uniq -c");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            let w = it.next()?; // blank lines give an empty word: not a word
            Some((w.to_string(), n))
        })
        .collect()
}

fn word_count_matches_coreutils(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    write_text(&input, 400_000, 20_000, 7); // ~10 MB
    assert!(
        std::fs::metadata(&input).unwrap().len() > 5 << 20,
        "input is multi-megabyte"
    );
    let got = run_word_count(dir.path(), &format!("input={}", input.display()), backend);
    let expected = counts_by_coreutils(&input);
    assert_eq!(got.len(), expected.len(), "distinct words");
    assert!(got == expected, "counts differ from tr | sort | uniq -c");
}

#[test]
fn word_count_at_parallelism_two_on_rocksdb_gives_the_counts_of_tr_sort_uniq() {
    word_count_matches_coreutils("rocksdb");
}

#[test]
fn word_count_at_parallelism_two_on_the_heap_backend_gives_the_counts_of_tr_sort_uniq() {
    word_count_matches_coreutils("heap");
}

#[test]
fn word_count_reads_a_socket_until_it_closes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    write_text(&input, 20_000, 500, 11);
    let text = std::fs::read(&input).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        // Bounded wait for weir to connect, so a failed run cannot hang the test.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("weir did not connect: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.write_all(&text).unwrap();
        // Dropping the connection ends the stream, and so the job.
    });
    let got = run_word_count(dir.path(), &format!("socket=127.0.0.1:{port}"), "rocksdb");
    server.join().unwrap();
    assert!(got == counts_by_coreutils(&input), "counts differ");
}

/// Runs `weir local word-count -p 2` with `source` (`input=…` or `socket=…`) into `dir/out`;
/// returns the final count per word.
fn run_word_count(dir: &std::path::Path, source: &str, backend: &str) -> BTreeMap<String, u64> {
    let output = dir.join("out").display().to_string();
    let state = dir.join("state").display().to_string();
    let o = weir(
        &[
            "local",
            "word-count",
            "-p",
            "2",
            "--param",
            source,
            "--param",
            &format!("output={output}"),
            "--state-backend",
            backend,
            "--state-dir",
            &state,
        ],
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "weir failed: {}", stderr(&o));
    final_counts(&read_parts(&dir.join("out")))
}

/// `weir local word-count` over `input` into `output` with `--taskmanagers N`.
fn word_count_into(
    input: &std::path::Path,
    output: &std::path::Path,
    tms: u32,
) -> std::process::Output {
    let state = output.with_extension("state");
    weir(
        &[
            "local",
            &format!("--taskmanagers={tms}"),
            "word-count",
            "-p",
            "2",
            "--param",
            &format!("input={}", input.display()),
            "--param",
            &format!("output={}", output.display()),
            "--state-dir",
            &state.display().to_string(),
        ],
        Duration::from_secs(120),
    )
}

#[test]
fn a_job_writing_into_another_jobs_output_folder_is_refused_and_the_first_jobs_files_stay() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    write_text(&input, 20_000, 500, 3);
    let out = dir.path().join("out");
    let first = word_count_into(&input, &out, 0);
    assert!(first.status.success(), "{}", stderr(&first));
    let files = |d: &std::path::Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    };
    let before = files(&out);
    let second = word_count_into(&input, &out, 0);
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains("belongs to job") && err.contains("_weir_owner"),
        "the refusal does not name the owner:\n{err}"
    );
    assert_eq!(files(&out), before, "the first job's files changed");
}

#[test]
fn an_in_process_taskmanager_and_two_taskmanager_processes_give_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    write_text(&input, 50_000, 2_000, 11);
    let mut outputs = Vec::new();
    for tms in [0, 2] {
        let out = dir.path().join(format!("out-{tms}"));
        let o = word_count_into(&input, &out, tms);
        assert!(o.status.success(), "--taskmanagers {tms}: {}", stderr(&o));
        let mut lines = read_parts(&out);
        lines.sort();
        outputs.push(lines);
    }
    assert!(!outputs[0].is_empty());
    assert_eq!(outputs[0], outputs[1]);
}
