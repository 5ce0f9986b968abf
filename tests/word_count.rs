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
    let output = dir.path().join("out");
    let state = dir.path().join("state");
    let o = weir(
        &[
            "local",
            "word-count",
            "-p",
            "2",
            "--param",
            &format!("input={}", input.display()),
            "--param",
            &format!("output={}", output.display()),
            "--state-backend",
            backend,
            "--state-dir",
            &state.display().to_string(),
        ],
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "weir failed: {}", stderr(&o));
    let got = final_counts(&read_parts(&output));
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
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("weir connects");
        conn.write_all(&text).unwrap();
        // Dropping the connection ends the stream, and so the job.
    });
    let output = dir.path().join("out");
    let o = weir(
        &[
            "local",
            "word-count",
            "-p",
            "2",
            "--param",
            &format!("socket=127.0.0.1:{port}"),
            "--param",
            &format!("output={}", output.display()),
            "--state-dir",
            &dir.path().join("state").display().to_string(),
        ],
        Duration::from_secs(120),
    );
    server.join().unwrap();
    assert!(o.status.success(), "weir failed: {}", stderr(&o));
    assert!(
        final_counts(&read_parts(&output)) == counts_by_coreutils(&input),
        "counts differ"
    );
}
