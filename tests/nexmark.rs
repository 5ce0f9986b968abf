//! Every Nexmark query of the catalog, run by `weir local` at p=2 on a seeded input, against a
//! straightforward in-memory implementation of the query written here.

mod common;

use common::procs::weir_cmd;
use common::read_parts;
use std::collections::{BTreeMap, BTreeSet};
use weir::connectors::nexmark::{event_at, Auction, Bid, NexmarkConfig, NexmarkEvent, Person};

const SEED: u64 = 7;

fn config(events: u64) -> NexmarkConfig {
    NexmarkConfig {
        seed: SEED,
        events: Some(events),
        ..NexmarkConfig::default()
    }
}

struct Input {
    persons: Vec<Person>,
    auctions: Vec<Auction>,
    bids: Vec<Bid>,
}

fn input(events: u64) -> Input {
    let c = config(events);
    let mut i = Input {
        persons: Vec::new(),
        auctions: Vec::new(),
        bids: Vec::new(),
    };
    for n in 0..events {
        match event_at(&c, n) {
            NexmarkEvent::Person(p) => i.persons.push(p),
            NexmarkEvent::Auction(a) => i.auctions.push(a),
            NexmarkEvent::Bid(b) => i.bids.push(b),
        }
    }
    i
}

/// Runs `nexmark-<query>` over `events` events; its output lines, in file order.
fn run(query: &str, events: u64) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = weir_cmd()
        .args(["local", &format!("nexmark-{query}"), "-p", "2"])
        .args(["--param", &format!("events={events}")])
        .args(["--param", &format!("seed={SEED}")])
        .args(["--param", &format!("output={}", out.display())])
        .output()
        .expect("weir local");
    assert!(
        o.status.success(),
        "nexmark-{query} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    read_parts(&out)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn check(query: &str, events: u64, want: Vec<String>) {
    assert!(!want.is_empty(), "{query}: the reference found nothing");
    assert_eq!(sorted(run(query, events)), sorted(want), "{query}");
}

fn window_start(ts: i64, size: i64) -> i64 {
    ts - ts.rem_euclid(size)
}

#[test]
fn q0_passes_every_bid_through() {
    let i = input(20_000);
    let want = i
        .bids
        .iter()
        .map(|b| format!("{}\t{}\t{}\t{}", b.auction, b.bidder, b.price, b.date_time))
        .collect();
    check("q0", 20_000, want);
}

#[test]
fn q1_converts_every_bid_to_euros() {
    let i = input(20_000);
    let want = i
        .bids
        .iter()
        .map(|b| {
            format!(
                "{}\t{}\t{}\t{}",
                b.auction,
                b.bidder,
                weir::jobs::euros(b.price),
                b.date_time
            )
        })
        .collect();
    check("q1", 20_000, want);
}

#[test]
fn q2_selects_the_bids_of_every_123rd_auction() {
    let i = input(200_000);
    let want = i
        .bids
        .iter()
        .filter(|b| b.auction.is_multiple_of(123))
        .map(|b| format!("{}\t{}", b.auction, b.price))
        .collect();
    check("q2", 200_000, want);
}

#[test]
fn q3_joins_local_sellers_with_their_category_10_auctions() {
    let i = input(100_000);
    let mut want = Vec::new();
    for p in i
        .persons
        .iter()
        .filter(|p| matches!(p.state.as_str(), "OR" | "ID" | "CA"))
    {
        for a in i
            .auctions
            .iter()
            .filter(|a| a.category == 10 && a.seller == p.id)
        {
            want.push(format!("{}\t{}\t{}\t{}", p.name, p.city, p.state, a.id));
        }
    }
    check("q3", 100_000, want);
}

#[test]
fn q4_averages_the_winning_bids_per_category() {
    let i = input(100_000);
    // Per auction, the highest bid between its start and its expiry.
    let mut winners: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for a in &i.auctions {
        let best = i
            .bids
            .iter()
            .filter(|b| b.auction == a.id && b.date_time >= a.date_time && b.date_time <= a.expires)
            .map(|b| b.price)
            .max();
        if let Some(price) = best {
            winners.insert(a.id, (a.category, price));
        }
    }
    let mut per_category: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (category, price) in winners.values() {
        let e = per_category.entry(*category).or_default();
        e.0 += price;
        e.1 += 1;
    }
    assert!(!per_category.is_empty());
    let lines = run("q4", 100_000);
    // One update per closed auction; the last one per category is the final average.
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    let mut updates: BTreeMap<u64, u64> = BTreeMap::new();
    for l in &lines {
        let (c, avg) = l.split_once('\t').expect("category<TAB>average");
        let c: u64 = c.parse().unwrap();
        last.insert(c, avg.parse().unwrap());
        *updates.entry(c).or_default() += 1;
    }
    for (c, (sum, count)) in &per_category {
        assert_eq!(updates.get(c), Some(count), "updates of category {c}");
        assert_eq!(last.get(c), Some(&(sum / count)), "average of category {c}");
    }
    assert_eq!(last.len(), per_category.len());
}

#[test]
fn q5_finds_the_auctions_with_the_most_bids_per_sliding_window() {
    let i = input(300_000);
    let mut counts: BTreeMap<i64, BTreeMap<u64, u64>> = BTreeMap::new();
    for b in &i.bids {
        let mut start = window_start(b.date_time, 2_000);
        while start > b.date_time - 10_000 {
            *counts
                .entry(start)
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
            start -= 2_000;
        }
    }
    let mut want = Vec::new();
    for (start, per_auction) in counts {
        let max = per_auction.values().max().copied().unwrap_or(0);
        for (auction, n) in per_auction {
            if n == max {
                want.push(format!("{start}\t{auction}\t{n}"));
            }
        }
    }
    check("q5", 300_000, want);
}

#[test]
fn q7_finds_the_highest_bids_per_window() {
    let i = input(300_000);
    let mut best: BTreeMap<i64, u64> = BTreeMap::new();
    for b in &i.bids {
        let e = best.entry(window_start(b.date_time, 10_000)).or_default();
        *e = (*e).max(b.price);
    }
    let want = i
        .bids
        .iter()
        .filter(|b| best[&window_start(b.date_time, 10_000)] == b.price)
        .map(|b| {
            format!(
                "{}\t{}\t{}\t{}",
                window_start(b.date_time, 10_000),
                b.auction,
                b.bidder,
                b.price
            )
        })
        .collect();
    check("q7", 300_000, want);
}

#[test]
fn q8_finds_people_who_opened_an_auction_in_the_window_they_joined() {
    let i = input(300_000);
    let sold: BTreeSet<(u64, i64)> = i
        .auctions
        .iter()
        .map(|a| (a.seller, window_start(a.date_time, 10_000)))
        .collect();
    let want = i
        .persons
        .iter()
        .filter(|p| sold.contains(&(p.id, window_start(p.date_time, 10_000))))
        .map(|p| {
            format!(
                "{}\t{}\t{}",
                p.id,
                p.name,
                window_start(p.date_time, 10_000)
            )
        })
        .collect();
    check("q8", 300_000, want);
}
