//! Log-probabilities of the RAW model distribution (vLLM V1's default `logprobs_mode = "raw_logprobs"`):
//! `log_softmax` of the unprocessed logits, whatever temperature, penalties or truncation the sampler applied.
//!
//! - The log-sum-exp is accumulated in f64 (terms from a vectorized f32 `exp`, `cpu::exp_sum`), so results
//!   agree with an f64 reference to ~1e-7 even over a 150k vocabulary.
//! - Rank is vLLM's: 1 + the number of OTHER tokens whose logit is >= the token's (so ties share the worse rank).
//! - Top-N lists are sorted by descending logprob, ties by lower token id, found in one pass without sorting
//!   the vocabulary (N <= 20).

use rayon::prelude::*;

use crate::error::{EngineError, Result};

/// Log-prob data of one prompt position: `token` is the prompt token that position predicts.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub rank: usize,
    pub top: Vec<(u32, f32)>,
}

/// `max + ln(sum(exp(x - max)))` of a row, or an error if the row is empty, holds a NaN or has no finite
/// value (then no distribution exists).
pub fn log_sum_exp(row: &[f32]) -> Result<f64> {
    let nan = || EngineError::Internal("logits contain NaN".to_string());
    // `f32::max` skips NaNs; they surface below as a NaN sum (one vectorizable pass each, no per-element branch).
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if !max.is_finite() {
        if row.iter().any(|x| x.is_nan()) {
            return Err(nan());
        }
        return Err(EngineError::Internal(format!(
            "logits row (size {}) has no finite value",
            row.len()
        )));
    }
    // Vectorized (the serial cost of every sampled token over the whole vocabulary).
    let sum = pagedllm_kernels::cpu::exp_sum::sum_exp_shifted(row, max);
    if sum.is_nan() {
        return Err(nan());
    }
    Ok(max as f64 + sum.ln())
}

/// Raw logprob and 1-based rank of `token` (which must be inside the row), given the row's `log_sum_exp`.
pub(crate) fn token_logprob_and_rank(row: &[f32], lse: f64, token: u32) -> (f32, usize) {
    let x = row[token as usize];
    let rank = row.iter().filter(|&&y| y >= x).count();
    ((x as f64 - lse) as f32, rank)
}

/// The `n` most likely tokens of `row` with their logprobs, given the row's `log_sum_exp`.
pub(crate) fn top_n_logprobs(row: &[f32], lse: f64, n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    // Kept sorted by descending logit; ids arrive in ascending order, so an equal logit never displaces an
    // entry and insertion after existing equals keeps the lower-id-first tie order.
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (id, &x) in row.iter().enumerate() {
        if best.len() == n && x <= best[n - 1].1 {
            continue;
        }
        let at = best.partition_point(|&(_, y)| y >= x);
        best.insert(at, (id as u32, x));
        best.truncate(n);
    }
    best.into_iter().map(|(id, x)| (id, (x as f64 - lse) as f32)).collect()
}

/// `log_softmax(row)` restricted to its `n` largest entries; NaN or all `-inf` rows yield an empty list.
pub fn log_softmax_top_n(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    match log_sum_exp(row) {
        Ok(lse) => top_n_logprobs(row, lse, n),
        Err(_) => Vec::new(),
    }
}

