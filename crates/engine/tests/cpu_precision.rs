//! Fast (int8 activations) vs exact (f32 activations) CPU precision on the default model (SmolLM2-135M-Instruct
//! Q4_1): greedy decoding of 32 prompts x 32 tokens, counting every token after a prompt's first divergence as a
//! disagreement; the log-prob differences of the tokens both modes chose (same context) are printed.
//!
//! Issue 14's bar is 0.95 agreement. Measured here (2026-12-02, AVX2 kernels): 0.6602 (676 of 1024), chosen-token
//! |Δ log-prob| mean 0.0271, max 0.2274 — the bar is NOT met, which is why `exact` stays the default. Until it is,
//! this test guards the measured level (a kernel bug drops agreement to near 0 and the log-prob error to whole
//! nats) rather than asserting a bar that fails. Skipped locally without the model, a failure under CI.

use std::path::Path;

use pagedllm_engine::engine::{LLMEngine, Prompt, RequestInput};
use pagedllm_engine::{CpuPrecisionChoice, EngineConfig, SamplingParams};

const TOKENS: usize = 32;

const PROMPTS: [&str; 32] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "My favorite book is",
    "The quick brown fox",
    "In 1969, the first humans",
    "To make a cup of tea, you first",
    "The largest planet in the solar system is",
    "Photosynthesis is the process by which",
    "A good way to learn a new language is",
    "The stock market today",
    "Here is a list of fruits: apple,",
    "The meaning of life is",
    "SELECT name FROM users WHERE",
    "The weather in London is usually",
    "Dear hiring manager, I am writing to",
    "The mitochondria is",
    "1, 2, 3, 4, 5,",
    "The best way to cook pasta is",
    "Shakespeare wrote many plays, including",
    "An electric car works by",
    "The Pacific Ocean is",
    "import numpy as np\n",
    "The human heart has four chambers:",
    "Climate change is caused by",
    "My dog likes to",
    "The recipe calls for two cups of",
    "Mount Everest is located in",
    "The history of the Roman Empire",
    "Q: What is 12 times 12?\nA:",
];

/// Greedy tokens and each chosen token's log-prob, per prompt, in one batched run.
fn greedy(precision: CpuPrecisionChoice) -> Vec<(Vec<u32>, Vec<f32>)> {
    let config = EngineConfig { cpu_precision: precision, ..EngineConfig::default() };
    let engine = LLMEngine::start("", config).expect("engine starts on the default model");
    assert_eq!(
        engine.model_info().cpu_precision,
        match precision {
            CpuPrecisionChoice::Fast => "fast",
            CpuPrecisionChoice::Exact => "exact",
        }
    );
    let streams: Vec<_> = PROMPTS
        .iter()
        .map(|p| {
            let params = SamplingParams {
                temperature: 0.0,
                max_tokens: Some(TOKENS),
                ignore_eos: true,
                logprobs: Some(0),
                ..Default::default()
            };
            let input = RequestInput {
                request_id: None,
                prompt: Prompt::Text(p.to_string()),
                params,
                priority: 0,
                cache_salt: None,
                add_special_tokens: true,
            };
            engine.add_request(input).unwrap()
        })
        .collect();
    let mut all = Vec::new();
    for mut stream in streams {
        let (mut tokens, mut lps) = (Vec::new(), Vec::new());
        while let Some(out) = stream.blocking_next() {
            for o in out.unwrap().outputs {
                tokens.extend(o.token_ids);
                lps.extend(o.logprobs.unwrap().into_iter().map(|l| l.logprob));
            }
        }
        assert_eq!(tokens.len(), TOKENS);
        all.push((tokens, lps));
    }
    engine.shutdown();
    all
}

#[test]
fn fast_mode_agrees_with_exact_on_greedy_tokens() {
    let path = pagedllm_engine::loader::default_model_path();
    if !Path::new(&path).exists() {
        assert!(std::env::var_os("CI").is_none(), "default model missing at {} under CI", path.display());
        eprintln!("skipping: default model not found at {}", path.display());
        return;
    }
    let exact = greedy(CpuPrecisionChoice::Exact);
    let fast = greedy(CpuPrecisionChoice::Fast);
    let (mut agree, mut diffs) = (0usize, Vec::new());
    for ((et, el), (ft, fl)) in exact.iter().zip(&fast) {
        // Up to the first divergence the contexts are identical, so the log-probs are comparable.
        let same = et.iter().zip(ft).take_while(|(a, b)| a == b).count();
        agree += same;
        diffs.extend((0..same).map(|i| (el[i] - fl[i]).abs()));
    }
    let rate = agree as f64 / (PROMPTS.len() * TOKENS) as f64;
    let max = diffs.iter().cloned().fold(0.0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len().max(1) as f32;
    eprintln!(
        "fast vs exact: greedy agreement {rate:.4} ({agree} of {} tokens, prefix-matched); chosen-token log-prob \
         |diff| max {max:.4} mean {mean:.5} over {} tokens",
        PROMPTS.len() * TOKENS,
        diffs.len()
    );
    assert!(rate >= 0.6, "greedy agreement {rate:.4} fell below the measured 0.66 level");
    assert!(mean < 0.05 && max < 0.5, "log-prob differences grew: mean {mean}, max {max}");
}
