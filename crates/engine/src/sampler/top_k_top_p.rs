//! Truncation (min_p, top_k, top_p) of temperature-scaled logits and the single-uniform inverse-CDF draw.
//!
//! Semantics are vLLM V1's (`vllm/v1/sample/sampler.py`, `ops/topk_topp_sampler.py`), applied in its order:
//! - min_p (an "argmax-invariant" processor, run before top-k/top-p): drop tokens with
//!   `p < min_p * p_max`, i.e. `s - s_max < ln(min_p)`;
//! - top_k: keep tokens whose logit is >= the k-th largest (vLLM masks `logits < kth_value`, so ties at the
//!   boundary survive);
//! - top_p: over the survivors, renormalised, keep the minimal prefix of the (prob desc, id asc) order whose
//!   mass reaches `top_p` (vLLM drops ascending tokens while their cumulative mass is <= 1 - top_p).
//!
//! The draw walks the kept tokens in ascending token id, picking the first whose cumulative weight exceeds
//! `u * total`; this fixed order makes a seeded request reproducible. vLLM draws with an exponential race
//! instead; the distribution is the same, the per-seed token is not (neither is vLLM's across GPUs).
//!
//! Cost for vocab V: min_p/top_k-only rows are O(V) (one `select_nth_unstable` for top_k, no sort). top_p sorts
//! only the head of the distribution: it first discards tokens too light to reach the nucleus, then selects and
//! sorts growing chunks (64, 256, ...) until the nucleus is complete, which for peaked LLM distributions is one
//! small chunk.

use std::cmp::Ordering;

use crate::sampling_params::SamplingParams;

/// The tokens that survive min_p and top_k, without listing them.
#[derive(Clone, Copy, Debug)]
struct KeepRule {
    max: f32,
    /// The k-th largest scaled logit (`-inf` when top_k is off).
    min_logit: f32,
    /// `ln(min_p)` (`-inf` when min_p is off).
    log_min_p: f32,
}

impl KeepRule {
    fn keeps(&self, s: f32) -> bool {
        s > f32::NEG_INFINITY && s >= self.min_logit && s - self.max >= self.log_min_p
    }
}

/// Buffers reused across rows by one thread.
#[derive(Default)]
pub struct TruncationScratch {
    /// Copy of the scaled logits for top_k's selection, then the kept tokens' weights.
    values: Vec<f32>,
    /// top_p candidates as (scaled logit, id): the key sits beside the id so selection and sorting stay in cache.
    candidates: Vec<(f32, u32)>,
}

/// Draws one token from the truncated softmax of `scaled` (logits already divided by the temperature), whose
/// largest value is `max` (finite). `u` is the request's single uniform draw in `[0, 1)`. Returns `None` only
/// if no token has positive weight, which cannot happen for a finite `max`.
pub fn sample_scaled(
    scaled: &[f32],
    max: f32,
    params: &SamplingParams,
    u: f64,
    scratch: &mut TruncationScratch,
) -> Option<u32> {
    let rule = keep_rule(scaled, max, params, &mut scratch.values);
    if params.top_p >= 1.0 {
        // Weights computed once (exp is the cost here), then summed and walked.
        let weights = &mut scratch.values;
        weights.clear();
        weights.extend(
            scaled
                .iter()
                .map(|&s| if rule.keeps(s) { (s - max).exp() } else { 0.0 }),
        );
        return inverse_cdf(weights.iter().enumerate().map(|(i, &w)| (i as u32, w as f64)), u);
    }
    let nucleus = nucleus(scaled, rule, params.top_p, &mut scratch.candidates);
    inverse_cdf(nucleus.iter().map(|&(s, i)| (i, (s - max).exp() as f64)), u)
}

/// min_p and top_k as one keep rule; `buf` is scratch for top_k's selection.
fn keep_rule(scaled: &[f32], max: f32, params: &SamplingParams, buf: &mut Vec<f32>) -> KeepRule {
    let log_min_p = if params.min_p > 0.0 {
        params.min_p.ln()
    } else {
        f32::NEG_INFINITY
    };
    let mut min_logit = f32::NEG_INFINITY;
    if params.top_k > 0 && (params.top_k as usize) < scaled.len() {
        let k = params.top_k as usize;
        buf.clear();
        buf.extend_from_slice(scaled);
        let (_, kth, _) = buf.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        min_logit = *kth;
    }
    KeepRule {
        max,
        min_logit,
        log_min_p,
    }
}