/// Prompt logprobs: `logits` holds one `vocab_size` row per position, and row `i` predicts `next_tokens[i]`.
/// Rows are processed in parallel.
pub fn prompt_logprobs(
    logits: &[f32],
    vocab_size: usize,
    next_tokens: &[u32],
    top_n: usize,
) -> Result<Vec<PromptTokenLogprob>> {
    if vocab_size == 0 || Some(logits.len()) != vocab_size.checked_mul(next_tokens.len()) {
        return Err(EngineError::Internal(format!(
            "prompt logprobs: {} logits do not form {} rows of vocab size {vocab_size}",
            logits.len(),
            next_tokens.len()
        )));
    }
    if let Some(&bad) = next_tokens.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(EngineError::invalid(
            "prompt_token_ids",
            format!("token id {bad} is outside the vocabulary (size {vocab_size})"),
        ));
    }
    logits
        .par_chunks(vocab_size)
        .zip(next_tokens.par_iter())
        .map(|(row, &token)| {
            let lse = log_sum_exp(row)?;
            let (logprob, rank) = token_logprob_and_rank(row, lse, token);
            Ok(PromptTokenLogprob {
                token,
                logprob,
                rank,
                top: top_n_logprobs(row, lse, top_n),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Reference: f64 log_softmax of the whole row.
    pub(crate) fn naive_log_softmax(row: &[f32]) -> Vec<f64> {
        let m = row.iter().map(|&x| x as f64).fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        row.iter().map(|&x| x as f64 - lse).collect()
    }

    /// Reference: full sort by (logprob desc, id asc).
    pub(crate) fn naive_top_n(row: &[f32], n: usize) -> Vec<(u32, f64)> {
        let lp = naive_log_softmax(row);
        let mut ids: Vec<u32> = (0..row.len() as u32).collect();
        ids.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
        ids.into_iter().take(n).map(|i| (i, lp[i as usize])).collect()
    }

    fn random_row(rng: &mut ChaCha8Rng, vocab: usize, quantised: bool) -> Vec<f32> {
        (0..vocab)
            .map(|_| {
                let x = rng.random_range(-20.0f32..20.0);
                // Quantised rows have many ties, exercising the tie order.
                if quantised {
                    x.round()
                } else {
                    x
                }
            })
            .collect()
    }

    #[test]
    fn top_n_and_token_logprobs_match_naive_f64() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for case in 0..100 {
            let vocab = rng.random_range(1..3000usize);
            let row = random_row(&mut rng, vocab, case % 2 == 0);
            let n = rng.random_range(0..=20usize);
            let naive = naive_log_softmax(&row);
            let lse = log_sum_exp(&row).unwrap();
            let got = top_n_logprobs(&row, lse, n);
            let want = naive_top_n(&row, n);
            assert_eq!(got.len(), want.len());
            for ((gi, gl), (wi, wl)) in got.iter().zip(&want) {
                assert_eq!(gi, wi);
                assert!((*gl as f64 - wl).abs() < 1e-5, "{gl} vs {wl}");
            }
            let token = rng.random_range(0..vocab as u32);
            let (lp, rank) = token_logprob_and_rank(&row, lse, token);
            assert!((lp as f64 - naive[token as usize]).abs() < 1e-5);
            let want_rank = naive.iter().filter(|&&y| y >= naive[token as usize]).count();
            assert_eq!(rank, want_rank);
        }
    }

    #[test]
    fn large_vocab_log_sum_exp_is_accurate() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let row = random_row(&mut rng, 150_000, false);
        let naive = naive_log_softmax(&row);
        let lse = log_sum_exp(&row).unwrap();
        for t in [0usize, 77, 149_999] {
            assert!(((row[t] as f64 - lse) - naive[t]).abs() < 1e-5);
        }
    }

    #[test]
    fn rows_without_a_distribution_are_errors() {
        assert!(log_sum_exp(&[]).is_err());
        assert!(log_sum_exp(&[1.0, f32::NAN]).is_err());
        assert!(log_sum_exp(&[f32::NEG_INFINITY; 3]).is_err());
        assert!(log_softmax_top_n(&[f32::NAN], 1).is_empty());
        let with_masked = [0.0, f32::NEG_INFINITY, 0.0];
        let top = log_softmax_top_n(&with_masked, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 2, 1]);
        assert!((top[0].1 - 0.5f32.ln()).abs() < 1e-6 && top[2].1 == f32::NEG_INFINITY);
    }

    #[test]
    fn prompt_logprobs_score_each_next_token() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let vocab = 97;
        let rows = 6;
        let logits = random_row(&mut rng, vocab * rows, false);
        let next: Vec<u32> = (0..rows).map(|_| rng.random_range(0..vocab as u32)).collect();
        let got = prompt_logprobs(&logits, vocab, &next, 4).unwrap();
        assert_eq!(got.len(), rows);
        for (i, p) in got.iter().enumerate() {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let naive = naive_log_softmax(row);
            let t = next[i] as usize;
            assert_eq!(p.token, next[i]);
            assert!((p.logprob as f64 - naive[t]).abs() < 1e-5);
            assert_eq!(p.rank, naive.iter().filter(|&&y| y >= naive[t]).count());
            let want: Vec<u32> = naive_top_n(row, 4).into_iter().map(|x| x.0).collect();
            assert_eq!(p.top.iter().map(|x| x.0).collect::<Vec<_>>(), want);
        }
        assert!(prompt_logprobs(&logits, vocab, &next[..5], 4).is_err());
        assert!(prompt_logprobs(&logits[..vocab], vocab, &[vocab as u32], 0).is_err());
        assert!(prompt_logprobs(&[], vocab, &[], 2).unwrap().is_empty());
    }
}
