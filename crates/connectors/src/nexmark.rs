//! The Nexmark benchmark's online-auction model and a deterministic, replayable source of it.
//!
//! Nexmark (after the NEXMark paper; the reference generator is Apache Beam's and the
//! `nexmark/nexmark` Flink port's `GeneratorConfig`, `PersonGenerator`, `AuctionGenerator` and
//! `BidGenerator`) models an auction site as one stream of three kinds of events: new
//! [`Person`]s, new [`Auction`]s and [`Bid`]s on them.
//!
//! Event number `n` is a pure function of the configuration and `n` ([`event_at`]): its kind
//! comes from `n % (person + auction + bid proportion)` (1 + 3 + 46 by default: one person,
//! then three auctions, then 46 bids), its timestamp is
//! `base_time_ms + n · inter_event_delay_us / 1000`, its ids count the persons and auctions
//! before it, and every other field is drawn from a random number generator seeded by
//! `(seed, n)`. Auctions are sold by, and bids placed by, persons that already exist, and bids
//! go to auctions that already exist — mostly to a few "hot" ones, as in the reference.
//!
//! [`NexmarkSource`] reads events `subtask, subtask + p, subtask + 2p, …` in subtask `subtask`
//! of `p`, so each subtask's events rise in time and the whole output is the same set of
//! events whatever the parallelism. Like the [`GeneratorSource`](crate::GeneratorSource), a
//! reader's position (the event numbers it has still to read, as arithmetic lanes) is saved
//! with the identity of its split and every setting of the model, so that a restore into a
//! differently configured source is refused naming what differs; and a job restored at
//! another parallelism splits the old readers' unread events over the new subtasks.

use crate::lanes::{check_lanes, poll_lanes, splitmix64, Lane, Pacing};
use crate::{position, subtask_of, ConnectorError};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use weir_runtime::{Source, SourceContext, SourcePoll, SourceReader, UserError};

/// A person joining the auction site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// `first_person_id` + the number of persons before this one.
    pub id: u64,
    /// A first and a last name from small fixed lists (`Peter Shultz`).
    pub name: String,
    /// A random address (`abcdef@xyz.com`).
    pub email_address: String,
    /// Four groups of four digits.
    pub credit_card: String,
    /// One of ten US cities.
    pub city: String,
    /// One of six US states (`AZ`, `CA`, `ID`, `OR`, `WA`, `WY`).
    pub state: String,
    /// When the person joined, in ms since the epoch.
    pub date_time: i64,
    /// Padding that brings the event to `avg_person_byte_size` on average.
    pub extra: String,
}

/// An item put up for auction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auction {
    /// `first_auction_id` + the number of auctions before this one.
    pub id: u64,
    /// A short random name.
    pub item_name: String,
    /// A random description.
    pub description: String,
    /// The opening price, in cents (at least 100).
    pub initial_bid: u64,
    /// The lowest price the seller accepts: above `initial_bid`.
    pub reserve: u64,
    /// When the auction opened, in ms since the epoch.
    pub date_time: i64,
    /// When it closes: after `date_time`.
    pub expires: i64,
    /// The id of an already generated person.
    pub seller: u64,
    /// In `first_category_id .. first_category_id + num_categories`.
    pub category: u64,
    /// Padding that brings the event to `avg_auction_byte_size` on average.
    pub extra: String,
}

/// A bid on an auction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// The id of an already generated auction.
    pub auction: u64,
    /// The id of an already generated person.
    pub bidder: u64,
    /// The price offered, in cents (at least 100).
    pub price: u64,
    /// Where the bid came from: one of four hot channels (`Google`, …) or `channel-K`.
    pub channel: String,
    /// The channel's URL, fixed per channel and seed.
    pub url: String,
    /// When the bid was placed, in ms since the epoch.
    pub date_time: i64,
    /// Padding that brings the event to `avg_bid_byte_size` on average.
    pub extra: String,
}

/// One Nexmark event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NexmarkEvent {
    /// A new person.
    Person(Person),
    /// A new auction.
    Auction(Auction),
    /// A bid.
    Bid(Bid),
}

impl NexmarkEvent {
    /// The event's time (its `date_time`), in ms since the epoch.
    pub fn timestamp(&self) -> i64 {
        match self {
            Self::Person(p) => p.date_time,
            Self::Auction(a) => a.date_time,
            Self::Bid(b) => b.date_time,
        }
    }
}

/// The reference's fixed base time, 2015-07-15T00:00:00Z in ms since the epoch: the default
/// `base_time_ms`, so that runs are reproducible.
pub const DEFAULT_BASE_TIME_MS: i64 = 1_436_918_400_000;

/// The largest `avg_*_byte_size` [`NexmarkConfig::check`] accepts (1 MiB): the `extra` padding
/// of one event is never larger.
pub const MAX_AVG_BYTE_SIZE: u64 = 1 << 20;

/// The settings of the Nexmark model and of its source. The defaults are the reference's.
///
/// ```
/// use weir_connectors::nexmark::{NexmarkConfig, NexmarkSource};
/// let config = NexmarkConfig { seed: 7, events: Some(1_000_000), ..NexmarkConfig::default() };
/// NexmarkSource::new(config).check().expect("valid");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NexmarkConfig {
    /// Seeds every event's random fields. Default 0.
    pub seed: u64,
    /// The total number of events over all subtasks; `None` (the default): unbounded.
    pub events: Option<u64>,
    /// At most this many events per second in total, split evenly over the subtasks; `None`
    /// (the default): as fast as they can be generated. Not part of the model: a restored
    /// source may change it.
    pub rate: Option<u64>,
    /// The time of event 0, in ms since the epoch. Default [`DEFAULT_BASE_TIME_MS`].
    pub base_time_ms: i64,
    /// Event time between consecutive events, in µs. Default 100 (the reference's
    /// `1_000_000 / first_event_rate` with `first_event_rate` 10 000).
    pub inter_event_delay_us: u64,
    /// Persons per `person + auction + bid` events; at least 1. Default 1.
    pub person_proportion: u64,
    /// Auctions per `person + auction + bid` events; at least 1 when there are bids.
    /// Default 3.
    pub auction_proportion: u64,
    /// Bids per `person + auction + bid` events. Default 46.
    pub bid_proportion: u64,
    /// A non-hot seller or bidder is one of this many most recent persons; at least 1.
    /// Default 1000.
    pub num_active_people: u64,
    /// A non-hot bid goes to one of this many most recent auctions (plus the last). Also sets
    /// the auctions' average length: about as long as it takes to open this many more.
    /// Default 100.
    pub num_in_flight_auctions: u64,
    /// A bid goes to a hot auction with probability `1 - 1/hot_auction_ratio`; at least 1.
    /// Default 2.
    pub hot_auction_ratio: u64,
    /// An auction is sold by a hot seller with probability `1 - 1/hot_sellers_ratio`; at
    /// least 1. Default 4.
    pub hot_sellers_ratio: u64,
    /// A bid is placed by a hot bidder with probability `1 - 1/hot_bidders_ratio`; at least
    /// 1. Default 4.
    pub hot_bidders_ratio: u64,
    /// The average size of a person event in bytes, reached by padding `extra`; at most
    /// [`MAX_AVG_BYTE_SIZE`]. Default 200.
    pub avg_person_byte_size: u64,
    /// The average size of an auction event in bytes; at most [`MAX_AVG_BYTE_SIZE`].
    /// Default 500.
    pub avg_auction_byte_size: u64,
    /// The average size of a bid event in bytes; at most [`MAX_AVG_BYTE_SIZE`]. Default 100.
    pub avg_bid_byte_size: u64,
    /// The number of auction categories; at least 1. Default 5.
    pub num_categories: u64,
    /// The id of the first person. Default 1000.
    pub first_person_id: u64,
    /// The id of the first auction. Default 1000.
    pub first_auction_id: u64,
    /// The first category. Default 10.
    pub first_category_id: u64,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            events: None,
            rate: None,
            base_time_ms: DEFAULT_BASE_TIME_MS,
            inter_event_delay_us: 1_000_000 / 10_000,
            person_proportion: 1,
            auction_proportion: 3,
            bid_proportion: 46,
            num_active_people: 1000,
            num_in_flight_auctions: 100,
            hot_auction_ratio: 2,
            hot_sellers_ratio: 4,
            hot_bidders_ratio: 4,
            avg_person_byte_size: 200,
            avg_auction_byte_size: 500,
            avg_bid_byte_size: 100,
            num_categories: 5,
            first_person_id: 1000,
            first_auction_id: 1000,
            first_category_id: 10,
        }
    }
}

