//! The Nexmark queries as example jobs (`nexmark-q0` … `nexmark-q8`) over the Nexmark
//! generator: persons, auctions and bids in the standard proportions, event time from each
//! event's `date_time`, ascending per source subtask. Each writes one line per result to a
//! file sink (`output`), or to a blackhole (the workload of `weir bench nexmark`).
//!
//! - q0 pass-through: every bid.
//! - q1 currency conversion: every bid, its price in euros (× 0.908).
//! - q2 selection: bids of auctions whose id is a multiple of 123.
//! - q3 local item suggestion: people in OR, ID or CA selling in category 10 (incremental
//!   join of persons and auctions on the seller).
//! - q4 average price per category: the winning (highest valid) bid of each closed auction,
//!   averaged per category, updated as auctions close.
//! - q5 hot items: per sliding window (10 s every 2 s), the auctions with the most bids.
//! - q7 highest bid: per tumbling 10 s window, the bids with the highest price.
//! - q8 monitor new users: people who opened an auction in the 10 s tumbling window they
//!   joined in.

use crate::jobs::check_output_dir;
use std::path::PathBuf;
use std::time::Duration;
use weir_cli::{JobSpec, ParamError, ParamSpec, Params};
use weir_connectors::nexmark::{Auction, Bid, NexmarkConfig, NexmarkEvent, NexmarkSource, Person};
use weir_connectors::{BlackholeSink, FileSink};
use weir_runtime::{
    Collector, DataStream, JobDefinition, KeyedCoProcessFunction, KeyedContext,
    KeyedProcessFunction, OpenContext, StreamEnvironment, Timer, UserError, WatermarkStrategy,
};
use weir_state::{ListState, ValueState};
use weir_window::{TimeWindow, WindowExt, Windowed, Windows};

/// The queries this catalog runs.
pub const QUERIES: [&str; 8] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"];

/// The 10 s windows of q5, q7 and q8 (q5 slides every 2 s).
const WINDOW_MS: i64 = 10_000;
const SLIDE_MS: i64 = 2_000;

fn events(env: &StreamEnvironment, config: NexmarkConfig) -> DataStream<NexmarkEvent> {
    env.add_source(NexmarkSource::new(config))
        .uid("nexmark")
        .assign_timestamps_and_watermarks(WatermarkStrategy::ascending(|e: &NexmarkEvent| {
            e.timestamp()
        }))
        .uid("watermarks")
}

fn bids(events: &DataStream<NexmarkEvent>) -> DataStream<Bid> {
    events
        .flat_map(|e: NexmarkEvent| match e {
            NexmarkEvent::Bid(b) => Some(b),
            _ => None,
        })
        .uid("bids")
        .name("Bids")
        .with_timestamps(|b: &Bid| b.date_time)
}

fn persons(events: &DataStream<NexmarkEvent>) -> DataStream<Person> {
    events
        .flat_map(|e: NexmarkEvent| match e {
            NexmarkEvent::Person(p) => Some(p),
            _ => None,
        })
        .uid("persons")
        .name("Persons")
        .with_timestamps(|p: &Person| p.date_time)
}

fn auctions(events: &DataStream<NexmarkEvent>) -> DataStream<Auction> {
    events
        .flat_map(|e: NexmarkEvent| match e {
            NexmarkEvent::Auction(a) => Some(a),
            _ => None,
        })
        .uid("auctions")
        .name("Auctions")
        .with_timestamps(|a: &Auction| a.date_time)
}

/// `price × 0.908` with three decimals, in integer arithmetic.
pub fn euros(price: u64) -> String {
    let milli = price * 908;
    format!("{}.{:03}", milli / 1000, milli % 1000)
}

/// q3: keeps each seller's person (when in OR, ID or CA) and auctions (category 10) and emits
/// `name, city, state, auction id` for every pair, whichever came first.
#[derive(Clone, Default)]
struct LocalItems {
    person: Option<ValueState<Person>>,
    auctions: Option<ListState<u64>>,
}

impl KeyedCoProcessFunction<u64, Person, Auction, String> for LocalItems {
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.person = Some(ctx.value_state("person")?);
        self.auctions = Some(ctx.list_state("auctions")?);
        Ok(())
    }

    fn process_element1(
        &mut self,
        p: Person,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        let auctions = self.auctions.as_ref().expect("opened");
        for a in auctions.get(ctx)? {
            out.collect(format!("{}\t{}\t{}\t{a}", p.name, p.city, p.state));
        }
        auctions.clear(ctx)?;
        self.person.as_ref().expect("opened").update(ctx, &p)?;
        Ok(())
    }

    fn process_element2(
        &mut self,
        a: Auction,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        match self.person.as_ref().expect("opened").get(ctx)? {
            Some(p) => out.collect(format!("{}\t{}\t{}\t{}", p.name, p.city, p.state, a.id)),
            None => self.auctions.as_ref().expect("opened").add(ctx, &a.id)?,
        }
        Ok(())
    }
}

