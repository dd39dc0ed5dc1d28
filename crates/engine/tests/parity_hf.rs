//! Parity with HF transformers on the embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF).
//!
//! The fixture comes from `scripts/make_parity_fixture.py` (HF transformers loading the same GGUF in
//! float32). For every prompt: our tokenizer gives HF's prompt ids, greedy decoding gives the same 32 tokens,
//! and at every step the top-5 log-probs are within 1e-3 of HF's. Fixture loading and the
//! skip-without-the-model rule are `support/hf_fixture.rs`'s.

use pagedllm_engine::engine::{LLMEngine, Prompt, RequestInput};
use pagedllm_engine::{CpuPrecisionChoice, EngineConfig, SamplingParams};

const TOL: f64 = 1e-3;

#[path = "support/hf_fixture.rs"]
mod hf_fixture;
use hf_fixture::ids;

fn engine_or_skip() -> Option<LLMEngine> {
    // HF parity is the exact mode's contract (f32 activations); fast mode is tested against exact elsewhere.
    let config = EngineConfig {
        cpu_precision: CpuPrecisionChoice::Exact,
        ..EngineConfig::default()
    };
    hf_fixture::default_model_present()
        .then(|| LLMEngine::start("", config).expect("engine starts on the default model"))
}

fn fixture() -> serde_json::Value {
    hf_fixture::load("parity_smollm2.json")
}

#[test]
fn greedy_tokens_and_top5_logprobs_match_hf_transformers() {
    let Some(engine) = engine_or_skip() else { return };
    let fx = fixture();
    let steps = fx["steps"].as_u64().unwrap() as usize;
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);

    // Submit every case at once: they run batched, which must not change any result.
    let mut streams = Vec::new();
    for case in cases {
        let prompt_ids = ids(&case["prompt_ids"]);
        let text = case["prompt"].as_str().unwrap();
        let add_special = !case["chat"].as_bool().unwrap();
        assert_eq!(
            engine.encode(text, add_special).unwrap(),
            prompt_ids,
            "tokenization of {text:?}"
        );
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: Some(steps),
            ignore_eos: true,
            logprobs: Some(5),
            ..Default::default()
        };
        let input = RequestInput {
            request_id: None,
            prompt: Prompt::TokenIds(prompt_ids),
            params,
            priority: 0,
            cache_salt: None,
            add_special_tokens: false,
        };
        streams.push(engine.add_request(input).unwrap());
    }
    for (case, mut stream) in cases.iter().zip(streams) {
        let mut tokens = Vec::new();
        let mut logprobs = Vec::new();
        while let Some(out) = stream.blocking_next() {
            let out = out.unwrap();
            for o in out.outputs {
                tokens.extend(o.token_ids);
                logprobs.extend(o.logprobs.unwrap());
            }
        }
        let want = ids(&case["greedy_ids"]);
        assert_eq!(tokens, want, "greedy tokens for {:?}", case["prompt"]);
        for (step, (ours, theirs)) in logprobs.iter().zip(case["top5"].as_array().unwrap()).enumerate() {
            let theirs: Vec<(u32, f64)> = theirs
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap()))
                .collect();
            assert_eq!(ours.top.len(), 5);
            for (rank, &(id, lp)) in theirs.iter().enumerate() {
                match ours.top.iter().find(|t| t.token_id == id) {
                    Some(t) => assert!(
                        (t.logprob as f64 - lp).abs() < TOL,
                        "{:?} step {step}: token {id} logprob {} vs HF {lp}",
                        case["prompt"],
                        t.logprob
                    ),
                    // Only a near-tie at the edge of the top 5 may swap members.
                    None => assert!(
                        rank == 4 && (ours.top[4].logprob as f64 - lp).abs() < TOL,
                        "{:?} step {step}: HF's top-5 token {id} missing from ours",
                        case["prompt"]
                    ),
                }
            }
        }
    }
    engine.shutdown();
}
