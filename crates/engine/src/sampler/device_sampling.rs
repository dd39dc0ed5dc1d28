//! Sampling on the backend's device: which rows qualify, and what each needs packed for the device sampler.
//!
//! A backend that samples on the GPU (see `pagedllm_kernels::cuda`) copies back one token id and one log-prob
//! per row instead of a `[rows x vocab]` logits block. It implements greedy and plain temperature sampling
//! (Gumbel-max: an exact draw from softmax(logits / T)); a row that needs anything the CPU sampler adds — bias,
//! penalties, an active min_tokens mask, min_p / top_k / top_p truncation, log-prob lists — goes to the CPU
//! sampler, and so does the whole step (one copy path per step keeps the runner simple).
//!
//! Seeds keep the one-draw-per-token contract of `SequenceRng`: a non-greedy device-sampled token takes ONE
//! uniform draw and turns it into the device's noise seed, so a seeded request is reproducible on the device
//! backend whatever its batch. (The device's noise differs from the CPU sampler's inverse-CDF draw, so the same
//! seed gives different, equally valid, samples on the two backends.)

use super::logits_processors::penalties_are_neutral;
use super::rng::SequenceRng;
use crate::sampling_params::SamplingParams;

/// Below this temperature a row is greedy (the CPU sampler's threshold).
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// One row as the device sampler takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceSampleRow {
    /// 0 = greedy.
    pub temperature: f32,
    pub seed: u64,
}

/// Whether a row with `params`, having produced `num_output_tokens`, can be sampled on the device.
pub fn device_sampleable(params: &SamplingParams, num_output_tokens: usize) -> bool {
    let greedy = params.temperature < GREEDY_TEMPERATURE;
    let truncation_off = greedy || (params.min_p <= 0.0 && params.top_p >= 1.0 && params.top_k <= 0);
    params.logprobs.is_none()
        && params.logit_bias.is_empty()
        && penalties_are_neutral(params)
        && num_output_tokens >= params.min_tokens
        && truncation_off
}

/// Packs a device-sampleable row, taking the row's one random draw when it is not greedy.
pub fn pack_device_row(params: &SamplingParams, rng: &mut SequenceRng) -> DeviceSampleRow {
    if params.temperature < GREEDY_TEMPERATURE {
        DeviceSampleRow {
            temperature: 0.0,
            seed: 0,
        }
    } else {
        // 53 random bits (all an f64 draw has) as the noise seed.
        let seed = (rng.next_uniform() * (1u64 << 53) as f64) as u64;
        DeviceSampleRow {
            temperature: params.temperature,
            seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SamplingParams {
        SamplingParams {
            temperature: 0.7,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn plain_temperature_and_greedy_rows_qualify() {
        assert!(device_sampleable(&base(), 0));
        assert!(device_sampleable(&SamplingParams::greedy(), 0));
        // Greedy ignores truncation, so it still qualifies with top_p set.
        let g = SamplingParams {
            top_p: 0.5,
            ..SamplingParams::greedy()
        };
        assert!(device_sampleable(&g, 0));
    }

    #[test]
    fn anything_the_cpu_sampler_adds_sends_the_row_to_the_cpu() {
        let cases: Vec<SamplingParams> = vec![
            SamplingParams {
                logprobs: Some(0),
                ..base()
            },
            SamplingParams {
                logit_bias: vec![(1, 2.0)],
                ..base()
            },
            SamplingParams {
                repetition_penalty: 1.1,
                ..base()
            },
            SamplingParams {
                frequency_penalty: 0.5,
                ..base()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..base()
            },
            SamplingParams { top_k: 40, ..base() },
            SamplingParams { top_p: 0.9, ..base() },
            SamplingParams { min_p: 0.1, ..base() },
        ];
        for p in &cases {
            assert!(!device_sampleable(p, 10), "{p:?}");
        }
        // min_tokens only while it is active.
        let p = SamplingParams {
            min_tokens: 3,
            ..base()
        };
        assert!(!device_sampleable(&p, 2));
        assert!(device_sampleable(&p, 3));
    }

    #[test]
    fn packing_takes_one_draw_for_sampled_rows_and_none_for_greedy() {
        let mut rng = SequenceRng::new(7);
        let g = pack_device_row(&SamplingParams::greedy(), &mut rng);
        assert_eq!((g.temperature, rng.draws()), (0.0, 0));
        let a = pack_device_row(&base(), &mut rng);
        assert_eq!(rng.draws(), 1);
        assert_eq!(a.temperature, 0.7);
        // Same seed, same packed seeds; a different stream gives a different seed.
        let mut again = SequenceRng::new(7);
        assert_eq!(pack_device_row(&base(), &mut again).seed, a.seed);
        let mut other = SequenceRng::new(8);
        assert_ne!(pack_device_row(&base(), &mut other).seed, a.seed);
        assert!(a.seed < (1u64 << 53));
    }
}
