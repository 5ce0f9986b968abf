//! Helpers shared by the integration tests: run the real `weir` binary with a deadline, make
//! inputs, read outputs.
#![allow(dead_code)]

pub mod procs;
pub mod webdriver;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `weir ARGS…` to completion, killing it (by its PID) after `deadline`.
pub fn weir(args: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("poll weir").is_some() {
            return child.wait_with_output().expect("collect weir output");
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect weir output");
            panic!(
                "weir {args:?} did not finish within {deadline:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `lines` lines of words drawn (deterministically) from a vocabulary of `vocab` words,
/// single-space separated, some lines empty.
pub fn write_text(path: &Path, lines: usize, vocab: usize, seed: u64) {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut text = String::new();
    for _ in 0..lines {
        let n = (next() % 13) as usize;
        let words: Vec<String> = (0..n)
            .map(|_| format!("w{}", next() % vocab as u64))
            .collect();
        text.push_str(&words.join(" "));
        text.push('\n');
    }
    std::fs::write(path, text).expect("write input");
}

/// Reads every line of every `part-*` file in `dir`.
pub fn read_parts(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read output dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        })
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .expect("read part")
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `word<TAB>count` update lines → the final (largest) count per word.
pub fn final_counts(lines: &[String]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in lines {
        let (w, c) = l
            .split_once('\t')
            .unwrap_or_else(|| panic!("not word<TAB>count: {l:?}"));
        let c: u64 = c.parse().expect("count");
        let e = out.entry(w.to_string()).or_insert(0);
        *e = (*e).max(c);
    }
    out
}

/// Every file and directory below `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                out.extend(
                    tree(&p)
                        .into_iter()
                        .map(|c| format!("{}/{c}", p.file_name().unwrap().to_string_lossy())),
                );
            }
        }
    }
    out.sort();
    out
}

/// Update lines `key<TAB>count[<TAB>…]`: checks that every key's counts are exactly 1..=n,
/// each once (no loss, no duplicate), and returns each key's last line.
pub fn exactly_once_updates(lines: &[String]) -> BTreeMap<String, String> {
    let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut last: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for l in lines {
        let mut f = l.split('\t');
        let key = f.next().expect("key").to_string();
        let count: u64 = f.next().expect("count").parse().expect("a count");
        counts.entry(key.clone()).or_default().push(count);
        let e = last.entry(key).or_insert((0, String::new()));
        if count > e.0 {
            *e = (count, l.clone());
        }
    }
    for (key, mut c) in counts {
        c.sort_unstable();
        let expected: Vec<u64> = (1..=c.len() as u64).collect();
        assert_eq!(
            c, expected,
            "key {key}: counts are not exactly 1..=n once each"
        );
    }
    last.into_iter().map(|(k, (_, l))| (k, l)).collect()
}

/// `keyed-agg`'s final `(count, sum)` per key, computed directly from the generator.
pub fn expected_keyed_agg(seed: u64, keys: u64, records: u64) -> BTreeMap<String, String> {
    let mut m: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for seq in 0..records {
        let r = weir::connectors::record_at(seed, keys, seq);
        let e = m.entry(r.key).or_insert((0, 0));
        e.0 += 1;
        e.1 += r.value;
    }
    m.into_iter()
        .map(|(k, (c, s))| (k.to_string(), format!("{k}\t{c}\t{s}")))
        .collect()
}

/// `keyed-agg` ran with `emit=updates` into `out`: the output is exactly once and ends with a
/// failure-free run's final state.
pub fn assert_keyed_agg_exactly_once(out: &Path, seed: u64, keys: u64, records: u64) {
    let last = exactly_once_updates(&read_parts(out));
    assert_eq!(last, expected_keyed_agg(seed, keys, records));
}
