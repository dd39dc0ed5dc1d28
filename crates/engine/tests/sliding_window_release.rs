//! KV blocks released behind the sliding window (`kv/sliding_window.rs`) on the tiny family fixtures of
//! `parity_families.rs` (window 8, 12-token prompts, 32 greedy steps from HF in `ref-fp32.json`), CPU exact mode.
//!
//! With 4-token blocks one sequence of 44 tokens would hold 11 blocks; Mistral (every layer windowed) holds at
//! most `ceil(8 / 4) + 1 = 3` while it decodes, and its greedy tokens stay HF's, also with chunked prefill and
//! all prompts batched. Forks (`n = 2`) and beam search on released tables give the same tokens as with 64-token
//! blocks, where nothing is ever released (a 44-token context never leaves its first block's window). Gemma 2
//! (window on layer 0, global attention on layer 1) must release nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pagedllm_engine::engine::{EngineStats, LLMEngine, Prompt, RequestInput};
use pagedllm_engine::{BeamSearchParams, CpuPrecisionChoice, EngineConfig, SamplingParams};
use serde::Deserialize;

const WINDOW: usize = 8;

#[derive(Deserialize)]
struct Reference {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
}

fn fixture(family: &str) -> (String, Vec<Item>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(family);
    let text = std::fs::read_to_string(dir.join("ref-fp32.json")).expect("fixture present");
    let reference: Reference = serde_json::from_str(&text).unwrap();
    (dir.to_str().unwrap().to_string(), reference.items)
}

fn engine(dir: &str, block_size: usize, max_num_batched_tokens: usize) -> LLMEngine {
    let config = EngineConfig {
        kv_cache_bytes: 16 << 20,
        block_size,
        max_num_batched_tokens,
        cpu_precision: CpuPrecisionChoice::Exact,
        ..EngineConfig::default()
    };
    LLMEngine::start(dir, config).unwrap()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        ..Default::default()
    }
}

/// Submits every prompt at once and returns each request's tokens per sample (deltas gathered by `index`).
fn run(engine: &LLMEngine, prompts: &[(Vec<u32>, SamplingParams)]) -> Vec<Vec<Vec<u32>>> {
    let streams: Vec<_> = prompts
        .iter()
        .map(|(ids, params)| {
            engine
                .add_request(RequestInput {
                    request_id: None,
                    prompt: Prompt::TokenIds(ids.clone()),
                    params: params.clone(),
                    priority: 0,
                    cache_salt: None,
                    add_special_tokens: false,
                })
                .expect("request accepted")
        })
        .collect();
    streams
        .into_iter()
        .map(|mut s| {
            let mut tokens: Vec<Vec<u32>> = Vec::new();
            while let Some(out) = s.blocking_next() {
                for d in out.unwrap().outputs {
                    if tokens.len() <= d.index {
                        tokens.resize(d.index + 1, Vec::new());
                    }
                    tokens[d.index].extend(d.token_ids);
                }
            }
            tokens
        })
        .collect()
}

