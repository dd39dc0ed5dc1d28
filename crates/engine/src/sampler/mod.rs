//! The sampler: turns one row of raw logits per sequence into the next token, following vLLM V1's sampler
//! semantics (logit bias, min_tokens, repetition/frequency/presence penalties, greedy, temperature, min_p,
//! top_k, top_p) and returning log-probs of the RAW model distribution. Pure Rust on the CPU; `device_sampling`
//! packs the same work for a backend that samples on its GPU.
//!
//! Reproducibility: every sequence owns a `SequenceRng`, and a non-greedy token costs exactly one draw from
//! it, so a seeded request's tokens do not depend on the rest of its batch.

pub mod device_sampling;
pub mod logits_processors;
pub mod logprobs;
pub mod rng;
#[allow(clippy::module_inception)]
pub mod sampler;
pub mod top_k_top_p;

pub use device_sampling::{device_edit_bound, device_sampleable, DeviceSamplingBatch, RowHistory, RowShape};
pub use logprobs::{log_softmax_top_n, prompt_logprobs, PromptTokenLogprob};
pub use rng::SequenceRng;
pub use sampler::{sample_batch, sample_row, SampleRow, SampledToken};