/// The top_p nucleus of the tokens `rule` keeps, sorted by ascending id.
fn nucleus<'c>(scaled: &[f32], rule: KeepRule, top_p: f32, cands: &'c mut Vec<(f32, u32)>) -> &'c [(f32, u32)] {
    let max = rule.max;
    let mut total = 0.0f64;
    let mut n_kept = 0usize;
    for &s in scaled {
        if rule.keeps(s) {
            total += (s - max).exp() as f64;
            n_kept += 1;
        }
    }
    let limit = top_p as f64 * total;
    // Tokens lighter than (1 - top_p) * total / n_kept together weigh less than the mass top_p may drop, and
    // they are the lightest, so they all fall outside the nucleus: skip them before any sorting. Halved as a
    // margin against rounding.
    let floor = (0.5 * (1.0 - top_p as f64) * total / n_kept.max(1) as f64).ln() as f32;
    cands.clear();
    cands.extend(
        scaled
            .iter()
            .enumerate()
            .filter(|(_, &s)| rule.keeps(s) && s - max >= floor)
            .map(|(i, &s)| (s, i as u32)),
    );
    // Most likely first, ties by lower id: the order vLLM's nucleus is cut in.
    let by_prob = |a: &(f32, u32), b: &(f32, u32)| -> Ordering { b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)) };
    let n = cands.len();
    let mut start = 0;
    let mut chunk = 64;
    let mut mass = 0.0f64;
    let kept = 'nucleus: loop {
        let end = (start + chunk).min(n);
        let rest = &mut cands[start..];
        if end < n {
            // Bring the next (end - start) most likely tokens to the front, then order just those.
            rest.select_nth_unstable_by(end - start - 1, by_prob);
        }
        rest[..end - start].sort_unstable_by(by_prob);
        for (i, &(s, _)) in cands[start..end].iter().enumerate() {
            if mass >= limit {
                break 'nucleus start + i;
            }
            mass += (s - max).exp() as f64;
        }
        if end == n {
            break n;
        }
        start = end;
        chunk *= 4;
    };
    cands.truncate(kept.max(1));
    cands.sort_unstable_by_key(|&(_, id)| id);
    cands
}

