//! Sampling on the backend's device: which rows qualify, and what each needs packed for the device sampler.
//!
//! A backend that samples on the GPU (see `pagedllm_kernels::cuda`, `kernels/sampling.cu`) copies back one token
//! id, its raw log-prob and rank, and the asked-for log-prob list per row instead of a `[rows x vocab]` logits
//! block. It runs the CPU sampler's whole pipeline (logit bias, min_tokens mask, penalties, greedy or
//! temperature with min_p / top_k / top_p, raw log-probs); the host only turns each request's parameters and
//! token history into a [`DeviceSampleParams`] and its [`TokenEdit`]s: every token whose logit changes before
//! sampling, merged into one edit per token (so the GPU needs no per-row vocab-sized tables).
//!
//! A structured-output row also carries its grammar's allowed-token bitmask, copied into one `[rows x
//! mask_words(vocab)]` block per step (llguidance's u32 words as they are; no per-row allocation once the block
//! has grown): the kernel sets every disallowed logit to -inf before anything else, where the CPU sampler
//! applies `allowed_tokens`, so both samplers see the same masked distribution (log-probs included), and, as
//! on the CPU, min_tokens does not hold back EOS in such a row (the grammar decides where the output ends).
//!
//! A row stays on the CPU sampler only when the GPU would answer differently from it: a token id outside the
//! vocabulary in `logit_bias` / stop ids (the CPU sampler reports the bad field), or more edits than the
//! device buffer holds. Both are properties of the row alone, so whether a request samples on the device
//! never depends on what else is in its batch (a step with more rows or edits than one launch holds is
//! sampled in several launches by the backend).
//!
//! Seeds keep the one-draw-per-token contract of `SequenceRng`: a non-greedy device-sampled token takes ONE
//! uniform draw and turns it into the device's noise seed, so a seeded request is reproducible on the device
//! backend whatever its batch. (The device's noise differs from the CPU sampler's inverse-CDF draw, so the same
//! seed gives different, equally valid, samples on the two backends.)

use pagedllm_kernels::cuda::{
    mask_words, DeviceSampleParams, TokenEdit, MAX_DEVICE_TOKEN_EDITS, MAX_DEVICE_TOP_LOGPROBS,
};

use super::logits_processors::penalties_are_neutral;
use super::rng::SequenceRng;
use crate::sampling_params::SamplingParams;

/// Below this temperature a row is greedy (the CPU sampler's threshold).
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// What decides whether a row can take the device sampler, besides its parameters.
#[derive(Clone, Copy, Debug)]
pub struct RowShape {
    pub prompt_len: usize,
    /// Tokens produced so far.
    pub output_len: usize,
    pub eos_len: usize,
    /// A structured-output row (it has a grammar mask; min_tokens then holds nothing back).
    pub constrained: bool,
}

impl RowShape {
    fn min_tokens_active(&self, params: &SamplingParams) -> bool {
        self.output_len < params.min_tokens && !self.constrained
    }
}

/// Whether a row with `params` and `shape` can be sampled on the device for a vocabulary of `vocab` tokens.
pub fn device_sampleable(params: &SamplingParams, shape: RowShape, vocab: usize) -> bool {
    let in_vocab = |t: &u32| (*t as usize) < vocab;
    let stops_ok = !shape.min_tokens_active(params) || params.stop_token_ids.iter().all(in_vocab);
    params.logprobs.is_none_or(|k| k <= MAX_DEVICE_TOP_LOGPROBS)
        && params.logit_bias.iter().all(|(t, _)| in_vocab(t))
        && stops_ok
        && device_edit_bound(params, shape) <= MAX_DEVICE_TOKEN_EDITS
}

/// Upper bound of the edits [`DeviceSamplingBatch::push`] makes for a row (to check a step fits the device).
pub fn device_edit_bound(params: &SamplingParams, shape: RowShape) -> usize {
    let RowShape {
        prompt_len, output_len, eos_len, ..
    } = shape;
    let mut n = params.logit_bias.len();
    if shape.min_tokens_active(params) {
        n += eos_len + params.stop_token_ids.len();
    }
    if !penalties_are_neutral(params) {
        n += output_len
            + if params.repetition_penalty != 1.0 {
                prompt_len
            } else {
                0
            };
    }
    n
}

/// The device sampler's input for one step: a row per sampled sequence and the rows' edits. Its vocab-sized
/// scratch tables are reused across steps (touched entries are reset), so packing a row costs
/// O(bias + stops + prompt + output), like the CPU sampler's penalties.
#[derive(Default)]
pub struct DeviceSamplingBatch {
    pub rows: Vec<DeviceSampleParams>,
    pub edits: Vec<TokenEdit>,
    /// The constrained rows' allowed-token bitmasks, `mask_words(vocab)` words each (`rows[i].mask_row`).
    pub masks: Vec<u32>,
    /// Index into `edits` of each token's edit in the row being packed (`u32::MAX` = none).
    slot: Vec<u32>,
}

/// What a row being packed knows of its sequence.
pub struct RowHistory<'a> {
    pub prompt_token_ids: &'a [u32],
    pub output_token_ids: &'a [u32],
    pub eos_token_ids: &'a [u32],
}

impl DeviceSamplingBatch {
    pub fn clear(&mut self) {
        self.rows.clear();
        self.edits.clear();
        self.masks.clear();
    }

