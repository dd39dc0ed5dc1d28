//! `pagedllm-bench parity`: the engine against HF transformers' reference file (`hf_peer.py reference`).
//!
//! For each reference item (random token-id prompt, HF's greedy continuation, HF's teacher-forced log-probs):
//! 1. teacher-forced: prompt + HF's continuation as one prompt with `prompt_logprobs`, so the engine scores
//!    every reference token; the largest |engine - HF| log-prob over all positions is reported;
//! 2. greedy: the prompt alone, greedy for as many tokens; the share of positions where the engine's token
//!    equals HF's is reported (and where they first differ).
//! All requests go in at once (batched, as served). Prints one JSON document; exits 1 if a threshold fails.

use pagedllm_engine::engine::{LLMEngine, Prompt, RequestInput, RequestStream};
use pagedllm_engine::{EngineConfig, SamplingParams};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Reference {
    dtype: String,
    steps: usize,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    prompt_logprobs: Vec<Option<f32>>,
    greedy_logprobs: Vec<f32>,
}

fn request(engine: &LLMEngine, ids: Vec<u32>, params: SamplingParams) -> Result<RequestStream, String> {
    engine
        .add_request(RequestInput {
            request_id: None,
            prompt: Prompt::TokenIds(ids),
            params,
            priority: 0,
            cache_salt: None,
            add_special_tokens: false,
        })
        .map_err(|e| e.to_string())
}

pub fn run(args: &[String]) -> Result<bool, String> {
    let mut model = None;
    let mut reference = None;
    let mut out = None;
    let mut device = "cpu".to_string();
    let mut lp_tol = 0.05f64;
    let mut greedy_min = 0.9f64;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(val()?),
            "--reference" => reference = Some(val()?),
            "--out" => out = Some(val()?),
            "--device" => device = val()?,
            "--logprob-tolerance" => lp_tol = val()?.parse().map_err(|e| format!("{e}"))?,
            "--greedy-min-match" => greedy_min = val()?.parse().map_err(|e| format!("{e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let model = model.ok_or("--model is required")?;
    let reference = reference.ok_or("--reference is required")?;
    let text = std::fs::read_to_string(&reference).map_err(|e| format!("{reference}: {e}"))?;
    let r: Reference = serde_json::from_str(&text).map_err(|e| format!("{reference}: {e}"))?;
    let longest = r.items.iter().map(|i| i.prompt.len() + i.greedy.len()).max().unwrap_or(1);
    let config = EngineConfig {
        device: device.clone(),
        max_num_seqs: 2 * r.items.len().max(1),
        max_model_len: Some((longest + 16).next_multiple_of(16)),
        // Every teacher-forced position must be computed, never served from the cache.
        enable_prefix_caching: false,
        ..Default::default()
    };
    let engine = LLMEngine::start(&model, config).map_err(|e| e.to_string())?;
    let mut streams = Vec::new();
    for item in &r.items {
        let full: Vec<u32> = item.prompt.iter().chain(&item.greedy).copied().collect();
        let scored = request(
            &engine,
            full,
            SamplingParams { max_tokens: Some(1), prompt_logprobs: Some(1), temperature: 0.0, ..Default::default() },
        )?;
        let greedy = request(
            &engine,
            item.prompt.clone(),
            SamplingParams { max_tokens: Some(item.greedy.len()), temperature: 0.0, ignore_eos: true, ..Default::default() },
        )?;
        streams.push((scored, greedy));
    }
    let mut results = Vec::new();
    let (mut worst, mut matched, mut total) = (0f64, 0usize, 0usize);
    for (item, (mut scored, mut greedy)) in r.items.iter().zip(streams) {
        let mut ours_lp: Vec<Option<f32>> = Vec::new();
        while let Some(o) = scored.blocking_next() {
            let o = o.map_err(|e| e.to_string())?;
            if let Some(p) = o.prompt_logprobs {
                ours_lp = p.into_iter().map(|x| x.map(|x| x.logprob)).collect();
            }
        }
        let mut tokens = Vec::new();
        while let Some(o) = greedy.blocking_next() {
            let o = o.map_err(|e| e.to_string())?;
            for c in o.outputs {
                tokens.extend(c.token_ids);
            }
        }
        let theirs: Vec<f32> = item.prompt_logprobs.iter().skip(1).map(|x| x.unwrap_or(f32::NAN)).chain(item.greedy_logprobs.iter().copied()).collect();
        let ours: Vec<f32> = ours_lp.iter().skip(1).map(|x| x.unwrap_or(f32::NAN)).collect();
        if ours.len() != theirs.len() {
            return Err(format!("{} engine log-probs for {} reference positions", ours.len(), theirs.len()));
        }
        let diffs: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| (*a as f64 - *b as f64).abs()).collect();
        let max_diff = diffs.iter().cloned().fold(0f64, |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) });
        let mean_diff = diffs.iter().sum::<f64>() / diffs.len().max(1) as f64;
        let same = tokens.iter().zip(&item.greedy).filter(|(a, b)| a == b).count();
        let first_diff = tokens.iter().zip(&item.greedy).position(|(a, b)| a != b);
        worst = worst.max(max_diff);
        matched += same;
        total += item.greedy.len();
        results.push(json!({
            "prompt_len": item.prompt.len(),
            "steps": item.greedy.len(),
            "max_abs_logprob_diff": max_diff,
            "mean_abs_logprob_diff": mean_diff,
            "greedy_match": same as f64 / item.greedy.len().max(1) as f64,
            "first_greedy_difference": first_diff,
        }));
    }
    let info = engine.model_info().clone();
    engine.shutdown();
    let match_frac = matched as f64 / total.max(1) as f64;
    let pass = worst <= lp_tol && match_frac >= greedy_min;
    let doc = json!({
        "benchmark": "parity",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "model": info,
        "reference": reference,
        "reference_dtype": r.dtype,
        "reference_steps": r.steps,
        "max_abs_logprob_diff": worst,
        "logprob_tolerance": lp_tol,
        "greedy_match": match_frac,
        "greedy_min_match": greedy_min,
        "pass": pass,
        "items": results,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap();
    match out {
        Some(p) => std::fs::write(&p, text + "\n").map_err(|e| format!("{p}: {e}"))?,
        None => println!("{text}"),
    }
    eprintln!("parity {model}: max |dlogprob| {worst:.4} (tol {lp_tol}), greedy match {match_frac:.3} (min {greedy_min}): {}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}
