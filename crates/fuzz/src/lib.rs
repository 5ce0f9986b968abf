//! Fuzzing on stable Rust for every decoder of bytes Weir did not write itself in this process
//! (`_metadata`, sink manifests, state snapshots, data-plane frames, JSON in gRPC messages,
//! REST paths and bodies).
//!
//! A target is a unit test beside its decoder that calls [`run`] with a few valid inputs
//! (seeds) and the decoder. [`run`] feeds it seeded mutations of the seeds — bit flips, byte
//! and length-field overwrites, insertions, deletions, truncations, splices of two seeds,
//! random bytes — for a time budget (`WEIR_FUZZ_SECONDS`, default 1 s per target; CI sets
//! more), and fails the test when a call panics or takes longer than a second. It prints the
//! iteration count. The seed comes from `WEIR_FUZZ_SEED` (default: the time), and a failure
//! names it and the input, so it replays.
//!
//! [`Bounded`] is a global allocator for a target's test binary: it refuses (the process then
//! aborts, naming the size) any single allocation above its bound, so a decoder that trusts a
//! length field fails the run instead of eating the machine.
//!
//! Must not depend on any other Weir crate.

#![warn(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// The longest one decode may take.
pub const SLOW_CALL: Duration = Duration::from_secs(1);

/// A global allocator that refuses any single allocation above `limit` bytes.
pub struct Bounded {
    limit: usize,
}

impl Bounded {
    /// Refuses allocations above `limit` bytes.
    pub const fn new(limit: usize) -> Self {
        Self { limit }
    }
}

// SAFETY: every call is forwarded to `System` unchanged, except that an oversized request
// returns null, which `GlobalAlloc` allows (the caller then reports the failure).
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > self.limit {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > self.limit {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > self.limit {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A small, fast, seeded generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Values that break length and count fields.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seeds[rng.below(seeds.len())]);
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                out.drain(i..i + n);
            }
            4 => out.truncate(rng.below(len + 1)),
            5 if len >= 8 => {
                // A length or count field overwritten with an extreme value.
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let i = rng.below(len - width + 1);
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                out[i..i + width].copy_from_slice(&bytes[..width]);
            }
            6 => {
                // Splice: the head of this input, the tail of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                // A digit or quote in text formats: numbers and strings change shape.
                let i = rng.below(len);
                out[i] = b"0123456789\"{}[],:-e."[rng.below(20)];
            }
            _ => {
                let n = rng.below(64);
                out.clear();
                out.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
}

fn budget() -> Duration {
    std::env::var("WEIR_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(1), Duration::from_secs_f64)
}

fn seed() -> u64 {
    std::env::var("WEIR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1
}

/// Feeds `decode` the seeds, then their mutations until the budget is spent; panics (naming
/// the run's seed and the input) when a call panics or is slower than [`SLOW_CALL`]. Returns
/// the number of inputs tried.
pub fn run(name: &str, seeds: &[Vec<u8>], mut decode: impl FnMut(&[u8])) -> u64 {
    assert!(!seeds.is_empty(), "fuzz target {name} needs a seed");
    let seed = seed();
    let mut rng = Rng(seed);
    let until = Instant::now() + budget();
    let mut input = Vec::new();
    let mut iterations = 0u64;
    let mut check = |input: &[u8], iterations: u64| {
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| decode(input)));
        let took = started.elapsed();
        let shown = &input[..input.len().min(256)];
        if let Err(panic) = outcome {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "fuzz target {name} panicked on input {iterations} (WEIR_FUZZ_SEED={seed}): \
                 {detail}\ninput ({} bytes): {shown:?}",
                input.len()
            );
        }
        assert!(
            took <= SLOW_CALL,
            "fuzz target {name} took {took:?} on input {iterations} (WEIR_FUZZ_SEED={seed}); \
             input ({} bytes): {shown:?}",
            input.len()
        );
    };
    for s in seeds {
        check(s, iterations);
        iterations += 1;
    }
    while Instant::now() < until {
        for _ in 0..64 {
            mutate(&mut rng, seeds, &mut input);
            check(&input, iterations);
            iterations += 1;
        }
    }
    println!("fuzz {name}: {iterations} inputs, no panic, none slower than {SLOW_CALL:?} (WEIR_FUZZ_SEED={seed})");
    iterations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_decoder_fails_the_run_naming_the_seed() {
        let caught = catch_unwind(|| {
            run("always-panics", &[b"x".to_vec()], |b| {
                if !b.is_empty() {
                    panic!("boom")
                }
            })
        });
        let message = caught.unwrap_err();
        let text = message.downcast_ref::<String>().unwrap();
        assert!(
            text.contains("WEIR_FUZZ_SEED=") && text.contains("boom"),
            "{text}"
        );
    }

    #[test]
    fn mutations_vary_the_input_and_a_fine_decoder_passes() {
        let mut seen = std::collections::HashSet::new();
        let n = run("collects", &[b"{\"version\":1}".to_vec()], |b| {
            if seen.len() < 10_000 {
                seen.insert(b.to_vec());
            }
        });
        assert!(n > 1000, "{n}");
        assert!(seen.len() > 100, "{}", seen.len());
    }
}
