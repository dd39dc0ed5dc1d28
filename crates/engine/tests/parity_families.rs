//! CPU parity with HF transformers (float32) for every model family the one model definition serves.
//!
//! Fixtures: `tests/fixtures/families/<family>/` — a tiny random-weight checkpoint of the family's config
//! (scaled down: 2 layers, hidden 64, vocab 512, the windows 8; safetensors in f32 + config.json) and HF's references for
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
    check_reference(family, "ref-fp32.json", None);
}

/// The references in `file` of `family`'s fixture, on an engine limited to `max_model_len` when given.
fn check_reference(family: &str, file: &str, max_model_len: Option<usize>) {
    let dir = fixture_dir(family);
    let text = std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{family}: fixture missing ({e}); make it with scripts/gpu/make_family_models.py"));
    let reference: Reference = serde_json::from_str(&text).unwrap();
    let config = EngineConfig {
        kv_cache_bytes: 16 << 20,
        max_model_len,
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
        println!(
            "{family} {file} prompt {i}: {} greedy tokens equal, max |dlogprob| {worst:.2e}",
            item.greedy.len()
        );
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

/// Phi-3 / Phi-4-mini: fused `qkv_proj` and `gate_up_proj`, partial rotary (12 of 16 dims), sliding window 8 and
/// LongRoPE with original context 8 and an attention factor of sqrt(1 + ln 32 / ln 8). The 12-token prompts are
/// past the original context, so HF runs on the long factors throughout, as the engine does when its
/// max_model_len (here the model's 256) exceeds it.
#[test]
fn phi3_longrope_long_factors_match_hf_float32() {
    check_reference("phi3", "ref-fp32.json", None);
}

/// The short factors: sequences of at most 8 tokens (3-token prompts, 5 steps), where HF stays on the short
/// list, on an engine whose max_model_len of 8 keeps it there too.
#[test]
fn phi3_longrope_short_factors_match_hf_float32() {
    let dir = fixture_dir("phi3");
    let short: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ref-fp32-short.json")).unwrap()).unwrap();
    let len = short["max_model_len"].as_u64().expect("max_model_len in the short reference") as usize;
    assert_eq!(len, 8, "the fixture's original_max_position_embeddings");
    check_reference("phi3", "ref-fp32-short.json", Some(len));
}

/// Qwen3-MoE: qk-norm, and in both layers a sparse MLP of 4 experts (intermediate 32), 2 per token, routed by
/// softmax top-k renormalized to sum 1 (`norm_topk_prob`).
#[test]
fn qwen3_moe_matches_hf_float32() {
    check_family("qwen3_moe");
}

/// Qwen2-MoE: q/k/v bias, top-2 of 4 experts without renormalization plus a shared expert (intermediate 48)
/// behind a sigmoid gate on layer 0; layer 1 is dense (`mlp_only_layers = [1]`).
#[test]
fn qwen2_moe_matches_hf_float32() {
    check_family("qwen2_moe");
}