/// The stats once the engine has gone idle (the snapshot is published after the step that sent the outputs).
fn idle_stats(engine: &LLMEngine) -> EngineStats {
    let start = Instant::now();
    loop {
        let s = engine.stats();
        if s.num_running == 0 && s.num_waiting == 0 && s.kv_blocks_in_use == 0 {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "engine never went idle: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn mistral_decodes_past_the_window_on_a_bounded_number_of_blocks() {
    let (dir, items) = fixture("mistral");
    let engine = engine(&dir, 4, 2048);
    // One request at a time: the engine-wide peak is one sequence's.
    for (i, item) in items.iter().enumerate() {
        let out = run(&engine, &[(item.prompt.clone(), greedy(item.greedy.len()))]);
        assert_eq!(out[0], vec![item.greedy.clone()], "prompt {i}: greedy tokens differ from HF's");
        let total = item.prompt.len() + item.greedy.len();
        assert!(total.div_ceil(4) > 3 * WINDOW.div_ceil(4), "the sequence must outgrow the window");
    }
    let stats = idle_stats(&engine);
    assert_eq!(stats.max_kv_blocks_in_use, WINDOW.div_ceil(4) + 1, "{stats:?}");
    engine.shutdown();
}

#[test]
fn mistral_chunked_and_batched_with_released_blocks_matches_hf() {
    let (dir, items) = fixture("mistral");
    // 5-token chunks: prompts arrive in 3 chunks, blocks are released between them.
    let engine = engine(&dir, 4, 5);
    let prompts: Vec<_> = items.iter().map(|it| (it.prompt.clone(), greedy(it.greedy.len()))).collect();
    let outs = run(&engine, &prompts);
    for (i, (item, out)) in items.iter().zip(&outs).enumerate() {
        assert_eq!(*out, vec![item.greedy.clone()], "prompt {i}");
    }
    let stats = idle_stats(&engine);
    let bound = items.len() * (WINDOW.div_ceil(4) + 2);
    assert!(stats.max_kv_blocks_in_use <= bound, "{} blocks at peak, bound {bound}", stats.max_kv_blocks_in_use);
    engine.shutdown();
}

#[test]
fn forks_and_beam_search_on_released_tables_match_unreleased_ones() {
    let (dir, items) = fixture("mistral");
    let beam = SamplingParams {
        n: 3,
        temperature: 0.0,
        max_tokens: Some(32),
        beam_search: Some(BeamSearchParams {
            beam_width: 3,
            length_penalty: 1.0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let sampled = SamplingParams {
        n: 2,
        temperature: 1.0,
        seed: Some(11),
        max_tokens: Some(32),
        ignore_eos: true,
        ..Default::default()
    };
    let greedy_pair = SamplingParams { n: 2, ..greedy(32) };
    let prompts = vec![
        (items[0].prompt.clone(), beam.clone()),
        (items[1].prompt.clone(), sampled),
        (items[2].prompt.clone(), greedy_pair),
        (items[3].prompt.clone(), beam),
    ];
    let released = engine(&dir, 4, 2048);
    let got = run(&released, &prompts);
    let stats = idle_stats(&released);
    released.shutdown();
    let whole = engine(&dir, 64, 2048);
    let want = run(&whole, &prompts);
    whole.shutdown();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "request {i}: outputs differ when blocks are released");
    }
    assert_eq!(got[2], vec![items[2].greedy.clone(); 2], "both greedy samples are HF's");
    // 4 requests of up to 3 sequences at 11 blocks each without releasing.
    assert!(stats.max_kv_blocks_in_use <= 3 * 4 * (WINDOW.div_ceil(4) + 2), "{stats:?}");
}

#[test]
fn gemma2_global_layers_keep_every_block() {
    let (dir, items) = fixture("gemma2");
    let engine = engine(&dir, 4, 2048);
    let item = &items[0];
    let out = run(&engine, &[(item.prompt.clone(), greedy(item.greedy.len()))]);
    assert_eq!(out[0], vec![item.greedy.clone()]);
    let stats = idle_stats(&engine);
    // 12 + 32 tokens, the last one never fed back: 43 positions in 11 blocks.
    assert_eq!(stats.max_kv_blocks_in_use, (item.prompt.len() + item.greedy.len() - 1).div_ceil(4));
    engine.shutdown();
}

/// The prefix cache on windowed models: a second request whose prompt is the first one's prompt plus 20 of its
/// generated tokens (32 tokens, past the window of 8) must continue with HF's remaining tokens. Gemma 2 (a global
/// layer, so nothing is released) must reuse every full block of that prefix but the last token's; Mistral's
/// blocks behind the window were released to the free list with their hashes, and whatever of them it reuses
/// must still give HF's tokens (its window layers read only the last 8 positions).
#[test]
fn prefix_cache_hits_on_windowed_models_give_hf_tokens() {
    for family in ["mistral", "gemma2"] {
        let (dir, items) = fixture(family);
        let engine = engine(&dir, 4, 2048);
        let item = &items[1];
        let first = run(&engine, &[(item.prompt.clone(), greedy(item.greedy.len()))]);
        assert_eq!(first[0], vec![item.greedy.clone()], "{family}: first request");
        let before = idle_stats(&engine);
        let cut = 20;
        let mut prompt = item.prompt.clone();
        prompt.extend(&item.greedy[..cut]);
        let rest = item.greedy[cut..].to_vec();
        let second = run(&engine, &[(prompt.clone(), greedy(rest.len()))]);
        assert_eq!(second[0], vec![rest], "{family}: the continuation after a cached prefix differs from HF's");
        let after = idle_stats(&engine);
        let hit = after.prefix_cache_hits - before.prefix_cache_hits;
        // The prompt's last token is always computed: (32 - 1) / 4 full blocks can come from the cache.
        let reusable = ((prompt.len() - 1) / 4 * 4) as u64;
        if family == "gemma2" {
            assert_eq!(hit, reusable, "gemma2 keeps every block: the whole prefix is a hit ({after:?})");
        } else {
            assert!(hit <= reusable, "{after:?}");
        }
        engine.shutdown();
    }
}
