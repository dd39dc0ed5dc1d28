//! The request sets `pagedllm-bench throughput` can offer besides the fixed-shape random batch, and the one
//! measurement loop they all share.
//!
//! - `sharegpt`: `--requests` requests whose prompt and output lengths are drawn (fixed seed) from log-normal
//!   distributions with means 215 and 198 tokens (what `vllm bench` reports for ShareGPT on Llama-3: 1000 requests,
//!   ~215k prompt and ~198k output tokens), sigma 1.0 (ShareGPT's lengths span about two orders of magnitude),
//!   clipped to [4, 2048]. Token ids are random: the shape of the load, not its text, is what is measured.
//! - `shared-prefix`: `--requests` requests that share one `--prefix-len`-token prefix, each with its own
//!   `--suffix-len`-token suffix: the prefix cache's case (compare with `--no-prefix-caching`).
//!
//! Every request is submitted at once (vLLM's offline throughput benchmark); greedy, EOS ignored, so each
//! generates exactly its output length.

use std::time::Instant;

use pagedllm_engine::engine::LLMEngine;
use pagedllm_engine::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use serde_json::json;

use crate::{alloc_count, settled_stats, submit_token_ids};

/// One request of a workload: prompt token ids and how many tokens it generates.
pub struct Offered {
    pub prompt: Vec<u32>,
    pub output_len: usize,
}

/// Random ids from the ordinary part of the vocabulary (ids < 100 are special in most vocabularies).
pub fn random_prompt(rng: &mut impl Rng, len: usize, vocab: u32) -> Vec<u32> {
    (0..len).map(|_| rng.random_range(100..vocab)).collect()
}

/// Log-normal lengths with mean `mean` and log-space sigma `sigma`, clipped to `[lo, hi]`.
fn lognormal_len(rng: &mut impl Rng, mean: f64, sigma: f64, lo: usize, hi: usize) -> usize {
    // E[X] = exp(mu + sigma^2 / 2).
    let mu = mean.ln() - sigma * sigma / 2.0;
    let d = LogNormal::new(mu, sigma).expect("valid log-normal");
    (d.sample(rng).round() as usize).clamp(lo, hi)
}

/// The ShareGPT-shaped request set (see the module doc); `max_model_len` caps prompt + output.
pub fn sharegpt(requests: usize, vocab: u32, max_model_len: usize, seed: u64) -> Vec<Offered> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..requests)
        .map(|_| {
            let input = lognormal_len(&mut rng, 215.0, 1.0, 4, 2048);
            let output = lognormal_len(&mut rng, 198.0, 1.0, 4, 2048);
            let input = input.min(max_model_len.saturating_sub(4));
            let output = output.min(max_model_len - input);
            Offered {
                prompt: random_prompt(&mut rng, input, vocab),
                output_len: output,
            }
        })
        .collect()
}