impl NexmarkConfig {
    /// Validates the configuration: a person in every cycle of events, an auction in it when
    /// there are bids, proportions that add up without overflow, ratios, active people and
    /// categories of at least 1, average sizes of at most [`MAX_AVG_BYTE_SIZE`] and a rate of
    /// at least 1 event per second. The error names the setting.
    pub fn check(&self) -> Result<(), ConnectorError> {
        let invalid = |reason: String| ConnectorError::InvalidConfig {
            connector: "nexmark",
            reason,
        };
        if self.person_proportion == 0 {
            return Err(invalid(
                "person_proportion must be at least 1: auctions and bids need persons".into(),
            ));
        }
        if self.bid_proportion > 0 && self.auction_proportion == 0 {
            return Err(invalid(
                "auction_proportion must be at least 1 when bid_proportion is not 0: bids need \
                 auctions"
                    .into(),
            ));
        }
        if self
            .person_proportion
            .checked_add(self.auction_proportion)
            .and_then(|s| s.checked_add(self.bid_proportion))
            .is_none()
        {
            return Err(invalid(
                "person_proportion + auction_proportion + bid_proportion overflows".into(),
            ));
        }
        for (name, value) in [
            ("num_active_people", self.num_active_people),
            ("hot_auction_ratio", self.hot_auction_ratio),
            ("hot_sellers_ratio", self.hot_sellers_ratio),
            ("hot_bidders_ratio", self.hot_bidders_ratio),
            ("num_categories", self.num_categories),
        ] {
            if value == 0 {
                return Err(invalid(format!("{name} must be at least 1")));
            }
        }
        for (name, value) in [
            ("avg_person_byte_size", self.avg_person_byte_size),
            ("avg_auction_byte_size", self.avg_auction_byte_size),
            ("avg_bid_byte_size", self.avg_bid_byte_size),
        ] {
            if value > MAX_AVG_BYTE_SIZE {
                return Err(invalid(format!(
                    "{name} is {value}, more than {MAX_AVG_BYTE_SIZE}"
                )));
            }
        }
        if self.rate == Some(0) {
            return Err(invalid("rate must be at least 1 event per second".into()));
        }
        Ok(())
    }

    /// `person + auction + bid` proportions, at least 1 (a checked configuration never
    /// overflows; an unchecked one saturates).
    fn total_proportion(&self) -> u64 {
        self.person_proportion
            .saturating_add(self.auction_proportion)
            .saturating_add(self.bid_proportion)
            .max(1)
    }

    /// The kind of event number `n`.
    fn kind(&self, n: u64) -> Kind {
        let offset = n % self.total_proportion();
        if offset < self.person_proportion {
            Kind::Person
        } else if offset - self.person_proportion < self.auction_proportion {
            Kind::Auction
        } else {
            Kind::Bid
        }
    }

    /// The time of event number `n`: `base_time_ms + n · inter_event_delay_us / 1000`,
    /// saturating.
    fn timestamp(&self, n: u64) -> i64 {
        let offset = u128::from(n) * u128::from(self.inter_event_delay_us) / 1000;
        self.base_time_ms
            .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
    }

    /// The base-0 id of the last person generated up to event `n` (its own id when `n` is a
    /// person).
    fn last_person(&self, n: u64) -> u64 {
        let total = self.total_proportion();
        let (epoch, offset) = (n / total, n % total);
        let offset = offset.min(self.person_proportion.saturating_sub(1));
        epoch.saturating_mul(self.person_proportion) + offset
    }

    /// The base-0 id of the last auction generated up to event `n` (its own id when `n` is an
    /// auction). Only meaningful once an auction was generated, i.e. for auctions and bids.
    fn last_auction(&self, n: u64) -> u64 {
        let total = self.total_proportion();
        let (epoch, offset) = (n / total, n % total);
        let (p, a) = (self.person_proportion, self.auction_proportion);
        let base = epoch.saturating_mul(a);
        if offset < p {
            // A person: the last auction is that of the previous cycle.
            base.saturating_sub(1)
        } else if offset - p < a {
            base + (offset - p)
        } else {
            // A bid: the last auction of this cycle.
            base + a.saturating_sub(1)
        }
    }

    /// A recent person for event `n` (base 0): one of the `num_active_people` last persons.
    /// Unlike the reference, never one of the next few persons not generated yet.
    fn random_person(&self, n: u64, rng: &mut Rng) -> u64 {
        let people = self.last_person(n) + 1;
        let active = people.min(self.num_active_people.max(1));
        people - active + rng.below(active)
    }

    /// A recent auction for event `n` (base 0): the last one or one of the
    /// `num_in_flight_auctions` before it. Unlike the reference, never one not generated yet.
    fn random_auction(&self, n: u64, rng: &mut Rng) -> u64 {
        let last = self.last_auction(n);
        let first = last.saturating_sub(self.num_in_flight_auctions);
        first + rng.below(last - first + 1)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Person,
    Auction,
    Bid,
}

/// Hot sellers, bidders and auctions are the first (bidders: the second) of the last batch of
/// this many persons or auctions (the reference's `HOT_*_RATIO` constants).
const HOT_BATCH: u64 = 100;

/// The shortest random string of [`next_string`].
const MIN_STRING_LENGTH: u64 = 3;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];

const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];

const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// Half the bids come from one of these.
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// The other half from `channel-K`, `K` below this.
const CHANNELS: u64 = 10_000;

/// A small deterministic random number generator (the splitmix64 sequence).
struct Rng(u64);

