//! Logits processors that may change the argmax, applied in vLLM V1's order before greedy/temperature:
//! logit bias, the min-tokens stop mask, then repetition / frequency / presence penalties.
//!
//! Formulas follow vLLM (`vllm/model_executor/layers/utils.py::apply_penalties`):
//! - repetition: for every token seen in prompt OR output, `l > 0 ? l / r : l * r` (applied once per token id);
//! - frequency: `l -= f * count_in_output`; presence: `l -= p` if the token occurs in the output.
//!
//! Token ids are checked against the vocabulary first, so bad input is an `EngineError`, never a panic.

use crate::error::{EngineError, Result};
use crate::sampling_params::SamplingParams;

/// Adds each `(token, bias)` to that token's logit.
pub fn apply_logit_bias(logits: &mut [f32], bias: &[(u32, f32)]) -> Result<()> {
    check_ids("logit_bias", bias.iter().map(|&(t, _)| t), logits.len())?;
    for &(token, b) in bias {
        logits[token as usize] += b;
    }
    Ok(())
}

/// While fewer than `min_tokens` tokens have been generated, EOS and the stop token ids cannot be sampled.
/// vLLM masks EOS here even when `ignore_eos` is set (its stop-id set always contains EOS).
pub fn apply_min_tokens(
    logits: &mut [f32],
    params: &SamplingParams,
    num_output_tokens: usize,
    eos_token_ids: &[u32],
) -> Result<()> {
    if num_output_tokens >= params.min_tokens {
        return Ok(());
    }
    let stops = eos_token_ids.iter().chain(&params.stop_token_ids).copied();
    check_ids("stop_token_ids", stops.clone(), logits.len())?;
    for token in stops {
        logits[token as usize] = f32::NEG_INFINITY;
    }
    Ok(())
}

/// True when `apply_penalties` would leave every logit unchanged.
pub fn penalties_are_neutral(params: &SamplingParams) -> bool {
    params.repetition_penalty == 1.0 && params.frequency_penalty == 0.0 && params.presence_penalty == 0.0
}

/// Per-thread vocab-sized tables reused across rows; only the entries a row touched are reset, so a row costs
/// O(prompt + output) here rather than O(vocab).
#[derive(Default)]
pub struct PenaltyScratch {
    output_counts: Vec<u32>,
    in_prompt: Vec<bool>,
    touched: Vec<u32>,
}

/// Repetition penalty over prompt + output tokens, then frequency and presence penalties over output tokens.
pub fn apply_penalties(
    logits: &mut [f32],
    params: &SamplingParams,
    prompt_token_ids: &[u32],
    output_token_ids: &[u32],
    scratch: &mut PenaltyScratch,
) -> Result<()> {
    if penalties_are_neutral(params) {
        return Ok(());
    }
    let vocab = logits.len();
    let repetition = params.repetition_penalty;
    check_ids("output_token_ids", output_token_ids.iter().copied(), vocab)?;
    if repetition != 1.0 {
        check_ids("prompt_token_ids", prompt_token_ids.iter().copied(), vocab)?;
    }
    let s = scratch;
    if s.output_counts.len() < vocab {
        s.output_counts.resize(vocab, 0);
        s.in_prompt.resize(vocab, false);
    }
    for &t in output_token_ids {
        let t = t as usize;
        if s.output_counts[t] == 0 {
            s.touched.push(t as u32);
        }
        s.output_counts[t] += 1;
    }
    if repetition != 1.0 {
        for &t in prompt_token_ids {
            let t = t as usize;
            if s.output_counts[t] == 0 && !s.in_prompt[t] {
                s.touched.push(t as u32);
            }
            s.in_prompt[t] = true;
        }
    }
    for &t in &s.touched {
        let t = t as usize;
        let count = s.output_counts[t];
        let mut l = logits[t];
        // Every touched token was seen in the prompt or the output.
        if repetition != 1.0 {
            l = if l > 0.0 { l / repetition } else { l * repetition };
        }
        if count > 0 {
            l -= params.frequency_penalty * count as f32;
            l -= params.presence_penalty;
        }
        logits[t] = l;
        s.output_counts[t] = 0;
        s.in_prompt[t] = false;
    }
    s.touched.clear();
    Ok(())
}

