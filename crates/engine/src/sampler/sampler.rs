//! `sample_batch`: one next token per row, rows in parallel (rayon), each row fully independent.
//!
//! Per-row pipeline, in vLLM V1's order (`vllm/v1/sample/sampler.py`):
//! 0. a structured-output row's grammar mask: every token it disallows gets -inf (vLLM applies the grammar
//!    bitmask to the logits before its sampler, so the "raw" distribution below is the masked one);
//! 1. raw logprob/rank (and top-N when `logprobs` is requested) from `log_softmax` of the RAW logits;
//! 2. copy -> logit_bias -> min_tokens mask (EOS + stop ids) -> repetition, frequency, presence penalties;
//! 3. greedy (`temperature < 1e-5`): argmax, ties to the lowest id, no random draw;
//! 4. otherwise: divide by temperature -> min_p -> top_k -> top_p -> ONE uniform draw from the row's own
//!    `SequenceRng` (see `top_k_top_p`).
//!
//! Rows whose processing is a no-op (no bias, penalties or active min_tokens) skip the copy. Per-thread
//! scratch buffers are reused across rows and steps.

use std::cell::RefCell;

use rayon::prelude::*;

use super::logits_processors::{
    apply_logit_bias, apply_min_tokens, apply_penalties, penalties_are_neutral, PenaltyScratch,
};
use super::logprobs::{log_sum_exp, token_logprob_and_rank, top_n_logprobs};
use super::rng::SequenceRng;
use super::top_k_top_p::{sample_scaled, TruncationScratch};
use crate::error::{EngineError, Result};
use crate::sampling_params::SamplingParams;

/// One sequence's input to the sampler.
pub struct SampleRow<'a> {
    /// Raw logits, one row of vocabulary size.
    pub logits: &'a [f32],
    pub params: &'a SamplingParams,
    pub prompt_token_ids: &'a [u32],
    pub output_token_ids: &'a [u32],
    pub eos_token_ids: &'a [u32],
    pub rng: &'a mut SequenceRng,
    /// Structured outputs: the tokens the grammar allows, one bit per id (bit `t % 32` of word `t / 32`). When
    /// set, `min_tokens` does not hold back EOS: the grammar decides where the output may end.
    pub allowed_tokens: Option<&'a [u32]>,
}

/// The sampled token with its RAW-distribution log-prob data.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    pub logprob: f32,
    /// 1-based rank in the raw distribution (ties share the worse rank, as in vLLM).
    pub rank: usize,
    /// `params.logprobs` entries by descending logprob, ties by lower id; empty when not requested.
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Default)]
struct Scratch {
    /// The grammar-masked logits of a constrained row.
    masked: Vec<f32>,
    logits: Vec<f32>,
    penalties: PenaltyScratch,
    truncation: TruncationScratch,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Samples every row in parallel; results are in row order. Any row's error fails the batch.
pub fn sample_batch(rows: &mut [SampleRow]) -> Result<Vec<SampledToken>> {
    rows.par_iter_mut().map(sample_row).collect()
}

/// Samples one row (what `sample_batch` runs per row).
pub fn sample_row(row: &mut SampleRow) -> Result<SampledToken> {
    let params = row.params;
    SCRATCH.with(|cell| {
        let scratch = &mut *cell.borrow_mut();
        let mut masked = std::mem::take(&mut scratch.masked);
        let raw: &[f32] = match row.allowed_tokens {
            Some(mask) => {
                apply_token_mask(row.logits, mask, &mut masked);
                &masked
            }
            None => row.logits,
        };
        let result = log_sum_exp(raw).and_then(|lse| {
            let token = choose_token(row, raw, scratch)?;
            let (logprob, rank) = token_logprob_and_rank(raw, lse, token);
            let top_logprobs = top_n_logprobs(raw, lse, params.logprobs.unwrap_or(0));
            Ok(SampledToken {
                token,
                logprob,
                rank,
                top_logprobs,
            })
        });
        scratch.masked = masked;
        result
    })
}

/// `out` = `logits` with every token outside `mask` at -inf (ids past the mask's end are outside it).
fn apply_token_mask(logits: &[f32], mask: &[u32], out: &mut Vec<f32>) {
    out.clear();
    out.resize(logits.len(), f32::NEG_INFINITY);
    for (w, &word) in mask.iter().enumerate() {
        let mut bits = word;
        // Walk the set bits only: a grammar usually allows few tokens (a JSON key, a digit), so this touches
        // far fewer than the whole row.
        while bits != 0 {
            let t = w * 32 + bits.trailing_zeros() as usize;
            if t >= logits.len() {
                break;
            }
            out[t] = logits[t];
            bits &= bits - 1;
        }
    }
}

fn choose_token(row: &mut SampleRow, raw: &[f32], scratch: &mut Scratch) -> Result<u32> {
    let params = row.params;
    let min_tokens_active = row.output_token_ids.len() < params.min_tokens && row.allowed_tokens.is_none();
    let needs_processing = !params.logit_bias.is_empty() || min_tokens_active || !penalties_are_neutral(params);
    if params.is_greedy() && !needs_processing {
        return argmax(raw);
    }
    let logits = &mut scratch.logits;
    logits.clear();
    logits.extend_from_slice(raw);
    if needs_processing {
        apply_logit_bias(logits, &params.logit_bias)?;
        if min_tokens_active {
            apply_min_tokens(logits, params, row.output_token_ids.len(), row.eos_token_ids)?;
        }
        apply_penalties(
            logits,
            params,
            row.prompt_token_ids,
            row.output_token_ids,
            &mut scratch.penalties,
        )?;
    }
    if params.is_greedy() {
        return argmax(logits);
    }
    let temperature = params.temperature;
    let mut max = f32::NEG_INFINITY;
    for x in logits.iter_mut() {
        *x /= temperature;
        max = max.max(*x);
    }
    if !max.is_finite() {
        return Err(nothing_to_sample(max));
    }
    let u = row.rng.next_uniform();
    sample_scaled(logits, max, params, u, &mut scratch.truncation).ok_or_else(|| nothing_to_sample(max))
}

/// Index of the largest value, the lowest index among ties (torch.argmax's choice).
fn argmax(row: &[f32]) -> Result<u32> {
    let mut best = 0;
    let mut best_val = f32::NEG_INFINITY;
    for (i, &x) in row.iter().enumerate() {
        if x > best_val {
            best = i;
            best_val = x;
        }
    }
    if best_val == f32::NEG_INFINITY {
        return Err(nothing_to_sample(best_val));
    }
    Ok(best as u32)
}

fn nothing_to_sample(max: f32) -> EngineError {
    EngineError::Internal(format!(
        "no token can be sampled: after processing the largest logit is {max}"
    ))
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
