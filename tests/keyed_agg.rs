//! `keyed-agg` gives the same per-key count and sum at every parallelism, on both backends,
//! as a direct computation over the generator's records.

mod common;

use common::{read_parts, stderr, weir};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use weir::connectors::record_at;

fn expected(seed: u64, keys: u64, records: u64) -> BTreeMap<u64, (u64, u64)> {
    let mut m = BTreeMap::new();
    for seq in 0..records {
        let r = record_at(seed, keys, seq);
        let e = m.entry(r.key).or_insert((0, 0));
        e.0 += 1;
        e.1 += r.value;
    }
    m
}

fn parse(lines: &[String]) -> BTreeMap<u64, (u64, u64)> {
    let mut m = BTreeMap::new();
    for l in lines {
        let f: Vec<u64> = l.split('\t').map(|x| x.parse().expect("number")).collect();
        assert_eq!(f.len(), 3, "key<TAB>count<TAB>sum: {l:?}");
        assert!(
            m.insert(f[0], (f[1], f[2])).is_none(),
            "key {} emitted twice",
            f[0]
        );
    }
    m
}

/// Runs `weir local keyed-agg` into `dir/out` with state in `dir/state`; returns the output
/// lines.
fn run_keyed_agg(
    dir: &Path,
    p: &str,
    backend: &str,
    (seed, keys, records): (u64, u64, u64),
    emit: &str,
) -> Vec<String> {
    let out = dir.join("out");
    let params = [
        format!("keys={keys}"),
        format!("records={records}"),
        format!("seed={seed}"),
        format!("emit={emit}"),
        format!("output={}", out.display()),
    ];
    let mut args = vec!["local", "keyed-agg", "-p", p, "--state-backend", backend];
    for param in &params {
        args.extend(["--param", param.as_str()]);
    }
    let state = dir.join("state").display().to_string();
    args.extend(["--state-dir", state.as_str()]);
    let o = weir(&args, Duration::from_secs(120));
    assert!(o.status.success(), "{backend} p={p}: {}", stderr(&o));
    read_parts(&out)
}

#[test]
fn keyed_agg_final_state_is_the_same_at_every_parallelism_and_on_both_backends() {
    let run = (9, 5_000, 300_000);
    let want = expected(run.0, run.1, run.2);
    for backend in ["rocksdb", "heap"] {
        for p in ["1", "2", "3"] {
            let dir = tempfile::tempdir().unwrap();
            let got = parse(&run_keyed_agg(dir.path(), p, backend, run, "final"));
            assert!(got == want, "{backend} p={p}: final state differs");
        }
    }
}

#[test]
fn keyed_agg_updates_end_with_each_keys_final_value() {
    let run = (3, 200, 20_000);
    let want = expected(run.0, run.1, run.2);
    let dir = tempfile::tempdir().unwrap();
    let lines = run_keyed_agg(dir.path(), "2", "rocksdb", run, "updates");
    assert_eq!(lines.len() as u64, run.2, "one line per record");
    let mut last: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for l in &lines {
        let f: Vec<u64> = l.split('\t').map(|x| x.parse().unwrap()).collect();
        let e = last.entry(f[0]).or_insert((0, 0));
        if f[1] > e.0 {
            *e = (f[1], f[2]);
        }
    }
    assert!(last == want);
}

#[test]
fn keyed_agg_gives_the_same_output_on_an_in_process_taskmanager_and_on_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for tms in ["--taskmanagers=0", "--taskmanagers=2"] {
        let out = dir.path().join(tms.trim_start_matches("--"));
        let output = format!("output={}", out.display());
        let state = dir
            .path()
            .join(format!("state-{tms}"))
            .display()
            .to_string();
        let args = [
            "local",
            tms,
            "keyed-agg",
            "-p",
            "2",
            "--param",
            "keys=500",
            "--param",
            "records=30000",
            // The final state: update lines interleave the two sources differently each run.
            "--param",
            "emit=final",
            "--param",
            output.as_str(),
            "--state-dir",
            state.as_str(),
        ];
        let o = weir(&args, Duration::from_secs(120));
        assert!(o.status.success(), "{tms}: {}", stderr(&o));
        let mut lines = read_parts(&out);
        lines.sort();
        outputs.push(lines);
    }
    assert_eq!(outputs[0].len(), 500, "one line per key");
    assert!(
        outputs[0] == outputs[1],
        "the two runs' final states differ"
    );
}

#[test]
fn zipf_keys_give_the_per_key_totals_of_a_direct_computation_also_across_a_failure() {
    let (seed, keys, records) = (5u64, 100_000u64, 200_000u64);
    let dist = weir::connectors::KeyDistribution::parse("zipf:1.1", keys).expect("zipf");
    let mut want: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for seq in 0..records {
        let r = record_at(seed, keys, seq);
        let e = want.entry(dist.key(seed, seq, r.key)).or_insert((0, 0));
        e.0 += 1;
        e.1 += r.value;
    }
    // Skewed: the hottest key has far more than its uniform share.
    assert!(want[&0].0 > 20 * records / keys, "{:?}", want.get(&0));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let params = [
        format!("keys={keys}"),
        format!("records={records}"),
        format!("seed={seed}"),
        "key-distribution=zipf:1.1".to_string(),
        "fail-after=50000".to_string(),
        format!("output={}", out.display()),
    ];
    let mut args = vec!["local", "keyed-agg", "-p", "2"];
    for param in &params {
        args.extend(["--param", param.as_str()]);
    }
    let state = dir.path().join("state").display().to_string();
    args.extend(["--state-dir", state.as_str()]);
    args.extend(["-D", "execution.checkpointing.interval=100ms"]);
    let o = weir(&args, Duration::from_secs(120));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(parse(&read_parts(&out)) == want, "zipf totals differ");
    let o = weir(
        &["local", "keyed-agg", "--param", "key-distribution=zipf:0"],
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("key-distribution"), "{}", stderr(&o));
}