fn check_ids(field: &str, ids: impl Iterator<Item = u32>, vocab: usize) -> Result<()> {
    for t in ids {
        if t as usize >= vocab {
            return Err(EngineError::invalid(
                field,
                format!("token id {t} is outside the vocabulary (size {vocab})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashMap;

    #[test]
    fn logit_bias_adds_and_rejects_out_of_vocab_ids() {
        let mut l = vec![0.5f32, -1.0, 2.0];
        apply_logit_bias(&mut l, &[(1, 3.0), (2, -0.5)]).unwrap();
        assert_eq!(l, vec![0.5, 2.0, 1.5]);
        match apply_logit_bias(&mut l, &[(3, 1.0)]) {
            Err(EngineError::InvalidParam { field, .. }) => assert_eq!(field, "logit_bias"),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn min_tokens_masks_eos_and_stop_ids_only_until_reached() {
        let params = SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![3],
            ignore_eos: true,
            ..Default::default()
        };
        let raw = vec![1.0f32; 5];
        let mut l = raw.clone();
        apply_min_tokens(&mut l, &params, 1, &[0, 4]).unwrap();
        assert_eq!(
            l,
            vec![f32::NEG_INFINITY, 1.0, 1.0, f32::NEG_INFINITY, f32::NEG_INFINITY]
        );
        let mut l = raw.clone();
        apply_min_tokens(&mut l, &params, 2, &[0, 4]).unwrap();
        assert_eq!(l, raw);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_once_per_token() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut l = vec![4.0f32, -4.0, 4.0, -4.0, 0.0];
        // Token 0 appears three times across prompt and output: still penalised once.
        apply_penalties(&mut l, &params, &[0, 1, 0], &[0, 4], &mut PenaltyScratch::default()).unwrap();
        assert_eq!(l, vec![2.0, -8.0, 4.0, -4.0, 0.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_use_output_tokens_only() {
        let params = SamplingParams {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        };
        let mut l = vec![1.0f32; 4];
        apply_penalties(&mut l, &params, &[3, 3], &[1, 2, 1, 1], &mut PenaltyScratch::default()).unwrap();
        assert_eq!(l, vec![1.0, 1.0 - 1.5 - 0.25, 1.0 - 0.5 - 0.25, 1.0]);
    }

    #[test]
    fn bad_token_ids_are_errors_and_leave_scratch_clean() {
        let params = SamplingParams {
            repetition_penalty: 1.5,
            frequency_penalty: 1.0,
            ..Default::default()
        };
        let mut scratch = PenaltyScratch::default();
        let mut l = vec![1.0f32; 4];
        assert!(apply_penalties(&mut l, &params, &[9], &[1], &mut scratch).is_err());
        assert!(apply_penalties(&mut l, &params, &[1], &[9], &mut scratch).is_err());
        assert_eq!(l, vec![1.0; 4]);
        apply_penalties(&mut l, &params, &[], &[2], &mut scratch).unwrap();
        assert_eq!(l, vec![1.0, 1.0, 1.0 / 1.5 - 1.0, 1.0]);
    }

    /// Randomised check against a direct transcription of the formulas, reusing one scratch across rows (so a
    /// missed reset would corrupt later rows).
    #[test]
    fn penalties_match_naive_formulas_on_random_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut scratch = PenaltyScratch::default();
        for _ in 0..200 {
            let vocab = rng.random_range(1..60usize);
            let logits: Vec<f32> = (0..vocab).map(|_| rng.random_range(-5.0f32..5.0)).collect();
            let prompt: Vec<u32> = (0..rng.random_range(0..30))
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            let output: Vec<u32> = (0..rng.random_range(0..30))
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            let params = SamplingParams {
                repetition_penalty: rng.random_range(0.5f32..2.0),
                frequency_penalty: rng.random_range(-2.0f32..2.0),
                presence_penalty: rng.random_range(-2.0f32..2.0),
                ..Default::default()
            };
            let mut got = logits.clone();
            apply_penalties(&mut got, &params, &prompt, &output, &mut scratch).unwrap();

            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in &output {
                *counts.entry(t).or_default() += 1;
            }
            for (t, &l) in logits.iter().enumerate() {
                let t32 = t as u32;
                let mut want = l;
                if prompt.contains(&t32) || output.contains(&t32) {
                    let r = params.repetition_penalty;
                    want = if want > 0.0 { want / r } else { want * r };
                }
                if let Some(&c) = counts.get(&t32) {
                    want -= params.frequency_penalty * c as f32;
                    want -= params.presence_penalty;
                }
                assert_eq!(got[t], want, "token {t}");
            }
        }
    }
}
