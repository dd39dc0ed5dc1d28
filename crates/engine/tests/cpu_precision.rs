//! Fast (int8 activations) vs exact (f32 activations) CPU precision on the default model (SmolLM2-135M-Instruct
//! Q4_1): greedy decoding of 32 prompts x 32 tokens, counting every token after a prompt's first divergence as a
//! disagreement; the log-prob differences of the tokens both modes chose (same context) are printed.
//!
//! Two measures of agreement, both asserted. Teacher-forced top-1: exact's greedy continuation is prefilled in
//! fast mode and each of its 1,024 tokens counts if fast mode ranks it first on the same context — issue 14's
//! 0.95 bar applies to this one; measured 2026-12-03 (Xeon, AVX-512 VNNI, packed-tile kernels) 0.9629 (986 of
//! 1024), exact mode's own prefill scoring its decode tokens 1.0000. Prefix-matched free-running greedy (every
//! token after a prompt's first divergence counts as disagreeing, so one near-tie flip costs the rest of the
//! prompt): 0.60 here with the packed kernels (0.72 with the file-layout ones, 0.66 on the AVX2 EPYC machine);
//! it moves by a tenth when one early near-tie flips, so it is guarded at 0.5; chosen-token |Δ log-prob| mean
//! 0.033, max 0.22.
//! A kernel bug drops both to near 0. Skipped locally without the model, a failure under CI.

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

/// Per prompt: its token ids, the greedy tokens and each chosen token's log-prob, in one batched run.
fn greedy(precision: CpuPrecisionChoice) -> Vec<(Vec<u32>, Vec<u32>, Vec<f32>)> {
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
        let (mut prompt, mut tokens, mut lps) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(out) = stream.blocking_next() {
            let out = out.unwrap();
            if let Some(ids) = out.prompt_token_ids {
                prompt = ids;
            }
            for o in out.outputs {
                tokens.extend(o.token_ids);
                lps.extend(o.logprobs.unwrap().into_iter().map(|l| l.logprob));
            }
        }
        assert_eq!(tokens.len(), TOKENS);
        all.push((prompt, tokens, lps));
    }
    engine.shutdown();
    all
}

/// Teacher-forced top-1 agreement: each prompt followed by `continuations[i]` (exact mode's greedy tokens) is
/// prefilled in `precision`, and every continuation token that is that mode's own top-1 at its position (the same
/// context as exact had) counts as agreeing. Requests run one at a time so each prefill (< 64 tokens) takes the
/// same decode-size kernels as generation would (a batched prefill of every prompt would take the GEMM path).
fn teacher_forced_top1(precision: CpuPrecisionChoice, runs: &[(Vec<u32>, Vec<u32>, Vec<f32>)]) -> (usize, usize) {
    let config = EngineConfig { cpu_precision: precision, ..EngineConfig::default() };
    let engine = LLMEngine::start("", config).expect("engine starts on the default model");
    let (mut agree, mut total) = (0, 0);
    for (prompt, cont, _) in runs {
        let ids: Vec<u32> = prompt.iter().chain(cont).copied().collect();
        assert!(ids.len() <= 64, "a teacher-forced prompt of {} tokens would leave the decode kernels", ids.len());
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: Some(1),
            prompt_logprobs: Some(0),
            ..Default::default()
        };
        let input = RequestInput {
            request_id: None,
            prompt: Prompt::TokenIds(ids),
            params,
            priority: 0,
            cache_salt: None,
            add_special_tokens: false,
        };
        let mut stream = engine.add_request(input).unwrap();
        while let Some(out) = stream.blocking_next() {
            if let Some(lps) = out.unwrap().prompt_logprobs {
                for p in lps[prompt.len()..].iter() {
                    total += 1;
                    agree += (p.as_ref().expect("a logprob per continuation token").rank == 1) as usize;
                }
            }
        }
    }
    engine.shutdown();
    (agree, total)
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
    for ((_, et, el), (_, ft, fl)) in exact.iter().zip(&fast) {
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
    // Per-token agreement on the same context: the share of exact's greedy tokens that fast mode also ranks first
    // (teacher-forced), beside exact mode's own figure for the same measurement (its prefill and decode kernels
    // round differently, so near-ties flip there too: the floor any other kernel can be held to).
    let (tf_agree, tf_total) = teacher_forced_top1(CpuPrecisionChoice::Fast, &exact);
    let (self_agree, _) = teacher_forced_top1(CpuPrecisionChoice::Exact, &exact);
    let tf = tf_agree as f64 / tf_total as f64;
    let own = self_agree as f64 / tf_total as f64;
    eprintln!(
        "teacher-forced top-1 agreement with exact's greedy tokens: fast {tf:.4} ({tf_agree} of {tf_total}), exact \
         itself {own:.4} ({self_agree} of {tf_total})"
    );
    assert_eq!(tf_total, PROMPTS.len() * TOKENS);
    assert!(tf >= 0.95, "teacher-forced agreement {tf:.4} is below issue 14's 0.95");
    assert!(rate >= 0.5, "greedy agreement {rate:.4} fell below 0.5 (measured 0.60-0.72)");
    assert!(mean < 0.05 && max < 0.5, "log-prob differences grew: mean {mean}, max {max}");
}
