//! CPU parity with HF transformers (float32) for every model family the one model definition serves.
//!
//! Fixtures: `tests/fixtures/families/<family>/` — a tiny random-weight checkpoint of the family's config
//! (scaled down: 2 layers, hidden 64, vocab 512, Mistral's window 8; safetensors in f32 + config.json) and HF's references for
//! random token-id prompts in `hf_peer.py`'s format (`ref-fp32.json`), made on the GPU machine by
//! `scripts/gpu/make_family_models.py tiny` (`scripts/gpu/device-run.sh families`). Per prompt: the engine's
//! greedy continuation equals HF's for all 32 steps, and the teacher-forced log-prob of every token (prompt +
//! HF's continuation, scored with `prompt_logprobs`) is within 1e-3 of HF's.

use std::path::PathBuf;

use pagedllm_engine::engine::{LLMEngine, Prompt, RequestInput, RequestStream};
use pagedllm_engine::{CpuPrecisionChoice, EngineConfig, SamplingParams};
use serde::Deserialize;

const TOL: f64 = 1e-3;

#[derive(Deserialize)]
struct Reference {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    prompt_logprobs: Vec<Option<f64>>,
    greedy_logprobs: Vec<f64>,
}

fn fixture_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(family)
}

fn submit(engine: &LLMEngine, ids: Vec<u32>, params: SamplingParams) -> RequestStream {
    engine
        .add_request(RequestInput {
            request_id: None,
            prompt: Prompt::TokenIds(ids),
            params,
            priority: 0,
            cache_salt: None,
            add_special_tokens: false,
        })
        .expect("request accepted")
}

fn check_family(family: &str) {
    let dir = fixture_dir(family);
    let text = std::fs::read_to_string(dir.join("ref-fp32.json"))
        .unwrap_or_else(|e| panic!("{family}: fixture missing ({e}); make it with scripts/gpu/make_family_models.py"));
    let reference: Reference = serde_json::from_str(&text).unwrap();
    let config = EngineConfig {
        kv_cache_bytes: 16 << 20,
        // HF parity is the exact mode's contract.
        cpu_precision: CpuPrecisionChoice::Exact,
        ..EngineConfig::default()
    };
    let engine = LLMEngine::start(dir.to_str().unwrap(), config).unwrap_or_else(|e| panic!("{family}: {e}"));
    // Everything at once: batching must not change any result.
    let mut greedy = Vec::new();
    let mut scored = Vec::new();
    for item in &reference.items {
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: Some(item.greedy.len()),
            ignore_eos: true,
            ..Default::default()
        };
        greedy.push(submit(&engine, item.prompt.clone(), params));
        let full: Vec<u32> = item.prompt.iter().chain(&item.greedy).copied().collect();
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: Some(1),
            prompt_logprobs: Some(1),
            ..Default::default()
        };
        scored.push(submit(&engine, full, params));
    }
    for (i, (item, (mut g, mut s))) in reference.items.iter().zip(greedy.into_iter().zip(scored)).enumerate() {
        let mut tokens = Vec::new();
        while let Some(out) = g.blocking_next() {
            for o in out.unwrap().outputs {
                tokens.extend(o.token_ids);
            }
        }
        assert_eq!(tokens, item.greedy, "{family} prompt {i}: greedy tokens differ from HF's");
        let mut ours = Vec::new();
        while let Some(out) = s.blocking_next() {
            if let Some(p) = out.unwrap().prompt_logprobs {
                ours = p.into_iter().skip(1).map(|x| x.map(|x| x.logprob as f64)).collect();
            }
        }
        let theirs: Vec<f64> = item
            .prompt_logprobs
            .iter()
            .skip(1)
            .map(|x| x.unwrap())
            .chain(item.greedy_logprobs.iter().copied())
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{family} prompt {i}: scored positions");
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a.expect("a log-prob for every prompt token after the first") - b).abs())
            .fold(0.0, f64::max);
        println!("{family} prompt {i}: 32 greedy tokens equal, max |dlogprob| {worst:.2e}");
        assert!(worst < TOL, "{family} prompt {i}: teacher-forced log-probs differ by {worst:.3e}");
    }
    engine.shutdown();
}

#[test]
fn llama_matches_hf_float32() {
    check_family("llama");
}

#[test]
fn qwen2_matches_hf_float32() {
    check_family("qwen2");
}

#[test]
fn qwen3_matches_hf_float32() {
    check_family("qwen3");
}

/// Sliding window 8 with 12-token prompts and 32 greedy steps: most positions see only part of their context.
#[test]
fn mistral_sliding_window_matches_hf_float32() {
    check_family("mistral");
}

/// Gemma 2: `(1 + w)` sandwich norms, sqrt(hidden) embedding scale, GELU-tanh GLU, `query_pre_attn_scalar`,
/// attention soft-cap 50 and final-logit soft-cap 30, sliding window 8 on layer 0 and global attention on layer 1.
#[test]
fn gemma2_matches_hf_float32() {
    check_family("gemma2");
}

/// Gemma 3 text: as Gemma 2 without soft-caps, plus `(1 + w)` qk-norm, and two RoPE tables: local layer 0
/// (window 8, base 1e4) and global layer 1 (base 1e6, linear scaling x4).
#[test]
fn gemma3_matches_hf_float32() {
    check_family("gemma3");
}
