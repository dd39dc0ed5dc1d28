//! What the GPU sampler takes per logits row and gives back (the layouts mirror `kernels/sampling.cu`).
//!
//! Compiled with or without the `cuda` feature, so the engine packs rows without a `cfg`. The engine turns a
//! request's `SamplingParams` and token history into one [`DeviceSampleParams`] and a run of [`TokenEdit`]s
//! (logit bias, min_tokens mask and penalties merged per token), and a structured-output row its grammar's
//! allowed-token bitmask (llguidance's layout: bit `t % 32` of word `t / 32`, [`mask_words`] words per row);
//! the GPU returns a [`DeviceSample`] per row.

/// Log-prob list lengths the GPU sampler serves (the engine's `MAX_LOGPROBS`).
pub const MAX_DEVICE_TOP_LOGPROBS: usize = 20;

/// Edits one step may carry across all rows (the edit buffer is allocated once at load).
pub const MAX_DEVICE_TOKEN_EDITS: usize = 1 << 20;

/// u32 words of one row's allowed-token bitmask for a vocabulary of `vocab` tokens.
pub fn mask_words(vocab: usize) -> usize {
    vocab.div_ceil(32)
}

/// One row's sampling parameters (`SampleParams` in sampling.cu, 56 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceSampleParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// 0 = off.
    pub top_k: i32,
    /// Length of the top log-prob list; -1 = no log-probs asked (the rank is not computed either).
    pub num_top_logprobs: i32,
    /// This row's edits: `edits[edit_begin .. edit_begin + edit_count]`.
    pub edit_begin: u32,
    pub edit_count: u32,
    /// This row's allowed-token bitmask: `masks[mask_row * mask_words(vocab) ..][.. mask_words(vocab)]`;
    /// -1 = unconstrained. Every token it disallows gets -inf before anything else (the raw distribution,
    /// and so the log-probs, are the masked ones, as in the CPU sampler).
    pub mask_row: i32,
    /// Keeps the layout free of implicit padding (the struct is copied to the GPU byte for byte).
    pub reserved: u32,
    /// Noise seed of a sampled row (unused when greedy).
    pub seed: u64,
}

impl Default for DeviceSampleParams {
    fn default() -> Self {
        DeviceSampleParams {
            temperature: 0.0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            top_k: 0,
            num_top_logprobs: -1,
            edit_begin: 0,
            edit_count: 0,
            mask_row: -1,
            reserved: 0,
            seed: 0,
        }
    }
}

/// Everything that happens to one token's logit before sampling (`TokenEdit` in sampling.cu, 20 bytes), in
/// the CPU sampler's order: `+ bias`, then `-inf` if masked, then the repetition penalty if seen, then
/// `- frequency * count - presence` if `count > 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenEdit {
    pub token: u32,
    pub bias: f32,
    /// Occurrences in the output so far.
    pub count: u32,
    /// [`TokenEdit::MASKED`] | [`TokenEdit::SEEN`].
    pub flags: u32,
    /// Filled on the GPU: the raw logit before the edit.
    pub raw: f32,
}

impl TokenEdit {
    /// Cannot be sampled yet (min_tokens: EOS and stop ids).
    pub const MASKED: u32 = 1;
    /// Occurs in the prompt or the output (the repetition penalty applies).
    pub const SEEN: u32 = 2;
}

/// One sampled row.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSample {
    pub token: u32,
    /// Log-prob of `token` under the raw (unprocessed) distribution.
    pub logprob: f32,
    /// 1-based rank of `token` in the raw distribution (ties share the worse rank); 0 when not asked.
    pub rank: u32,
    /// The `num_top_logprobs` most likely raw tokens, by descending log-prob, ties by lower id.
    pub top_logprobs: Vec<(u32, f32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_structs() {
        assert_eq!(std::mem::size_of::<DeviceSampleParams>(), 56);
        assert_eq!(std::mem::align_of::<DeviceSampleParams>(), 8);
        assert_eq!(std::mem::size_of::<TokenEdit>(), 20);
    }
}