/// q4, first step: per auction, the highest bid placed between its start and its expiry;
/// emitted as `(category, price)` when it closes (the watermark passes its expiry).
#[derive(Clone, Default)]
struct Winners {
    auction: Option<ValueState<Auction>>,
    best: Option<ValueState<u64>>,
    early: Option<ListState<(i64, u64)>>,
    /// Set when the auction closed: later bids are past its expiry and dropped.
    closed: Option<ValueState<bool>>,
}

impl Winners {
    fn offer(
        &self,
        a: &Auction,
        at: i64,
        price: u64,
        ctx: &mut KeyedContext<'_, u64>,
    ) -> Result<(), UserError> {
        if at < a.date_time || at > a.expires {
            return Ok(());
        }
        let best = self.best.as_ref().expect("opened");
        if best.get(ctx)?.is_none_or(|b| price > b) {
            best.update(ctx, &price)?;
        }
        Ok(())
    }
}

impl KeyedCoProcessFunction<u64, Auction, Bid, (u64, u64)> for Winners {
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.auction = Some(ctx.value_state("auction")?);
        self.best = Some(ctx.value_state("best")?);
        // Bids of an unknown auction and the marks of closed ones are kept an hour of wall
        // time at most, so neither grows with the number of auctions.
        let hour = weir_state::StateTtl::after_write(Duration::from_secs(3600));
        self.early = Some(ctx.list_state_with_ttl("early-bids", hour)?);
        self.closed = Some(ctx.value_state_with_ttl("closed", hour)?);
        Ok(())
    }

    fn process_element1(
        &mut self,
        a: Auction,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, u64)>,
    ) -> Result<(), UserError> {
        // Bids that came before their auction (from another source subtask).
        let early = self.early.as_ref().expect("opened");
        for (at, price) in early.get(ctx)? {
            self.offer(&a, at, price, ctx)?;
        }
        early.clear(ctx)?;
        ctx.register_event_time_timer(a.expires)?;
        self.auction.as_ref().expect("opened").update(ctx, &a)?;
        Ok(())
    }

    fn process_element2(
        &mut self,
        b: Bid,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, u64)>,
    ) -> Result<(), UserError> {
        match self.auction.as_ref().expect("opened").get(ctx)? {
            Some(a) => self.offer(&a, b.date_time, b.price, ctx),
            None if self.closed.as_ref().expect("opened").get(ctx)?.is_some() => Ok(()),
            None => Ok(self
                .early
                .as_ref()
                .expect("opened")
                .add(ctx, &(b.date_time, b.price))?),
        }
    }

    fn on_timer(
        &mut self,
        _timer: &Timer,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<(), UserError> {
        let auction = self.auction.as_ref().expect("opened");
        let best = self.best.as_ref().expect("opened");
        if let (Some(a), Some(price)) = (auction.get(ctx)?, best.get(ctx)?) {
            out.collect((a.category, price));
        }
        auction.clear(ctx)?;
        best.clear(ctx)?;
        self.closed.as_ref().expect("opened").update(ctx, &true)?;
        Ok(())
    }
}

/// q4, second step: the running average of the winning prices per category.
#[derive(Clone, Default)]
struct CategoryAverage {
    sums: Option<ValueState<(u64, u64)>>,
}

impl KeyedProcessFunction<u64, (u64, u64), String> for CategoryAverage {
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.sums = Some(ctx.value_state("sum-count")?);
        Ok(())
    }

    fn process_element(
        &mut self,
        (category, price): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        let sums = self.sums.as_ref().expect("opened");
        let (sum, count) = sums.get(ctx)?.unwrap_or((0, 0));
        let (sum, count) = (sum + price, count + 1);
        sums.update(ctx, &(sum, count))?;
        out.collect(format!("{category}\t{}", sum / count));
        Ok(())
    }
}

/// q5, second step, and q7: per window (the key), the records with the largest figure,
/// emitted when the window's end passes.
#[derive(Clone)]
struct TopPerWindow<T> {
    best: Option<ValueState<(u64, Vec<T>)>>,
    figure: fn(&T) -> u64,
    line: fn(i64, &T) -> String,
}