    /// Packs a device-sampleable row (see [`device_sampleable`]; ids must be inside `vocab`), taking the row's
    /// one random draw when it is not greedy.
    pub fn push(&mut self, params: &SamplingParams, history: &RowHistory, vocab: usize, rng: &mut SequenceRng) {
        self.push_masked(params, history, None, vocab, rng);
    }

    /// [`push`](Self::push) for a row that may be constrained: `allowed_tokens` is its grammar's bitmask (bit
    /// `t % 32` of word `t / 32`; tokens past its end are disallowed, words past `vocab` ignored).
    pub fn push_masked(
        &mut self,
        params: &SamplingParams,
        history: &RowHistory,
        allowed_tokens: Option<&[u32]>,
        vocab: usize,
        rng: &mut SequenceRng,
    ) {
        let mask_row = allowed_tokens.map(|mask| {
            let row = self.reserve_mask_row(vocab);
            self.set_mask(row, Some(mask), vocab);
            row
        });
        self.push_row(params, history, mask_row, vocab, rng);
    }

    /// [`push`](Self::push) for a constrained row whose mask is not known yet: returns its mask row, to be
    /// filled by [`set_mask`](Self::set_mask) before the batch is sampled (the engine waits for grammar masks
    /// only once the forward pass is running).
    pub fn push_with_late_mask(
        &mut self,
        params: &SamplingParams,
        history: &RowHistory,
        vocab: usize,
        rng: &mut SequenceRng,
    ) -> usize {
        let row = self.reserve_mask_row(vocab);
        self.push_row(params, history, Some(row), vocab, rng);
        row
    }

    /// Writes mask row `row` (from `push_with_late_mask`): `allowed_tokens` as in `push_masked`, or `None` for
    /// every token allowed (a row whose grammar failed samples unconstrained; its request fails after the step).
    pub fn set_mask(&mut self, row: usize, allowed_tokens: Option<&[u32]>, vocab: usize) {
        let words = mask_words(vocab);
        let dst = &mut self.masks[row * words..(row + 1) * words];
        match allowed_tokens {
            Some(mask) => {
                let n = mask.len().min(words);
                dst[..n].copy_from_slice(&mask[..n]);
                dst[n..].fill(0);
            }
            None => dst.fill(u32::MAX),
        }
    }

    /// A new all-disallowed mask row.
    fn reserve_mask_row(&mut self, vocab: usize) -> usize {
        let words = mask_words(vocab);
        let row = self.masks.len() / words;
        self.masks.resize((row + 1) * words, 0);
        row
    }

    fn push_row(
        &mut self,
        params: &SamplingParams,
        history: &RowHistory,
        mask_row: Option<usize>,
        vocab: usize,
        rng: &mut SequenceRng,
    ) {
        if self.slot.len() < vocab {
            self.slot.resize(vocab, u32::MAX);
        }
        let begin = self.edits.len();
        for &(token, bias) in &params.logit_bias {
            if let Some(e) = self.edit(token) {
                e.bias += bias;
            }
        }
        // As in the CPU sampler: a constrained row's grammar, not min_tokens, decides when EOS may come.
        if history.output_token_ids.len() < params.min_tokens && mask_row.is_none() {
            for &token in history.eos_token_ids.iter().chain(&params.stop_token_ids) {
                if let Some(e) = self.edit(token) {
                    e.flags |= TokenEdit::MASKED;
                }
            }
        }
        if !penalties_are_neutral(params) {
            let repetition = params.repetition_penalty != 1.0;
            for &token in history.output_token_ids {
                if let Some(e) = self.edit(token) {
                    e.count += 1;
                    if repetition {
                        e.flags |= TokenEdit::SEEN;
                    }
                }
            }
            if repetition {
                for &token in history.prompt_token_ids {
                    if let Some(e) = self.edit(token) {
                        e.flags |= TokenEdit::SEEN;
                    }
                }
            }
        }
        for e in &self.edits[begin..] {
            self.slot[e.token as usize] = u32::MAX;
        }
        let mask_row = mask_row.map_or(-1, |r| r as i32);
        let greedy = params.temperature < GREEDY_TEMPERATURE;
        // 53 random bits (all an f64 draw has) as the noise seed.
        let seed = if greedy {
            0
        } else {
            (rng.next_uniform() * (1u64 << 53) as f64) as u64
        };
        self.rows.push(DeviceSampleParams {
            temperature: if greedy { 0.0 } else { params.temperature },
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            frequency_penalty: params.frequency_penalty,
            presence_penalty: params.presence_penalty,
            top_k: params.top_k.max(0),
            num_top_logprobs: params.logprobs.map_or(-1, |k| k as i32),
            edit_begin: begin as u32,
            edit_count: (self.edits.len() - begin) as u32,
            mask_row,
            reserved: 0,
            seed,
        });
    }

    /// The row's edit of `token`, created on first use; `None` outside the vocabulary (admission rejects such
    /// ids, and `device_sampleable` keeps rows with bad parameters on the CPU sampler, which reports them).
    fn edit(&mut self, token: u32) -> Option<&mut TokenEdit> {
        let at = self.slot.get_mut(token as usize)?;
        if *at == u32::MAX {
            *at = self.edits.len() as u32;
            self.edits.push(TokenEdit {
                token,
                ..TokenEdit::default()
            });
        }
        let at = *at as usize;
        self.edits.get_mut(at)
    }
}

#[cfg(test)]
#[path = "device_sampling_tests.rs"]
mod tests;