/// The first token whose cumulative weight exceeds `u * total`; tokens of zero weight are never chosen. The
/// total is summed in the walk's own order so `u < 1` always lands inside (the last positive token catches
/// rounding at the top end).
fn inverse_cdf(weights: impl Iterator<Item = (u32, f64)> + Clone, u: f64) -> Option<u32> {
    let total = weights.clone().fold(0.0f64, |acc, (_, w)| acc + w);
    let target = u * total;
    let mut cum = 0.0f64;
    let mut last_positive = None;
    for (id, w) in weights {
        if w > 0.0 {
            cum += w;
            last_positive = Some(id);
            if cum > target {
                return Some(id);
            }
        }
    }
    last_positive
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn max_of(s: &[f32]) -> f32 {
        s.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    fn kept_ids(scaled: &[f32], params: &SamplingParams) -> Vec<u32> {
        let rule = keep_rule(scaled, max_of(scaled), params, &mut Vec::new());
        if params.top_p >= 1.0 {
            (0..scaled.len() as u32)
                .filter(|&i| rule.keeps(scaled[i as usize]))
                .collect()
        } else {
            nucleus(scaled, rule, params.top_p, &mut Vec::new())
                .iter()
                .map(|&(_, i)| i)
                .collect()
        }
    }

    /// Reference: full sort, then min_p, top_k (ties at the k-th value kept), minimal nucleus. `None` when the
    /// nucleus boundary is too close to call in floating point.
    fn naive_kept(scaled: &[f32], params: &SamplingParams) -> Option<Vec<u32>> {
        let m = max_of(scaled) as f64;
        let mut order: Vec<u32> = (0..scaled.len() as u32)
            .filter(|&i| scaled[i as usize].is_finite())
            .collect();
        order.sort_by(|&a, &b| scaled[b as usize].total_cmp(&scaled[a as usize]).then(a.cmp(&b)));
        let val = |i: u32| scaled[i as usize] as f64;
        if params.min_p > 0.0 {
            order.retain(|&i| (val(i) - m).exp() >= params.min_p as f64 * (1.0 - 1e-6));
        }
        if params.top_k > 0 && (params.top_k as usize) < order.len() {
            let kth = val(order[params.top_k as usize - 1]);
            order.retain(|&i| val(i) >= kth);
        }
        let w: Vec<f64> = order.iter().map(|&i| (val(i) - m).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut keep = order.len();
        let mut cum = 0.0;
        for (j, wj) in w.iter().enumerate() {
            if ((cum - params.top_p as f64 * total) / total).abs() < 1e-6 {
                return None;
            }
            if cum >= params.top_p as f64 * total {
                keep = j;
                break;
            }
            cum += wj;
        }
        let mut kept = order[..keep.max(1)].to_vec();
        kept.sort_unstable();
        Some(kept)
    }

    #[test]
    fn top_p_keeps_the_minimal_nucleus() {
        let probs = [0.15f32, 0.5, 0.05, 0.3];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        for (p, want) in [
            (0.45, vec![1]),
            (0.55, vec![1, 3]),
            (0.75, vec![1, 3]),
            (0.85, vec![0, 1, 3]),
            (0.99, vec![0, 1, 2, 3]),
        ] {
            let params = SamplingParams {
                top_p: p,
                ..Default::default()
            };
            assert_eq!(kept_ids(&logits, &params), want, "top_p = {p}");
        }
    }

    #[test]
    fn top_k_keeps_k_largest_and_ties_at_the_boundary() {
        let logits = [1.0f32, 5.0, 3.0, 3.0, -2.0, 4.0];
        let k = |k| {
            kept_ids(
                &logits,
                &SamplingParams {
                    top_k: k,
                    ..Default::default()
                },
            )
        };
        assert_eq!(k(1), vec![1]);
        assert_eq!(k(2), vec![1, 5]);
        assert_eq!(k(3), vec![1, 2, 3, 5]);
        assert_eq!(k(-1), (0..6).collect::<Vec<_>>());
        assert_eq!(k(0), (0..6).collect::<Vec<_>>());
        assert_eq!(k(100), (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn min_p_drops_tokens_below_the_scaled_max_prob() {
        // probs proportional to 1, 0.5, 0.2, 0.05
        let logits: Vec<f32> = [1.0f32, 0.5, 0.2, 0.05].iter().map(|p| p.ln()).collect();
        let kept = |m| {
            kept_ids(
                &logits,
                &SamplingParams {
                    min_p: m,
                    ..Default::default()
                },
            )
        };
        assert_eq!(kept(0.1), vec![0, 1, 2]);
        assert_eq!(kept(0.3), vec![0, 1]);
        assert_eq!(kept(1.0), vec![0]);
    }

    #[test]
    fn masked_tokens_are_never_kept() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        assert_eq!(
            kept_ids(
                &logits,
                &SamplingParams {
                    top_k: 2,
                    ..Default::default()
                }
            ),
            vec![1]
        );
        assert_eq!(
            kept_ids(
                &logits,
                &SamplingParams {
                    top_p: 0.9,
                    ..Default::default()
                }
            ),
            vec![1]
        );
    }

    /// Random rows (including flat ones whose nucleus spans several chunks) against the full-sort reference.
    #[test]
    fn truncation_matches_full_sort_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let mut checked = 0;
        for case in 0..300 {
            let vocab = rng.random_range(1..5000usize);
            let spread = if case % 3 == 0 { 0.5f32 } else { 8.0 };
            let scaled: Vec<f32> = (0..vocab).map(|_| rng.random_range(-spread..spread)).collect();
            let params = SamplingParams {
                top_p: if rng.random_bool(0.8) {
                    rng.random_range(0.05f32..1.0)
                } else {
                    1.0
                },
                top_k: if rng.random_bool(0.5) {
                    rng.random_range(1..200)
                } else {
                    0
                },
                min_p: if rng.random_bool(0.3) {
                    rng.random_range(0.0f32..0.5)
                } else {
                    0.0
                },
                ..Default::default()
            };
            if let Some(want) = naive_kept(&scaled, &params) {
                assert_eq!(kept_ids(&scaled, &params), want, "case {case}: {params:?}");
                checked += 1;
            }
        }
        assert!(checked > 250);
    }

    /// Sweeping `u` over a fine grid must hit each kept token in proportion to its renormalised probability.
    #[test]
    fn inverse_cdf_over_a_uniform_grid_reproduces_the_truncated_distribution() {
        let logits = [0.3f32, 2.0, -1.0, 1.2, 0.9, -4.0];
        let params = SamplingParams {
            top_k: 4,
            top_p: 0.9,
            ..Default::default()
        };
        let kept = kept_ids(&logits, &params);
        let max = max_of(&logits);
        let z: f64 = kept.iter().map(|&i| ((logits[i as usize] - max) as f64).exp()).sum();
        let grid = 100_000;
        let mut counts = [0usize; 6];
        let mut scratch = TruncationScratch::default();
        for j in 0..grid {
            let u = (j as f64 + 0.5) / grid as f64;
            counts[sample_scaled(&logits, max, &params, u, &mut scratch).unwrap() as usize] += 1;
        }
        for (t, &c) in counts.iter().enumerate() {
            let want = if kept.contains(&(t as u32)) {
                ((logits[t] - max) as f64).exp() / z
            } else {
                0.0
            };
            assert!(
                (c as f64 / grid as f64 - want).abs() < 2.0 / grid as f64,
                "token {t}: {c} vs {want}"
            );
        }
    }

    #[test]
    fn draw_extremes_stay_inside_the_kept_set() {
        let logits = [0.0f32, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        let mut scratch = TruncationScratch::default();
        let p = SamplingParams::default();
        assert_eq!(sample_scaled(&logits, 0.0, &p, 0.0, &mut scratch), Some(0));
        assert_eq!(
            sample_scaled(&logits, 0.0, &p, 1.0 - f64::EPSILON / 2.0, &mut scratch),
            Some(2)
        );
    }
}