impl<T: weir_runtime::Data> KeyedProcessFunction<i64, (i64, T), String> for TopPerWindow<T> {
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.best = Some(ctx.value_state("best")?);
        Ok(())
    }

    fn process_element(
        &mut self,
        (end, value): (i64, T),
        ctx: &mut KeyedContext<'_, i64>,
        _out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        let best = self.best.as_ref().expect("opened");
        let f = (self.figure)(&value);
        let next = match best.get(ctx)? {
            None => (f, vec![value]),
            Some((b, mut all)) if b == f => {
                all.push(value);
                (b, all)
            }
            Some((b, all)) if b > f => (b, all),
            Some(_) => (f, vec![value]),
        };
        best.update(ctx, &next)?;
        ctx.register_event_time_timer(end - 1)?;
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timer: &Timer,
        ctx: &mut KeyedContext<'_, i64>,
        out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        let best = self.best.as_ref().expect("opened");
        let start = *ctx.key() - WINDOW_MS;
        if let Some((_, all)) = best.get(ctx)? {
            for v in &all {
                out.collect((self.line)(start, v));
            }
        }
        best.clear(ctx)?;
        Ok(())
    }
}

/// q8: per person id and 10 s window, whether the person joined and opened an auction in it.
#[derive(Clone, Default)]
struct NewSellers {
    person: Option<ValueState<String>>,
    sold: Option<ValueState<bool>>,
}

fn tumbling(ts: i64) -> TimeWindow {
    let start = ts - ts.rem_euclid(WINDOW_MS);
    TimeWindow::new(start, start + WINDOW_MS)
}

impl KeyedCoProcessFunction<u64, Person, Auction, String> for NewSellers {
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError> {
        self.person = Some(ctx.value_state("person-name")?);
        self.sold = Some(ctx.value_state("opened-auction")?);
        Ok(())
    }

    fn process_element1(
        &mut self,
        p: Person,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        let w = tumbling(p.date_time);
        let ns = window_ns(&w);
        self.person
            .as_ref()
            .expect("opened")
            .update(&mut ctx.namespaced(&ns), &p.name)?;
        ctx.register_timer(weir_runtime::TimeDomain::EventTime, w.max_timestamp(), &ns)?;
        Ok(())
    }

    fn process_element2(
        &mut self,
        a: Auction,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        let w = tumbling(a.date_time);
        let ns = window_ns(&w);
        self.sold
            .as_ref()
            .expect("opened")
            .update(&mut ctx.namespaced(&ns), &true)?;
        ctx.register_timer(weir_runtime::TimeDomain::EventTime, w.max_timestamp(), &ns)?;
        Ok(())
    }

    fn on_timer(
        &mut self,
        timer: &Timer,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<String>,
    ) -> Result<(), UserError> {
        let id = *ctx.key();
        let mut scope = ctx.namespaced(&timer.namespace);
        let (person, sold) = (
            self.person.as_ref().expect("opened"),
            self.sold.as_ref().expect("opened"),
        );
        if let (Some(name), Some(true)) = (person.get(&mut scope)?, sold.get(&mut scope)?) {
            let start = timer.timestamp + 1 - WINDOW_MS;
            out.collect(format!("{id}\t{name}\t{start}"));
        }
        person.clear(&mut scope)?;
        sold.clear(&mut scope)?;
        Ok(())
    }
}

fn window_ns(w: &TimeWindow) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&w.start.to_be_bytes());
    b[8..].copy_from_slice(&w.end.to_be_bytes());
    b
}

