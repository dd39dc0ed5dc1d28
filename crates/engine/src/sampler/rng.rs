//! `SequenceRng`: one independent random stream per sequence.
//!
//! Guarantee: a non-greedy sampled token consumes exactly ONE uniform draw from its own sequence's stream and
//! nothing else does, so a seeded request produces the same tokens whatever else shares its batch, in whatever
//! order. This is vLLM V1's per-request `torch.Generator` model; we use ChaCha8 because it is portable (same
//! stream on every platform and `rand` version that keeps `rand_chacha`'s output stable) and cheap to seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
pub struct SequenceRng {
    inner: ChaCha8Rng,
    /// Uniform draws taken so far (lets callers and tests check the one-draw-per-token contract).
    draws: u64,
}

impl SequenceRng {
    /// A stream fully determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
            draws: 0,
        }
    }

    /// A stream for an unseeded request (seed taken from the OS-seeded thread RNG).
    pub fn from_entropy() -> Self {
        Self::new(rand::random())
    }

    /// The stream of the `index`-th of `n` parallel samples of a seeded request: vLLM V1 gives child `i` the
    /// seed `seed + i`, so the samples differ from each other but each stays reproducible.
    pub fn for_child(seed: u64, index: usize) -> Self {
        Self::new(seed.wrapping_add(index as u64))
    }

    /// One uniform draw in `[0, 1)` with 53 bits of precision.
    pub fn next_uniform(&mut self) -> f64 {
        self.draws += 1;
        self.inner.random::<f64>()
    }

    /// How many uniform draws this stream has given out.
    pub fn draws(&self) -> u64 {
        self.draws
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_the_same_stream_and_different_seeds_do_not() {
        let mut a = SequenceRng::new(42);
        let mut b = SequenceRng::new(42);
        let mut c = SequenceRng::new(43);
        let xa: Vec<f64> = (0..100).map(|_| a.next_uniform()).collect();
        let xb: Vec<f64> = (0..100).map(|_| b.next_uniform()).collect();
        let xc: Vec<f64> = (0..100).map(|_| c.next_uniform()).collect();
        assert_eq!(xa, xb);
        assert!(xa.iter().zip(&xc).filter(|(x, y)| x == y).count() < 5);
        assert_eq!(a.draws(), 100);
    }

    #[test]
    fn draws_are_uniform_in_unit_interval() {
        let mut r = SequenceRng::new(7);
        let n = 100_000;
        let mut bins = [0usize; 10];
        for _ in 0..n {
            let u = r.next_uniform();
            assert!((0.0..1.0).contains(&u));
            bins[(u * 10.0) as usize] += 1;
        }
        // Chi-square with 9 degrees of freedom; 27.9 is the 0.1% critical value.
        let expected = n as f64 / 10.0;
        let chi2: f64 = bins.iter().map(|&o| (o as f64 - expected).powi(2) / expected).sum();
        assert!(chi2 < 27.9, "chi2 = {chi2}, bins = {bins:?}");
    }

    #[test]
    fn children_of_a_seed_are_distinct_but_reproducible() {
        let first = |mut r: SequenceRng| r.next_uniform();
        assert_eq!(first(SequenceRng::for_child(5, 0)), first(SequenceRng::new(5)));
        assert_eq!(first(SequenceRng::for_child(5, 1)), first(SequenceRng::new(6)));
        assert_ne!(first(SequenceRng::for_child(5, 0)), first(SequenceRng::for_child(5, 1)));
    }
}