impl Rng {
    /// The generator of event number `n` of a model seeded with `seed`.
    fn new(seed: u64, stream: u64, n: u64) -> Self {
        Self(splitmix64(
            seed ^ splitmix64(stream ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93)),
        ))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.0)
    }

    /// Uniform in `0..bound` (0 when `bound` is 0).
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Random streams besides the events' own.
const EVENT_STREAM: u64 = 0;
const HOT_URL_STREAM: u64 = 1;
const CHANNEL_URL_STREAM: u64 = 2;

/// `10^x` for `x` in `[0, 6]`, computed with additions and multiplications only (no `powf`,
/// whose last bits may differ between platforms), so prices are the same everywhere.
fn pow10(x: f64) -> f64 {
    const POWERS: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
    let whole = (x.floor() as usize).min(6);
    // e^y for y = frac · ln 10 in [0, 2.31): the Taylor series has converged after 30 terms.
    let y = (x - whole as f64) * std::f64::consts::LN_10;
    let (mut sum, mut term) = (1.0, 1.0);
    for k in 1..30 {
        term *= y / f64::from(k);
        sum += term;
    }
    POWERS[whole] * sum
}

/// A price in cents, between 100 and 100 000 000, log-uniform (the reference's
/// `PriceGenerator`).
fn next_price(rng: &mut Rng) -> u64 {
    (pow10(rng.unit() * 6.0) * 100.0).round() as u64
}

/// A random string of letters and some spaces, `MIN_STRING_LENGTH..max_len` long before its
/// spaces are trimmed, never empty.
fn next_string(rng: &mut Rng, max_len: u64) -> String {
    let len = MIN_STRING_LENGTH + rng.below(max_len - MIN_STRING_LENGTH);
    let mut s = String::with_capacity(len as usize);
    for _ in 0..len {
        if rng.below(13) == 0 {
            s.push(' ');
        } else {
            s.push(char::from(b'a' + rng.below(26) as u8));
        }
    }
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return char::from(b'a' + rng.below(26) as u8).to_string();
    }
    if trimmed.len() == s.len() {
        s
    } else {
        trimmed.to_string()
    }
}

/// Exactly `len` random letters.
fn next_exact_string(rng: &mut Rng, len: u64) -> String {
    let mut s = String::with_capacity(len as usize);
    let (mut bits, mut left) = (0u64, 0);
    for _ in 0..len {
        if left == 0 {
            bits = rng.next_u64();
            left = 13; // 26^13 < 2^64
        }
        s.push(char::from(b'a' + (bits % 26) as u8));
        bits /= 26;
        left -= 1;
    }
    s
}

/// Padding that brings an event of `current` bytes to `average` bytes on average: ±20%
/// around the gap, empty when there is none.
fn next_extra(rng: &mut Rng, current: u64, average: u64) -> String {
    let average = average.min(MAX_AVG_BYTE_SIZE);
    if current > average {
        return String::new();
    }
    let gap = average - current;
    let delta = (2 * gap + 5) / 10; // round(gap · 0.2)
    let len = gap - delta + if delta == 0 { 0 } else { rng.below(2 * delta) };
    next_exact_string(rng, len)
}

/// `https://www.nexmark.com/xxx/xxx/xxx/item.htm?query=1` with three random path parts.
fn base_url(rng: &mut Rng) -> String {
    let mut url = String::from("https://www.nexmark.com/");
    for _ in 0..3 {
        let len = MIN_STRING_LENGTH + rng.below(2);
        for _ in 0..len {
            if rng.below(13) == 0 {
                url.push('_');
            } else {
                url.push(char::from(b'a' + rng.below(26) as u8));
            }
        }
        url.push('/');
    }
    url.push_str("item.htm?query=1");
    url
}

/// The channel and URL of a bid: a hot channel half the time, else one of [`CHANNELS`]; a
/// channel's URL depends only on the seed.
fn next_channel(config: &NexmarkConfig, rng: &mut Rng) -> (String, String) {
    if rng.below(2) > 0 {
        let i = rng.below(HOT_CHANNELS.len() as u64);
        let url = base_url(&mut Rng::new(config.seed, HOT_URL_STREAM, i));
        (HOT_CHANNELS[i as usize].to_string(), url)
    } else {
        let k = rng.below(CHANNELS);
        let mut own = Rng::new(config.seed, CHANNEL_URL_STREAM, k);
        let mut url = base_url(&mut own);
        if own.below(10) > 0 {
            url.push_str("&channel_id=");
            url.push_str(&(k as u32).reverse_bits().to_string());
        }
        (format!("channel-{k}"), url)
    }
}

/// Event number `n` of the Nexmark model `config` (its `rate` and `events` do not matter).
/// Pure: readers, restores and tests all call it. With a configuration that fails
/// [`NexmarkConfig::check`] it still returns an event, but its ids may not make sense.
pub fn event_at(config: &NexmarkConfig, n: u64) -> NexmarkEvent {
    let mut rng = Rng::new(config.seed, EVENT_STREAM, n);
    let date_time = config.timestamp(n);
    match config.kind(n) {
        Kind::Person => NexmarkEvent::Person(person_at(config, n, date_time, &mut rng)),
        Kind::Auction => NexmarkEvent::Auction(auction_at(config, n, date_time, &mut rng)),
        Kind::Bid => NexmarkEvent::Bid(bid_at(config, n, date_time, &mut rng)),
    }
}

fn person_at(config: &NexmarkConfig, n: u64, date_time: i64, rng: &mut Rng) -> Person {
    let id = config.first_person_id.saturating_add(config.last_person(n));
    let name = format!("{} {}", rng.pick(&FIRST_NAMES), rng.pick(&LAST_NAMES));
    let email_address = format!("{}@{}.com", next_string(rng, 7), next_string(rng, 5));
    let credit_card = (0..4)
        .map(|_| format!("{:04}", rng.below(10_000)))
        .collect::<Vec<_>>()
        .join(" ");
    let city = rng.pick(&US_CITIES).to_string();
    let state = rng.pick(&US_STATES).to_string();
    let size = 8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
    let extra = next_extra(rng, size as u64, config.avg_person_byte_size);
    Person {
        id,
        name,
        email_address,
        credit_card,
        city,
        state,
        date_time,
        extra,
    }
}

fn auction_at(config: &NexmarkConfig, n: u64, date_time: i64, rng: &mut Rng) -> Auction {
    let id = config
        .first_auction_id
        .saturating_add(config.last_auction(n));
    // P(hot seller) = 1 - 1/hot_sellers_ratio.
    let seller = if rng.below(config.hot_sellers_ratio) > 0 {
        config.last_person(n) / HOT_BATCH * HOT_BATCH
    } else {
        config.random_person(n, rng)
    };
    let category = config
        .first_category_id
        .saturating_add(rng.below(config.num_categories));
    let initial_bid = next_price(rng);
    // On average an auction lasts as long as it takes to open num_in_flight_auctions more.
    let ahead = config
        .num_in_flight_auctions
        .saturating_mul(config.total_proportion())
        / config.auction_proportion.max(1);
    let horizon = config
        .timestamp(n.saturating_add(ahead))
        .saturating_sub(date_time);
    let length = 1 + rng.below((horizon.saturating_mul(2) as u64).max(1));
    let item_name = next_string(rng, 20);
    let description = next_string(rng, 100);
    let reserve = initial_bid + next_price(rng);
    let size = 8 + item_name.len() + description.len() + 40;
    let extra = next_extra(rng, size as u64, config.avg_auction_byte_size);
    Auction {
        id,
        item_name,
        description,
        initial_bid,
        reserve,
        date_time,
        expires: date_time.saturating_add(i64::try_from(length).unwrap_or(i64::MAX)),
        seller: config.first_person_id.saturating_add(seller),
        category,
        extra,
    }
}