/// `requests` prompts sharing one `prefix_len`-token prefix, each with its own `suffix_len`-token suffix.
pub fn shared_prefix(requests: usize, prefix_len: usize, suffix_len: usize, output_len: usize, vocab: u32, seed: u64) -> Vec<Offered> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let prefix = random_prompt(&mut rng, prefix_len, vocab);
    (0..requests)
        .map(|_| {
            let mut prompt = prefix.clone();
            prompt.extend(random_prompt(&mut rng, suffix_len, vocab));
            Offered { prompt, output_len }
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}

/// Submits every request at once and waits for all: wall time, tokens/s, TTFT and TPOT percentiles, where the
/// engine thread's time went per step, KV waste over the run, heap allocations per step.
pub fn run_requests(engine: &LLMEngine, offered: Vec<Offered>) -> serde_json::Value {
    let num_requests = offered.len();
    let prompt_tokens: usize = offered.iter().map(|o| o.prompt.len()).sum();
    let stats0 = settled_stats(engine);
    let allocs0 = alloc_count::allocations();
    let start = Instant::now();
    let mut streams: Vec<_> = offered
        .into_iter()
        .map(|o| {
            let params = SamplingParams {
                temperature: 0.0,
                max_tokens: Some(o.output_len),
                ignore_eos: true,
                ..Default::default()
            };
            submit_token_ids(engine, o.prompt, params).expect("request accepted")
        })
        .collect();
    let (mut ttft, mut tpot) = (Vec::with_capacity(num_requests), Vec::with_capacity(num_requests));
    let mut generated = 0usize;
    for s in &mut streams {
        let mut mine = 0usize;
        while let Some(out) = s.blocking_next() {
            let out = out.expect("request succeeds");
            mine += out.outputs.iter().map(|o| o.token_ids.len()).sum::<usize>();
            // The last delta carries the request's timings (epoch seconds, stamped by the engine thread).
            if let Some(m) = &out.metrics {
                let first = m.first_token_time.unwrap_or(m.arrival_time);
                ttft.push(first - m.arrival_time);
                if let (Some(done), true) = (m.finished_time, mine > 1) {
                    tpot.push((done - first) / (mine - 1) as f64);
                }
            }
        }
        generated += mine;
    }
    let wall = start.elapsed().as_secs_f64();
    let stats1 = settled_stats(engine);
    let allocs = alloc_count::allocations() - allocs0;
    let engine_steps = stats1.steps - stats0.steps;
    let steps = engine_steps.max(1) as f64;
    let per_step_ms = step_phase_ms(&stats0, &stats1);
    let held = stats1.kv_slot_steps_held - stats0.kv_slot_steps_held;
    let unused = stats1.kv_slot_steps_unused - stats0.kv_slot_steps_unused;
    ttft.sort_by(f64::total_cmp);
    tpot.sort_by(f64::total_cmp);
    let last_first_token = ttft.last().copied().unwrap_or(0.0);
    // Decode phase: from the moment every request has its first token to the end.
    let decode_tokens = generated.saturating_sub(num_requests);
    let decode_time = (wall - last_first_token).max(1e-9);
    json!({
        "requests": num_requests,
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated,
        "wall_s": wall,
        "requests_per_s": num_requests as f64 / wall,
        "output_tokens_per_s": generated as f64 / wall,
        "total_tokens_per_s": (generated + prompt_tokens) as f64 / wall,
        "decode_tokens_per_s": decode_tokens as f64 / decode_time,
        "ttft_p50_s": percentile(&ttft, 0.5),
        "ttft_p90_s": percentile(&ttft, 0.9),
        "ttft_max_s": last_first_token,
        "tpot_p50_s": percentile(&tpot, 0.5),
        "tpot_p90_s": percentile(&tpot, 0.9),
        "prefix_cache_hit_tokens": stats1.prefix_cache_hits - stats0.prefix_cache_hits,
        "num_preemptions": stats1.num_preemptions - stats0.num_preemptions,
        // Time-weighted share of the running requests' KV slots that held no token (the paper's waste).
        "kv_waste_share": if held > 0 { unused as f64 / held as f64 } else { 0.0 },
        "engine_steps": engine_steps,
        "step_phase_ms": per_step_ms,
        // Whole process: the engine thread's and this consumer's (prompts, streams, received deltas).
        "process_allocations_per_step": allocs as f64 / steps,
    })
}

/// Engine-thread milliseconds per step in each phase (`EngineStats::step_phase_seconds`) between two snapshots.
pub(crate) fn step_phase_ms(
    stats0: &pagedllm_engine::engine::EngineStats,
    stats1: &pagedllm_engine::engine::EngineStats,
) -> serde_json::Value {
    let steps = (stats1.steps - stats0.steps).max(1) as f64;
    let (p0, p1) = (&stats0.step_phase_seconds, &stats1.step_phase_seconds);
    let ms = |a: f64, b: f64| (b - a) * 1e3 / steps;
    json!({
        "schedule": ms(p0.schedule, p1.schedule),
        "prepare": ms(p0.prepare, p1.prepare),
        "launch": ms(p0.launch, p1.launch),
        "masks": ms(p0.masks, p1.masks),
        "wait": ms(p0.wait, p1.wait),
        "host_sampling": ms(p0.host_sampling, p1.host_sampling),
        "update": ms(p0.update, p1.update),
        "outputs": ms(p0.outputs, p1.outputs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharegpt_lengths_have_the_asked_means_and_bounds() {
        let set = sharegpt(4000, 32000, 4096, 7);
        let mean = |f: &dyn Fn(&Offered) -> usize| set.iter().map(f).sum::<usize>() as f64 / set.len() as f64;
        let (input, output) = (mean(&|o| o.prompt.len()), mean(&|o| o.output_len));
        // Clipping at 2048 takes a little off the top and 4 adds a little at the bottom: within 10%.
        assert!((input - 215.0).abs() < 21.5, "mean prompt {input}");
        assert!((output - 198.0).abs() < 19.8, "mean output {output}");
        assert!(set.iter().all(|o| (4..=2048).contains(&o.prompt.len()) && (4..=2048).contains(&o.output_len)));
        // Fixed seed: the same set every run.
        let again = sharegpt(4000, 32000, 4096, 7);
        assert!(set.iter().zip(&again).all(|(a, b)| a.prompt == b.prompt && a.output_len == b.output_len));
        // max_model_len caps prompt + output.
        assert!(sharegpt(500, 32000, 256, 1).iter().all(|o| o.prompt.len() + o.output_len <= 256));
    }

    #[test]
    fn shared_prefix_requests_share_exactly_the_prefix() {
        let set = shared_prefix(8, 64, 16, 4, 32000, 3);
        assert!(set.iter().all(|o| o.prompt.len() == 80 && o.prompt[..64] == set[0].prompt[..64]));
        assert!(set[1..].iter().all(|o| o.prompt[64..] != set[0].prompt[64..]));
    }
}