/// Builds Nexmark query `query` over `config`'s events, writing lines to `output` (or a
/// blackhole).
pub fn nexmark_query(
    query: &str,
    config: NexmarkConfig,
    output: Option<PathBuf>,
) -> Result<JobDefinition, UserError> {
    let env = StreamEnvironment::new(&format!("nexmark-{query}"));
    let events = events(&env, config);
    let lines: DataStream<String> = match query {
        "q0" => bids(&events)
            .map(|b: Bid| format!("{}\t{}\t{}\t{}", b.auction, b.bidder, b.price, b.date_time))
            .uid("q0"),
        "q1" => bids(&events)
            .map(|b: Bid| {
                format!(
                    "{}\t{}\t{}\t{}",
                    b.auction,
                    b.bidder,
                    euros(b.price),
                    b.date_time
                )
            })
            .uid("q1"),
        "q2" => bids(&events)
            .filter(|b: &Bid| b.auction.is_multiple_of(123))
            .uid("q2-filter")
            .map(|b: Bid| format!("{}\t{}", b.auction, b.price))
            .uid("q2"),
        "q3" => {
            let people = persons(&events)
                .filter(|p: &Person| matches!(p.state.as_str(), "OR" | "ID" | "CA"))
                .uid("q3-people");
            let items = auctions(&events)
                .filter(|a: &Auction| a.category == 10)
                .uid("q3-auctions");
            people
                .connect(&items)
                .key_by(|p: &Person| p.id, |a: &Auction| a.seller)
                .process(LocalItems::default())
                .uid("q3")
        }
        "q4" => auctions(&events)
            .connect(&bids(&events))
            .key_by(|a: &Auction| a.id, |b: &Bid| b.auction)
            .process(Winners::default())
            .uid("q4-winners")
            .key_by(|w: &(u64, u64)| w.0)
            .process(CategoryAverage::default())
            .uid("q4"),
        "q5" => bids(&events)
            .key_by(|b: &Bid| b.auction)
            .window(Windows::sliding(
                Duration::from_millis(WINDOW_MS as u64),
                Duration::from_millis(SLIDE_MS as u64),
            ))
            .count()
            .map_err(|e| e.to_string())?
            .uid("q5-counts")
            .map(|w: Windowed<u64, u64>| (w.window.end, (w.key, w.value)))
            .uid("q5-by-window")
            .key_by(|c: &(i64, (u64, u64))| c.0)
            .process(TopPerWindow {
                best: None,
                figure: |c: &(u64, u64)| c.1,
                line: |start, c: &(u64, u64)| format!("{start}\t{}\t{}", c.0, c.1),
            })
            .uid("q5"),
        "q7" => bids(&events)
            .map(|b: Bid| (tumbling(b.date_time).end, b))
            .uid("q7-by-window")
            .key_by(|c: &(i64, Bid)| c.0)
            .process(TopPerWindow {
                best: None,
                figure: |b: &Bid| b.price,
                line: |start, b: &Bid| format!("{start}\t{}\t{}\t{}", b.auction, b.bidder, b.price),
            })
            .uid("q7"),
        "q8" => persons(&events)
            .connect(&auctions(&events))
            .key_by(|p: &Person| p.id, |a: &Auction| a.seller)
            .process(NewSellers::default())
            .uid("q8"),
        other => {
            return Err(format!(
                "unknown Nexmark query '{other}' (this catalog has {})",
                QUERIES.join(", ")
            )
            .into())
        }
    };
    match output {
        Some(dir) => lines.sink_to(FileSink::new(dir)).uid("sink"),
        None => lines.sink_to(BlackholeSink::new()).uid("sink"),
    };
    Ok(env.build())
}

/// The catalog entries `nexmark-q0` … `nexmark-q8`.
pub fn nexmark_specs() -> Vec<JobSpec> {
    QUERIES
        .iter()
        .map(|q| JobSpec {
            name: match *q {
                "q0" => "nexmark-q0",
                "q1" => "nexmark-q1",
                "q2" => "nexmark-q2",
                "q3" => "nexmark-q3",
                "q4" => "nexmark-q4",
                "q5" => "nexmark-q5",
                "q7" => "nexmark-q7",
                _ => "nexmark-q8",
            },
            description: match *q {
                "q0" => "Nexmark q0: every bid (pass-through)",
                "q1" => "Nexmark q1: every bid in euros",
                "q2" => "Nexmark q2: bids of auctions whose id is a multiple of 123",
                "q3" => "Nexmark q3: sellers in OR, ID or CA with auctions in category 10",
                "q4" => "Nexmark q4: average winning price per category",
                "q5" => "Nexmark q5: auctions with the most bids per sliding window",
                "q7" => "Nexmark q7: highest bids per 10 s window",
                _ => "Nexmark q8: people who opened an auction in the window they joined",
            },
            params: vec![
                ParamSpec {
                    name: "events",
                    help: "events to generate in total (default 1000000)",
                },
                ParamSpec {
                    name: "seed",
                    help: "generator seed (default 42)",
                },
                ParamSpec {
                    name: "rate",
                    help: "events per second over all sources (default: flat out)",
                },
                ParamSpec {
                    name: "output",
                    help: "output directory of part files (default: a blackhole)",
                },
            ],
            build: build_from_params,
            states: vec![],
        })
        .collect()
}

fn build_from_params(params: &Params) -> Result<JobDefinition, ParamError> {
    let query = params
        .job()
        .strip_prefix("nexmark-")
        .unwrap_or(params.job())
        .to_string();
    let config = NexmarkConfig {
        seed: params.get("seed")?.unwrap_or(42),
        events: Some(params.get("events")?.unwrap_or(1_000_000)),
        rate: params.get("rate")?,
        ..NexmarkConfig::default()
    };
    let output: Option<PathBuf> = params.get("output")?;
    if let Some(dir) = &output {
        check_output_dir(params, "output", dir)?;
    }
    nexmark_query(&query, config, output).map_err(|e| params.invalid("events", e.to_string()))
}