fn bid_at(config: &NexmarkConfig, n: u64, date_time: i64, rng: &mut Rng) -> Bid {
    // P(hot auction) = 1 - 1/hot_auction_ratio.
    let auction = if rng.below(config.hot_auction_ratio) > 0 {
        config.last_auction(n) / HOT_BATCH * HOT_BATCH
    } else {
        config.random_auction(n, rng)
    };
    // P(hot bidder) = 1 - 1/hot_bidders_ratio; hot bidders are the second of their batch so
    // that they differ from hot sellers (the first person while the batch has only one).
    let bidder = if rng.below(config.hot_bidders_ratio) > 0 {
        let last = config.last_person(n);
        (last / HOT_BATCH * HOT_BATCH + 1).min(last)
    } else {
        config.random_person(n, rng)
    };
    let price = next_price(rng);
    let (channel, url) = next_channel(config, rng);
    let extra = next_extra(rng, 32, config.avg_bid_byte_size);
    Bid {
        auction: config.first_auction_id.saturating_add(auction),
        bidder: config.first_person_id.saturating_add(bidder),
        price,
        channel,
        url,
        date_time,
        extra,
    }
}

/// A source of [`NexmarkEvent`]s: bounded or unbounded, optionally rate limited, replayable
/// and rescalable.
#[derive(Clone, Debug)]
pub struct NexmarkSource {
    config: NexmarkConfig,
}

impl NexmarkSource {
    /// A source of `config`'s events. Call [`check`](Self::check) (or let
    /// [`Source::create_reader`] do it) to validate the configuration.
    pub fn new(config: NexmarkConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &NexmarkConfig {
        &self.config
    }

    /// Validates the configuration ([`NexmarkConfig::check`]).
    pub fn check(&self) -> Result<(), ConnectorError> {
        self.config.check()
    }

    /// The reader of subtask `subtask` of `parallelism` at the start of its input, after
    /// [`check`](Self::check).
    pub fn reader(&self, subtask: u32, parallelism: u32) -> Result<NexmarkReader, ConnectorError> {
        self.check()?;
        if parallelism == 0 || subtask >= parallelism {
            return Err(ConnectorError::BadSubtask {
                subtask,
                parallelism,
            });
        }
        Ok(NexmarkReader {
            config: self.config.clone(),
            subtask,
            parallelism,
            lanes: vec![Lane {
                next: u64::from(subtask),
                stride: u64::from(parallelism),
            }],
            pacing: self
                .config
                .rate
                .map(|rate| Pacing::share(rate, parallelism)),
        })
    }

    /// The reader of subtask `subtask` of `parallelism`, resumed at `position` (what
    /// [`NexmarkReader::saved_position`] returned): its first event is the one after the last
    /// event returned before the snapshot. The rate limit, if any, starts afresh from there.
    ///
    /// A position taken by another split — a different subtask or parallelism, or a source
    /// with any other model setting or number of events — is refused with an error naming
    /// every setting that differs, as are bytes that do not decode or have an unknown format
    /// version.
    pub fn resume(
        &self,
        subtask: u32,
        parallelism: u32,
        position: &[u8],
    ) -> Result<NexmarkReader, ConnectorError> {
        let mut reader = self.reader(subtask, parallelism)?;
        let saved: NexmarkPosition =
            position::decode("nexmark", NEXMARK_POSITION_VERSION, position)?;
        check_identity(&saved, &reader.identity())?;
        reader.set_lanes(saved.lanes)?;
        Ok(reader)
    }

    /// The reader of subtask `subtask` of `parallelism` restored from `positions`, every old
    /// subtask's position taken at `old_parallelism` (index, bytes): each old reader's
    /// unread events (its lanes) are split `parallelism` ways by event number — lane
    /// `next, next + d, …` gives subtask `j` the lane `next + j·d, next + j·d + p·d, …` — so
    /// the new subtasks together read every unread event exactly once. Refused, naming the
    /// problem: a position of a differently configured source, of another parallelism, a
    /// missing or repeated old subtask.
    pub fn rescaled(
        &self,
        subtask: u32,
        parallelism: u32,
        old_parallelism: u32,
        positions: &[(u32, Vec<u8>)],
    ) -> Result<NexmarkReader, ConnectorError> {
        let mut reader = self.reader(subtask, parallelism)?;
        position::check_rescaled("nexmark", old_parallelism, positions)?;
        let mut lanes = Vec::new();
        for (old, bytes) in positions {
            let old_reader = self.resume(*old, old_parallelism, bytes)?;
            lanes.extend(
                old_reader
                    .remaining_lanes()
                    .into_iter()
                    .filter_map(|lane| lane.rescaled(subtask, parallelism)),
            );
        }
        reader.set_lanes(lanes)?;
        Ok(reader)
    }
}

impl Source<NexmarkEvent> for NexmarkSource {
    fn name(&self) -> String {
        "nexmark".to_string()
    }

    fn create_reader(
        &self,
        ctx: &SourceContext,
        restored: Option<&[u8]>,
    ) -> Result<Box<dyn SourceReader<NexmarkEvent>>, UserError> {
        let (subtask, parallelism) = subtask_of(ctx)?;
        Ok(Box::new(match restored {
            None => self.reader(subtask, parallelism)?,
            Some(position) => self.resume(subtask, parallelism, position)?,
        }))
    }

    fn create_rescaled_reader(
        &self,
        ctx: &SourceContext,
        old_parallelism: u32,
        positions: &[(u32, Vec<u8>)],
    ) -> Result<Box<dyn SourceReader<NexmarkEvent>>, UserError> {
        let (subtask, parallelism) = subtask_of(ctx)?;
        Ok(Box::new(self.rescaled(
            subtask,
            parallelism,
            old_parallelism,
            positions,
        )?))
    }
}

/// The format version of [`NexmarkPosition`] bytes.
const NEXMARK_POSITION_VERSION: u8 = 1;

/// Every setting that decides which events a source produces: a position is only valid for
/// a source with the same ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Model {
    seed: u64,
    events: Option<u64>,
    base_time_ms: i64,
    inter_event_delay_us: u64,
    person_proportion: u64,
    auction_proportion: u64,
    bid_proportion: u64,
    num_active_people: u64,
    num_in_flight_auctions: u64,
    hot_auction_ratio: u64,
    hot_sellers_ratio: u64,
    hot_bidders_ratio: u64,
    avg_person_byte_size: u64,
    avg_auction_byte_size: u64,
    avg_bid_byte_size: u64,
    num_categories: u64,
    first_person_id: u64,
    first_auction_id: u64,
    first_category_id: u64,
}

