//! `keyed-agg` gives the same per-key count and sum at every parallelism, on both backends,
//! as a direct computation over the generator's records.

mod common;

use common::{read_parts, stderr, weir};
use std::collections::BTreeMap;
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

#[test]
fn keyed_agg_final_state_is_the_same_at_every_parallelism_and_on_both_backends() {
    let (seed, keys, records) = (9, 5_000, 300_000);
    let want = expected(seed, keys, records);
    for backend in ["rocksdb", "heap"] {
        for p in ["1", "2", "3"] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            let o = weir(
                &[
                    "local",
                    "keyed-agg",
                    "-p",
                    p,
                    "--param",
                    &format!("keys={keys}"),
                    "--param",
                    &format!("records={records}"),
                    "--param",
                    &format!("seed={seed}"),
                    "--param",
                    &format!("output={}", out.display()),
                    "--state-backend",
                    backend,
                    "--state-dir",
                    &dir.path().join("state").display().to_string(),
                ],
                Duration::from_secs(120),
            );
            assert!(o.status.success(), "{backend} p={p}: {}", stderr(&o));
            assert!(
                parse(&read_parts(&out)) == want,
                "{backend} p={p}: final state differs"
            );
        }
    }
}

#[test]
fn keyed_agg_updates_end_with_each_keys_final_value() {
    let (seed, keys, records) = (3, 200, 20_000);
    let want = expected(seed, keys, records);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = weir(
        &[
            "local",
            "keyed-agg",
            "-p",
            "2",
            "--param",
            "emit=updates",
            "--param",
            &format!("keys={keys}"),
            "--param",
            &format!("records={records}"),
            "--param",
            &format!("seed={seed}"),
            "--param",
            &format!("output={}", out.display()),
            "--state-dir",
            &dir.path().join("state").display().to_string(),
        ],
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = read_parts(&out);
    assert_eq!(lines.len() as u64, records, "one line per record");
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
