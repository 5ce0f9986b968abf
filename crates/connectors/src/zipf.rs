//! Skewed keys for benchmarks: [`KeyDistribution`] turns a generated record's number into a
//! key drawn uniformly or from a Zipf distribution, as a pure function of `(seed, seq)`, so a
//! job that re-keys its records this way stays deterministic across restores and rescales.
//!
//! The Zipf draw uses rejection-inversion sampling (W. Hörmann and G. Derflinger, "Rejection-
//! inversion to generate variates from monotone discrete distributions", 1996): O(1) memory
//! and expected O(1) time whatever the number of keys, so 100 M keys cost nothing to set up.
//! Rank 1 (key 0) is the most frequent; rank `r` has weight `r^-s`.

use std::fmt;

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Key `k` (rank `k + 1`) with probability proportional to `(k + 1)^-s`.
    Zipf(Zipf),
}

impl KeyDistribution {
    /// Parses `uniform` or `zipf:S` (S > 0, e.g. `zipf:1.1`) over `keys` keys.
    pub fn parse(s: &str, keys: u64) -> Result<Self, String> {
        match s.trim() {
            "uniform" => Ok(Self::Uniform),
            other => {
                let exponent = other.strip_prefix("zipf:").ok_or_else(|| {
                    format!("'{other}': expected uniform or zipf:S (e.g. zipf:1.1)")
                })?;
                let s: f64 = exponent
                    .parse()
                    .map_err(|_| format!("'{other}': the exponent is not a number"))?;
                Zipf::new(keys, s).map(Self::Zipf)
            }
        }
    }

    /// The key of record `seq` of a generator seeded with `seed` (`uniform_key` is the key the
    /// generator itself drew, kept when the distribution is uniform).
    pub fn key(&self, seed: u64, seq: u64, uniform_key: u64) -> u64 {
        match self {
            Self::Uniform => uniform_key,
            Self::Zipf(z) => z.sample(seed ^ 0x5A17_F00D, seq) - 1,
        }
    }
}

impl fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uniform => f.write_str("uniform"),
            Self::Zipf(z) => write!(f, "zipf:{}", z.s),
        }
    }
}

/// A Zipf distribution over ranks `1..=n` with exponent `s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Zipf {
    n: u64,
    s: f64,
    h_x1: f64,
    h_n: f64,
    threshold: f64,
}

impl Zipf {
    /// Over `n ≥ 1` ranks with exponent `0 < s ≤ 10`.
    pub fn new(n: u64, s: f64) -> Result<Self, String> {
        if n == 0 {
            return Err("a Zipf distribution needs at least one key".into());
        }
        if !(s > 0.0 && s <= 10.0) {
            return Err(format!(
                "zipf exponent {s}: expected more than 0 and at most 10"
            ));
        }
        let mut z = Self {
            n,
            s,
            h_x1: 0.0,
            h_n: 0.0,
            threshold: 0.0,
        };
        z.h_x1 = z.h(1.5) - 1.0;
        z.h_n = z.h(n as f64 + 0.5);
        z.threshold = 2.0 - z.h_inv(z.h(2.5) - 2f64.powf(-s));
        Ok(z)
    }

    /// `∫ x^-s dx`, shifted so that it is 0 at 1: `(x^(1-s) - 1) / (1-s)`, or `ln x` at s = 1.
    fn h(&self, x: f64) -> f64 {
        let ln = x.ln();
        expm1_over_x((1.0 - self.s) * ln) * ln
    }

    /// The inverse of [`h`](Self::h).
    fn h_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (ln1p_over_x(t) * x).exp()
    }

    /// A rank in `1..=n` drawn with the uniform numbers of `(seed, seq)`.
    pub fn sample(&self, seed: u64, seq: u64) -> u64 {
        let mut draw = 0u64;
        loop {
            let u01 = uniform01(seed, seq, draw);
            draw += 1;
            let u = self.h_n + u01 * (self.h_x1 - self.h_n);
            let x = self.h_inv(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n as f64);
            if k - x <= self.threshold || u >= self.h(k + 0.5) - k.powf(-self.s) {
                return k as u64;
            }
            // Rejections are rare (a few in a hundred at most); the draw number moves on.
        }
    }
}

/// `(e^x - 1) / x`, exact near 0.
fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

/// `ln(1 + x) / x`, exact near 0.
fn ln1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// A uniform number in `[0, 1)` from `(seed, seq, draw)` (splitmix64 of a mix of the three).
fn uniform01(seed: u64, seq: u64, draw: u64) -> f64 {
    let mut z =
        seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ draw.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact probability of rank `r` among `n` with exponent `s`.
    fn p(r: u64, n: u64, s: f64) -> f64 {
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        (r as f64).powf(-s) / norm
    }

    #[test]
    fn ranks_are_drawn_with_zipf_frequencies() {
        for (n, s) in [(1000u64, 1.1), (50, 0.8), (10_000, 1.0), (7, 2.0)] {
            let z = Zipf::new(n, s).unwrap();
            let draws = 200_000u64;
            let mut counts = vec![0u64; n as usize + 1];
            for seq in 0..draws {
                let r = z.sample(42, seq);
                assert!((1..=n).contains(&r), "rank {r} of {n}");
                counts[r as usize] += 1;
            }
            for r in [1u64, 2, 3, 10.min(n)] {
                let expected = p(r, n, s) * draws as f64;
                let got = counts[r as usize] as f64;
                let tolerance = 5.0 * expected.sqrt() + 0.01 * expected;
                assert!(
                    (got - expected).abs() < tolerance,
                    "n={n} s={s} rank {r}: {got} draws, expected {expected:.0}"
                );
            }
        }
    }

    #[test]
    fn the_same_record_always_gets_the_same_key_and_bad_settings_are_named() {
        let d = KeyDistribution::parse("zipf:1.1", 10_000_000).unwrap();
        assert_eq!(d.key(7, 123, 0), d.key(7, 123, 0));
        assert!((0..10_000).all(|seq| d.key(7, seq, 0) < 10_000_000));
        assert_eq!(
            KeyDistribution::parse("uniform", 5).unwrap().key(7, 1, 4),
            4
        );
        assert_eq!(d.to_string(), "zipf:1.1");
        for bad in ["zipf:0", "zipf:-1", "zipf:x", "zipf", "normal", "zipf:11"] {
            assert!(KeyDistribution::parse(bad, 10).is_err(), "{bad}");
        }
        assert!(Zipf::new(0, 1.0).is_err());
        // One key: always rank 1.
        let one = Zipf::new(1, 1.5).unwrap();
        assert!((0..100).all(|seq| one.sample(1, seq) == 1));
    }
}