impl Model {
    fn of(c: &NexmarkConfig) -> Self {
        Self {
            seed: c.seed,
            events: c.events,
            base_time_ms: c.base_time_ms,
            inter_event_delay_us: c.inter_event_delay_us,
            person_proportion: c.person_proportion,
            auction_proportion: c.auction_proportion,
            bid_proportion: c.bid_proportion,
            num_active_people: c.num_active_people,
            num_in_flight_auctions: c.num_in_flight_auctions,
            hot_auction_ratio: c.hot_auction_ratio,
            hot_sellers_ratio: c.hot_sellers_ratio,
            hot_bidders_ratio: c.hot_bidders_ratio,
            avg_person_byte_size: c.avg_person_byte_size,
            avg_auction_byte_size: c.avg_auction_byte_size,
            avg_bid_byte_size: c.avg_bid_byte_size,
            num_categories: c.num_categories,
            first_person_id: c.first_person_id,
            first_auction_id: c.first_auction_id,
            first_category_id: c.first_category_id,
        }
    }

    /// Each setting by its [`NexmarkConfig`] field name.
    fn named(&self) -> [(&'static str, String); 19] {
        let events = self
            .events
            .map_or_else(|| "unbounded".to_string(), |e| e.to_string());
        [
            ("seed", self.seed.to_string()),
            ("events", events),
            ("base_time_ms", self.base_time_ms.to_string()),
            (
                "inter_event_delay_us",
                self.inter_event_delay_us.to_string(),
            ),
            ("person_proportion", self.person_proportion.to_string()),
            ("auction_proportion", self.auction_proportion.to_string()),
            ("bid_proportion", self.bid_proportion.to_string()),
            ("num_active_people", self.num_active_people.to_string()),
            (
                "num_in_flight_auctions",
                self.num_in_flight_auctions.to_string(),
            ),
            ("hot_auction_ratio", self.hot_auction_ratio.to_string()),
            ("hot_sellers_ratio", self.hot_sellers_ratio.to_string()),
            ("hot_bidders_ratio", self.hot_bidders_ratio.to_string()),
            (
                "avg_person_byte_size",
                self.avg_person_byte_size.to_string(),
            ),
            (
                "avg_auction_byte_size",
                self.avg_auction_byte_size.to_string(),
            ),
            ("avg_bid_byte_size", self.avg_bid_byte_size.to_string()),
            ("num_categories", self.num_categories.to_string()),
            ("first_person_id", self.first_person_id.to_string()),
            ("first_auction_id", self.first_auction_id.to_string()),
            ("first_category_id", self.first_category_id.to_string()),
        ]
    }
}

/// A reader's saved position: the identity of its split and the event numbers it has still
/// to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NexmarkPosition {
    subtask: u32,
    parallelism: u32,
    model: Model,
    lanes: Vec<Lane>,
}

/// Refuses a position taken by a differently configured split, naming every difference.
fn check_identity(saved: &NexmarkPosition, here: &NexmarkPosition) -> Result<(), ConnectorError> {
    let mut differences = Vec::new();
    let mut differs = |what: &str, then: String, now: String| {
        if then != now {
            differences.push(format!("{what} was {then}, is now {now}"));
        }
    };
    differs(
        "subtask",
        saved.subtask.to_string(),
        here.subtask.to_string(),
    );
    differs(
        "parallelism",
        saved.parallelism.to_string(),
        here.parallelism.to_string(),
    );
    for ((what, then), (_, now)) in saved.model.named().into_iter().zip(here.model.named()) {
        differs(what, then, now);
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(ConnectorError::BadPosition {
        connector: "nexmark",
        reason: format!(
            "it was taken by a differently configured nexmark source: {}",
            differences.join("; ")
        ),
    })
}

/// One subtask's reader: emits events `subtask, subtask + p, subtask + 2p, …` in order (after
/// a rescale: the lowest event number of its lanes first), so its timestamps never fall.
#[derive(Clone, Debug)]
pub struct NexmarkReader {
    config: NexmarkConfig,
    subtask: u32,
    parallelism: u32,
    /// The event numbers still to read; a lane whose next number would pass `u64::MAX` is
    /// dropped, and none left means finished.
    lanes: Vec<Lane>,
    pacing: Option<Pacing>,
}

impl NexmarkReader {
    /// The number of the next event this reader will emit; `None` once it is finished.
    pub fn next_event_number(&self) -> Option<u64> {
        self.remaining_lanes().iter().map(|l| l.next).min()
    }

    /// The saved form of the reader's position (versioned bytes), from which
    /// [`NexmarkSource::resume`] continues with the next event.
    pub fn saved_position(&self) -> Vec<u8> {
        let saved = NexmarkPosition {
            lanes: self.remaining_lanes(),
            ..self.identity()
        };
        position::encode(NEXMARK_POSITION_VERSION, &saved)
    }

    /// The split this reader reads, without lanes.
    fn identity(&self) -> NexmarkPosition {
        NexmarkPosition {
            subtask: self.subtask,
            parallelism: self.parallelism,
            model: Model::of(&self.config),
            lanes: Vec::new(),
        }
    }

    fn lane_done(&self, lane: &Lane) -> bool {
        self.config.events.is_some_and(|end| lane.next >= end)
    }

    fn finished(&self) -> bool {
        self.lanes.iter().all(|l| self.lane_done(l))
    }

    /// The event numbers this reader has not returned yet, as lanes.
    fn remaining_lanes(&self) -> Vec<Lane> {
        self.lanes
            .iter()
            .filter(|l| !self.lane_done(l))
            .copied()
            .collect()
    }

    /// Makes the reader read `lanes` (none left: it is finished).
    fn set_lanes(&mut self, lanes: Vec<Lane>) -> Result<(), ConnectorError> {
        check_lanes("nexmark", &lanes)?;
        self.lanes = lanes;
        Ok(())
    }

    /// Emits up to `budget` events, the lowest event number first; returns how many.
    fn emit(&mut self, out: &mut Vec<NexmarkEvent>, budget: u64) -> u64 {
        let config = &self.config;
        poll_lanes(&mut self.lanes, config.events, budget, |n| {
            out.push(event_at(config, n))
        })
    }
}

impl SourceReader<NexmarkEvent> for NexmarkReader {
    fn poll(&mut self, out: &mut Vec<NexmarkEvent>, max: usize) -> Result<SourcePoll, UserError> {
        if self.finished() {
            return Ok(SourcePoll::Finished);
        }
        let mut budget = max as u64;
        if let Some(pacing) = &mut self.pacing {
            match pacing.allowance(Instant::now()) {
                Ok(allowed) => budget = budget.min(allowed),
                Err(wait) => return Ok(SourcePoll::Idle(wait)),
            }
        }
        let emitted = self.emit(out, budget);
        if let Some(pacing) = &mut self.pacing {
            pacing.emitted += emitted;
        }
        Ok(if self.finished() {
            SourcePoll::Finished
        } else {
            SourcePoll::More
        })
    }

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, UserError> {
        Ok(Some(self.saved_position()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, drain, read_with_restores};
    use std::collections::BTreeSet;
    use std::time::Duration;

    /// Event `n` has timestamp `base + n`: events map back to their numbers.
    fn numbered(events: Option<u64>) -> NexmarkConfig {
        NexmarkConfig {
            seed: 11,
            events,
            base_time_ms: 0,
            inter_event_delay_us: 1000,
            ..NexmarkConfig::default()
        }
    }

    fn number(event: &NexmarkEvent) -> u64 {
        event.timestamp() as u64
    }

    #[test]
    fn events_are_a_pure_function_of_the_seed_and_the_event_number() {
        let config = NexmarkConfig {
            seed: 3,
            ..NexmarkConfig::default()
        };
        let other = NexmarkConfig {
            seed: 4,
            ..NexmarkConfig::default()
        };
        for n in [0, 1, 4, 5, 49, 50, 1234, 1 << 40] {
            assert_eq!(event_at(&config, n), event_at(&config, n), "event {n}");
            assert_eq!(
                event_at(&config, n),
                event_at(&config.clone(), n),
                "event {n}"
            );
        }
        let differ = (0..200)
            .filter(|&n| event_at(&config, n) != event_at(&other, n))
            .count();
        assert_eq!(differ, 200, "another seed changes every event");
    }

    #[test]
    fn every_fifty_events_hold_one_person_then_three_auctions_then_forty_six_bids() {
        let config = NexmarkConfig::default();
        let kinds: Vec<Kind> = (0..5000)
            .map(|n| match event_at(&config, n) {
                NexmarkEvent::Person(_) => Kind::Person,
                NexmarkEvent::Auction(_) => Kind::Auction,
                NexmarkEvent::Bid(_) => Kind::Bid,
            })
            .collect();
        for (i, cycle) in kinds.chunks(50).enumerate() {
            assert_eq!(cycle[0], Kind::Person, "cycle {i}");
            assert!(cycle[1..4].iter().all(|k| *k == Kind::Auction), "cycle {i}");
            assert!(cycle[4..].iter().all(|k| *k == Kind::Bid), "cycle {i}");
        }
    }

    #[test]
    fn sellers_bidders_and_bid_auctions_refer_only_to_already_generated_ids() {
        for config in [
            NexmarkConfig::default(),
            NexmarkConfig {
                seed: 9,
                num_active_people: 3,
                num_in_flight_auctions: 2,
                hot_auction_ratio: 1,
                hot_sellers_ratio: 1,
                hot_bidders_ratio: 1,
                ..NexmarkConfig::default()
            },
            NexmarkConfig {
                seed: 5,
                person_proportion: 2,
                auction_proportion: 1,
                bid_proportion: 3,
                ..NexmarkConfig::default()
            },
        ] {
            let (mut persons, mut auctions) = (BTreeSet::new(), BTreeSet::new());
            let (mut hot_bids, mut hot_sales) = (0, 0);
            for n in 0..20_000 {
                match event_at(&config, n) {
                    NexmarkEvent::Person(p) => {
                        assert_eq!(p.id, config.first_person_id + persons.len() as u64);
                        persons.insert(p.id);
                    }
                    NexmarkEvent::Auction(a) => {
                        assert_eq!(a.id, config.first_auction_id + auctions.len() as u64);
                        assert!(persons.contains(&a.seller), "event {n}: seller {a:?}");
                        hot_sales += usize::from(a.seller % 100 == 0);
                        auctions.insert(a.id);
                    }
                    NexmarkEvent::Bid(b) => {
                        assert!(auctions.contains(&b.auction), "event {n}: auction {b:?}");
                        assert!(persons.contains(&b.bidder), "event {n}: bidder {b:?}");
                        hot_bids += usize::from(b.auction % 100 == 0);
                    }
                }
            }
            assert!(
                hot_bids > 0 && hot_sales > 0,
                "hot auctions and sellers exist"
            );
        }
    }

    #[test]
    fn timestamps_rise_with_the_event_number() {
        let config = NexmarkConfig::default();
        let times: Vec<i64> = (0..5000)
            .map(|n| event_at(&config, n).timestamp())
            .collect();
        assert_eq!(times[0], DEFAULT_BASE_TIME_MS);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        // 100 µs apart: ten events per ms.
        assert_eq!(times[4999], DEFAULT_BASE_TIME_MS + 499);
        let far = event_at(&config, u64::MAX).timestamp();
        assert!(far > times[4999], "no overflow at the last event number");
    }

    #[test]
    fn fields_stay_within_the_reference_ranges() {
        let config = NexmarkConfig::default();
        let (mut person_bytes, mut persons) = (0, 0);
        let mut categories = BTreeSet::new();
        let mut channels = BTreeSet::new();
        for n in 0..10_000 {
            match event_at(&config, n) {
                NexmarkEvent::Person(p) => {
                    assert!(US_STATES.contains(&p.state.as_str()), "{p:?}");
                    assert!(US_CITIES.contains(&p.city.as_str()), "{p:?}");
                    assert!(p.name.contains(' ') && p.email_address.ends_with(".com"));
                    assert_eq!(p.credit_card.len(), 19, "{p:?}");
                    person_bytes += 8
                        + p.name.len()
                        + p.email_address.len()
                        + p.credit_card.len()
                        + p.city.len()
                        + p.state.len()
                        + p.extra.len();
                    persons += 1;
                }
                NexmarkEvent::Auction(a) => {
                    assert!((10..15).contains(&a.category), "{a:?}");
                    categories.insert(a.category);
                    assert!(
                        a.initial_bid >= 100 && a.initial_bid <= 100_000_000,
                        "{a:?}"
                    );
                    assert!(a.reserve > a.initial_bid, "{a:?}");
                    assert!(a.expires > a.date_time, "{a:?}");
                    assert!(!a.item_name.is_empty() && !a.description.is_empty());
                    assert_eq!(a.item_name.trim(), a.item_name);
                }
                NexmarkEvent::Bid(b) => {
                    assert!(b.price >= 100 && b.price <= 100_000_000, "{b:?}");
                    assert!(b.url.starts_with("https://www.nexmark.com/"), "{b:?}");
                    channels.insert(b.channel);
                }
            }
        }
        assert_eq!(categories.len(), 5);
        assert!(["Google", "Facebook", "Baidu", "Apple"]
            .iter()
            .all(|c| channels.contains(*c)));
        assert!(channels.iter().any(|c| c.starts_with("channel-")));
        let average = person_bytes / persons;
        assert!((180..=220).contains(&average), "person bytes {average}");
    }

    #[test]
    fn a_channel_has_the_same_url_in_every_bid() {
        let config = NexmarkConfig::default();
        let mut urls = std::collections::HashMap::new();
        for n in 0..20_000 {
            if let NexmarkEvent::Bid(b) = event_at(&config, n) {
                let url = urls.entry(b.channel.clone()).or_insert(b.url.clone());
                assert_eq!(*url, b.url, "channel {}", b.channel);
            }
        }
    }

    #[test]
    fn prices_use_the_reference_log_uniform_distribution() {
        assert_eq!(pow10(0.0), 1.0);
        for x in [0.5, 1.0, 2.25, 3.7, 5.999] {
            let expected = 10f64.powf(x);
            assert!(
                ((pow10(x) - expected) / expected).abs() < 1e-12,
                "10^{x}: {} vs {expected}",
                pow10(x)
            );
        }
    }

    #[test]
    fn the_readers_of_three_subtasks_together_produce_every_event_number_once() {
        let config = numbered(Some(1000));
        let source = NexmarkSource::new(config.clone());
        let mut all = Vec::new();
        for subtask in 0..3 {
            let mut reader = source
                .create_reader(&ctx("nexmark", subtask, 3), None)
                .expect("reader");
            let events = drain(reader.as_mut(), 7);
            let numbers: Vec<u64> = events.iter().map(number).collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "ascending");
            assert!(numbers.iter().all(|n| n % 3 == u64::from(subtask)));
            for event in &events {
                assert_eq!(*event, event_at(&config, number(event)));
            }
            all.extend(numbers);
        }
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_restored_reader_resumes_exactly_where_it_stopped() {
        let source = NexmarkSource::new(numbered(Some(100)));
        let mut reader = source.reader(1, 2).expect("reader");
        let mut out = Vec::new();
        reader.poll(&mut out, 5).expect("poll");
        assert_eq!(out.iter().map(number).collect::<Vec<_>>(), [1, 3, 5, 7, 9]);
        assert_eq!(reader.next_event_number(), Some(11));
        let position = reader
            .snapshot_position()
            .expect("snapshot")
            .expect("replayable");
        reader.poll(&mut Vec::new(), 3).expect("lost to a failure");
        let mut restored = source
            .create_reader(&ctx("nexmark", 1, 2), Some(&position))
            .expect("restore");
        let rest = drain(restored.as_mut(), 4);
        assert_eq!(
            rest.iter().map(number).collect::<Vec<_>>(),
            (11..100).step_by(2).collect::<Vec<_>>()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Events before each snapshot, then the restored reader's events, equal an
        /// uninterrupted run; events a reader returned after its snapshot are dropped, as a
        /// failure would.
        #[test]
        fn a_reader_restored_after_any_failures_continues_exactly_after_the_snapshot(
            seed in proptest::prelude::any::<u64>(),
            total in proptest::option::of(0u64..300),
            parallelism in 1u32..5,
            subtask in proptest::prelude::any::<proptest::sample::Index>(),
            sizes in proptest::collection::vec(1usize..12, 1..8),
            failures in proptest::collection::vec((0usize..15, 0usize..4), 0..6),
        ) {
            // An unbounded source is compared on its first 200 events.
            const LIMIT: usize = 200;
            let subtask = subtask.index(parallelism as usize) as u32;
            let source = NexmarkSource::new(NexmarkConfig { seed, events: total, ..NexmarkConfig::default() });
            let context = ctx("nexmark", subtask, parallelism);
            let open = |restored: Option<&[u8]>| {
                source.create_reader(&context, restored).expect("reader")
            };
            let uninterrupted = read_with_restores(open, &sizes, &[], LIMIT);
            let restored = read_with_restores(open, &sizes, &failures, LIMIT);
            proptest::prop_assert_eq!(restored, uninterrupted);
        }
    }

    #[test]
    fn a_damaged_position_is_refused_with_an_error_naming_the_nexmark_source() {
        let source = NexmarkSource::new(NexmarkConfig::default());
        let mut position = source.reader(0, 1).expect("reader").saved_position();
        for bad in [&[][..], &[9, 1, 2, 3][..], &position[..position.len() - 1]] {
            let err = source.resume(0, 1, bad).expect_err("bad position");
            assert!(
                matches!(
                    err,
                    ConnectorError::BadPosition {
                        connector: "nexmark",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("nexmark source position"), "{err}");
            assert!(!err.retry_may_help());
        }
        position[0] = 9;
        let err = source.resume(0, 1, &position).expect_err("version 9");
        assert!(err.to_string().contains("format version 9"), "{err}");
        position[0] = NEXMARK_POSITION_VERSION;
        position.push(0);
        let err = source.resume(0, 1, &position).expect_err("trailing byte");
        assert!(err.to_string().contains("trailing"), "{err}");
        let err = source
            .create_reader(&ctx("nexmark", 0, 1), Some(&[1, 2, 3]))
            .err()
            .expect("through the Source trait too");
        assert!(err.to_string().contains("nexmark"), "{err}");
    }

    #[test]
    fn a_position_from_a_differently_configured_source_is_refused_naming_what_differs() {
        let config = NexmarkConfig {
            seed: 1,
            events: Some(100),
            ..NexmarkConfig::default()
        };
        let source = NexmarkSource::new(config.clone());
        let mut reader = source.reader(1, 2).expect("reader");
        reader.poll(&mut Vec::new(), 3).expect("poll");
        let position = reader.saved_position();
        source.resume(1, 2, &position).expect("same split");
        let faster = NexmarkSource::new(NexmarkConfig {
            rate: Some(10),
            ..config.clone()
        });
        faster.resume(1, 2, &position).expect("the rate may change");

        let message = |source: NexmarkSource, subtask: u32, parallelism: u32| {
            let err = source
                .resume(subtask, parallelism, &position)
                .expect_err("mismatch");
            assert!(!err.retry_may_help());
            err.to_string()
        };
        let m = message(
            NexmarkSource::new(NexmarkConfig {
                seed: 2,
                bid_proportion: 40,
                ..config.clone()
            }),
            1,
            2,
        );
        assert!(
            m.contains("seed was 1, is now 2") && m.contains("bid_proportion was 46, is now 40"),
            "{m}"
        );
        assert!(!m.contains("subtask") && !m.contains("events"), "{m}");
        let m = message(source.clone(), 0, 2);
        assert!(m.contains("subtask was 1, is now 0"), "{m}");
        let m = message(source.clone(), 1, 3);
        assert!(m.contains("parallelism was 2, is now 3"), "{m}");
        let m = message(
            NexmarkSource::new(NexmarkConfig {
                events: None,
                ..config
            }),
            1,
            2,
        );
        assert!(m.contains("events was 100, is now unbounded"), "{m}");
    }

    #[test]
    fn decoding_fuzzed_positions_never_panics() {
        let source = NexmarkSource::new(NexmarkConfig {
            events: Some(1000),
            ..NexmarkConfig::default()
        });
        let mut seeds = vec![source.reader(0, 1).expect("reader").saved_position()];
        let positions: Vec<(u32, Vec<u8>)> = (0..2)
            .map(|i| (i, source.reader(i, 2).expect("r").saved_position()))
            .collect();
        seeds.push(
            source
                .rescaled(1, 3, 2, &positions)
                .expect("rescaled")
                .saved_position(),
        );
        weir_fuzz::run("nexmark source position", &seeds, |bytes| {
            if let Ok(mut reader) = source.resume(0, 1, bytes) {
                let _ = reader.poll(&mut Vec::new(), 2);
            }
            let _ = source.resume(1, 3, bytes);
        });
    }

    /// Reads `steps[i]` events from each of the `old` readers, snapshots them, rescales to
    /// `new` readers (twice: `old` → `new` → `old`), drains; returns every event number read.
    fn read_across_rescales(events: u64, old: u32, new: u32, steps: &[usize]) -> Vec<u64> {
        let source = NexmarkSource::new(numbered(Some(events)));
        let mut seen = Vec::new();
        let mut positions = Vec::new();
        for i in 0..old {
            let mut r = source.reader(i, old).expect("reader");
            let mut out = Vec::new();
            r.poll(&mut out, steps.get(i as usize).copied().unwrap_or(3))
                .expect("poll");
            seen.extend(out.iter().map(number));
            positions.push((i, r.saved_position()));
        }
        let mut middle = Vec::new();
        for j in 0..new {
            let mut r = source
                .create_rescaled_reader(&ctx("nexmark", j, new), old, &positions)
                .expect("rescaled");
            let mut out = Vec::new();
            r.poll(&mut out, 5).expect("poll");
            let numbers: Vec<u64> = out.iter().map(number).collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "ascending");
            seen.extend(numbers);
            middle.push((j, r.snapshot_position().expect("s").expect("position")));
        }
        for i in 0..old {
            let mut r = source
                .rescaled(i, old, new, &middle)
                .expect("rescaled back");
            let numbers: Vec<u64> = drain(&mut r, 11).iter().map(number).collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "ascending");
            seen.extend(numbers);
        }
        seen
    }

    #[test]
    fn a_source_rescaled_from_two_to_three_and_back_reads_every_event_once() {
        let mut seen = read_across_rescales(1000, 2, 3, &[10, 4]);
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn rescaling_with_a_missing_or_foreign_position_is_refused() {
        let source = NexmarkSource::new(numbered(Some(100)));
        let one = vec![(0, source.reader(0, 2).expect("r").saved_position())];
        let err = source.rescaled(0, 3, 2, &one).unwrap_err().to_string();
        assert!(err.contains("would be lost"), "{err}");
        let other = NexmarkSource::new(NexmarkConfig {
            seed: 12,
            ..numbered(Some(100))
        });
        let foreign: Vec<(u32, Vec<u8>)> = (0..2)
            .map(|i| (i, other.reader(i, 2).expect("r").saved_position()))
            .collect();
        let err = source.rescaled(0, 3, 2, &foreign).unwrap_err().to_string();
        assert!(err.contains("seed was 12, is now 11"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn every_event_is_read_exactly_once_across_any_rescale(
            events in 0u64..300,
            old in 1u32..6,
            new in 1u32..6,
            steps in proptest::collection::vec(0usize..40, 6),
        ) {
            let mut seen = read_across_rescales(events, old, new, &steps);
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..events).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_rate_limited_reader_idles_when_ahead_of_schedule() {
        // 2 events/s over 2 subtasks: 1/s each, so the first poll gets 1 event and the next is
        // due a second later.
        let source = NexmarkSource::new(NexmarkConfig {
            rate: Some(2),
            ..NexmarkConfig::default()
        });
        let mut reader = source.reader(0, 2).expect("reader");
        let mut out = Vec::new();
        assert_eq!(reader.poll(&mut out, 100).expect("poll"), SourcePoll::More);
        assert_eq!(out.len(), 1);
        match reader.poll(&mut out, 100).expect("poll") {
            SourcePoll::Idle(wait) => assert!(wait <= Duration::from_secs(1), "{wait:?}"),
            other => panic!("expected Idle, got {other:?}"),
        }
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn an_unbounded_reader_past_the_last_event_number_finishes() {
        let source = NexmarkSource::new(NexmarkConfig::default());
        let mut reader = source.reader(0, 1).expect("reader");
        reader.lanes[0].next = u64::MAX - 1;
        let mut out = Vec::new();
        assert_eq!(
            reader.poll(&mut out, 10).expect("poll"),
            SourcePoll::Finished
        );
        assert_eq!(out.len(), 2);
        let mut restored = source
            .resume(0, 1, &reader.saved_position())
            .expect("restore");
        assert_eq!(
            restored.poll(&mut out, 10).expect("poll"),
            SourcePoll::Finished
        );
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn an_invalid_configuration_is_refused_naming_the_setting() {
        let refused = |config: NexmarkConfig, setting: &str| {
            let err = NexmarkSource::new(config).check().expect_err(setting);
            assert!(matches!(err, ConnectorError::InvalidConfig { .. }), "{err}");
            assert!(err.to_string().contains(setting), "{err}");
        };
        let d = NexmarkConfig::default;
        refused(
            NexmarkConfig {
                person_proportion: 0,
                ..d()
            },
            "person_proportion",
        );
        refused(
            NexmarkConfig {
                auction_proportion: 0,
                ..d()
            },
            "auction_proportion",
        );
        refused(
            NexmarkConfig {
                bid_proportion: u64::MAX,
                ..d()
            },
            "overflows",
        );
        refused(
            NexmarkConfig {
                hot_bidders_ratio: 0,
                ..d()
            },
            "hot_bidders_ratio",
        );
        refused(
            NexmarkConfig {
                num_categories: 0,
                ..d()
            },
            "num_categories",
        );
        refused(
            NexmarkConfig {
                avg_bid_byte_size: MAX_AVG_BYTE_SIZE + 1,
                ..d()
            },
            "avg_bid_byte_size",
        );
        refused(
            NexmarkConfig {
                rate: Some(0),
                ..d()
            },
            "rate",
        );
        NexmarkConfig {
            auction_proportion: 0,
            bid_proportion: 0,
            ..d()
        }
        .check()
        .expect("persons only");
        assert!(NexmarkSource::new(NexmarkConfig {
            num_categories: 0,
            ..d()
        })
        .create_reader(&ctx("nexmark", 0, 1), None)
        .is_err());
    }

    #[test]
    fn the_default_configuration_is_the_reference_one() {
        let c = NexmarkConfig::default();
        assert_eq!(
            (c.person_proportion, c.auction_proportion, c.bid_proportion),
            (1, 3, 46)
        );
        assert_eq!(c.inter_event_delay_us, 100);
        assert_eq!((c.num_active_people, c.num_in_flight_auctions), (1000, 100));
        assert_eq!(
            (
                c.hot_auction_ratio,
                c.hot_sellers_ratio,
                c.hot_bidders_ratio
            ),
            (2, 4, 4)
        );
        assert_eq!(
            (
                c.avg_person_byte_size,
                c.avg_auction_byte_size,
                c.avg_bid_byte_size
            ),
            (200, 500, 100)
        );
        assert_eq!(
            (c.first_person_id, c.first_auction_id, c.first_category_id),
            (1000, 1000, 10)
        );
        assert_eq!(c.num_categories, 5);
        c.check().expect("valid");
    }
}
