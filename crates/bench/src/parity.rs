//! `pagedllm-bench parity`: the engine against HF transformers' reference files (`hf_peer.py reference`).
//!
//! For each reference item (random token-id prompt, HF's greedy continuation, HF's teacher-forced log-probs):
//! 1. teacher-forced: prompt + HF's continuation as one prompt with `prompt_logprobs`, so the engine scores
//!    every reference token; reported: the largest and mean |engine - HF| log-prob;
//! 2. greedy: the prompt alone, greedy for as many tokens; reported: the share of positions where the
//!    engine's token equals HF's (and where they first differ).
//!
//! With `--reference-fp32` (the same prompts run by HF in float32) the report also says how far HF's own bf16
//! run is from float32 on the prompt positions (where both score the same tokens): the noise floor of bf16.
//! PASS means the engine is at least as close to float32 as HF-bf16 is (mean and max within 10%), or within
//! `--logprob-tolerance` outright, and its greedy tokens agree with float32's at least as often as HF-bf16's
//! do (within 0.1) or at `--greedy-min-match`. Without an fp32 file, PASS is the plain thresholds against the
//! one reference (an fp32 engine run, `--dtype float32`, is held to them against HF's fp32 reference). All requests go in at once (batched, as served). Prints one JSON document; exit 1 on FAIL.

use pagedllm_engine::engine::{LLMEngine, RequestStream};
use pagedllm_engine::{EngineConfig, SamplingParams};
use serde::Deserialize;
use serde_json::json;

use crate::submit_token_ids;

#[derive(Deserialize)]
struct Reference {
    dtype: String,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    prompt_logprobs: Vec<Option<f32>>,
    greedy_logprobs: Vec<f32>,
}

impl Item {
    /// HF's log-prob of every token after the first (prompt tokens, then the greedy ones).
    fn scored(&self) -> Vec<f32> {
        self.prompt_logprobs
            .iter()
            .skip(1)
            .map(|x| x.unwrap_or(f32::NAN))
            .chain(self.greedy_logprobs.iter().copied())
            .collect()
    }
}

fn load(path: &str) -> Result<Reference, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
}

fn score_request(engine: &LLMEngine, item: &Item) -> Result<RequestStream, String> {
    let full: Vec<u32> = item.prompt.iter().chain(&item.greedy).copied().collect();
    let params = SamplingParams {
        max_tokens: Some(1),
        prompt_logprobs: Some(1),
        temperature: 0.0,
        ..Default::default()
    };
    submit_token_ids(engine, full, params)
}

fn collect_prompt_logprobs(mut s: RequestStream) -> Result<Vec<f32>, String> {
    let mut lp = Vec::new();
    while let Some(o) = s.blocking_next() {
        if let Some(p) = o.map_err(|e| e.to_string())?.prompt_logprobs {
            lp = p
                .into_iter()
                .skip(1)
                .map(|x| x.map_or(f32::NAN, |x| x.logprob))
                .collect();
        }
    }
    Ok(lp)
}

fn collect_tokens(mut s: RequestStream) -> Result<Vec<u32>, String> {
    let mut tokens = Vec::new();
    while let Some(o) = s.blocking_next() {
        for c in o.map_err(|e| e.to_string())?.outputs {
            tokens.extend(c.token_ids);
        }
    }
    Ok(tokens)
}

/// (max, mean) of |a - b| over the first `n` positions (NaN counts as infinite).
fn diff(a: &[f32], b: &[f32], n: usize) -> (f64, f64) {
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .take(n)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .map(|d| if d.is_nan() { f64::INFINITY } else { d })
        .collect();
    (
        d.iter().cloned().fold(0.0, f64::max),
        d.iter().sum::<f64>() / d.len().max(1) as f64,
    )
}

fn agree(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

struct Totals {
    max: f64,
    sum: f64,
    n: usize,
    same: usize,
    total: usize,
}

impl Totals {
    fn new() -> Self {
        Self {
            max: 0.0,
            sum: 0.0,
            n: 0,
            same: 0,
            total: 0,
        }
    }
    fn add(&mut self, (max, mean): (f64, f64), n: usize) {
        self.max = self.max.max(max);
        self.sum += mean * n as f64;
        self.n += n;
    }
    fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }
    fn greedy(&self) -> f64 {
        self.same as f64 / self.total.max(1) as f64
    }
    fn json(&self) -> serde_json::Value {
        json!({"max_abs_logprob_diff": self.max, "mean_abs_logprob_diff": self.mean(), "greedy_match": self.greedy()})
    }
}

pub fn run(args: &[String]) -> Result<bool, String> {
    let (mut model, mut reference, mut reference32, mut out) = (None, None, None, None);
    let mut device = "cpu".to_string();
    let mut dtype = "auto".to_string();
    let (mut lp_tol, mut greedy_min) = (0.05f64, 0.9f64);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(val()?),
            "--reference" => reference = Some(val()?),
            "--reference-fp32" => reference32 = Some(val()?),
            "--out" => out = Some(val()?),
            "--device" => device = val()?,
            "--dtype" => dtype = val()?,
            "--logprob-tolerance" => lp_tol = val()?.parse().map_err(|e| format!("{e}"))?,
            "--greedy-min-match" => greedy_min = val()?.parse().map_err(|e| format!("{e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let model = model.ok_or("--model is required")?;
    let reference = reference.ok_or("--reference is required")?;
    let r = load(&reference)?;
    let r32 = reference32.as_deref().map(load).transpose()?;
    if let Some(r32) = &r32 {
        if r32.items.len() != r.items.len() || r32.items.iter().zip(&r.items).any(|(a, b)| a.prompt != b.prompt) {
            return Err("the fp32 reference has different prompts (run both with the same --seed)".into());
        }
    }
    let longest = r
        .items
        .iter()
        .chain(r32.iter().flat_map(|x| &x.items))
        .map(|i| i.prompt.len() + i.greedy.len())
        .max()
        .unwrap_or(1);
    let config = EngineConfig {
        device: device.clone(),
        dtype: dtype.clone(),
        max_num_seqs: 3 * r.items.len().max(1),
        max_model_len: Some((longest + 16).next_multiple_of(16)),
        // Every teacher-forced position must be computed, never served from the cache.
        enable_prefix_caching: false,
        ..Default::default()
    };
    let engine = LLMEngine::start(&model, config).map_err(|e| e.to_string())?;
    let mut streams = Vec::new();
    for (i, item) in r.items.iter().enumerate() {
        let greedy_params = SamplingParams {
            max_tokens: Some(item.greedy.len()),
            temperature: 0.0,
            ignore_eos: true,
            ..Default::default()
        };
        let scored = score_request(&engine, item)?;
        let scored32 = r32.as_ref().map(|x| score_request(&engine, &x.items[i])).transpose()?;
        let greedy = submit_token_ids(&engine, item.prompt.clone(), greedy_params)?;
        streams.push((scored, scored32, greedy));
    }
    let (mut vs16, mut vs32, mut vs32_prompt, mut hf16_vs32) =
        (Totals::new(), Totals::new(), Totals::new(), Totals::new());
    let mut items = Vec::new();
    for (i, (scored, scored32, greedy)) in streams.into_iter().enumerate() {
        let item = &r.items[i];
        let ours = collect_prompt_logprobs(scored)?;
        let theirs = item.scored();
        if ours.len() != theirs.len() {
            return Err(format!(
                "{} engine log-probs for {} reference positions",
                ours.len(),
                theirs.len()
            ));
        }
        let tokens = collect_tokens(greedy)?;
        let d16 = diff(&ours, &theirs, theirs.len());
        vs16.add(d16, theirs.len());
        vs16.same += agree(&tokens, &item.greedy);
        vs16.total += item.greedy.len();
        let mut entry = json!({
            "prompt_len": item.prompt.len(),
            "vs_reference": {"max": d16.0, "mean": d16.1, "greedy_match": agree(&tokens, &item.greedy) as f64 / item.greedy.len().max(1) as f64,
                        "first_greedy_difference": tokens.iter().zip(&item.greedy).position(|(a, b)| a != b)},
        });
        if let (Some(r32), Some(s32)) = (&r32, scored32) {
            let it32 = &r32.items[i];
            let ours32 = collect_prompt_logprobs(s32)?;
            let theirs32 = it32.scored();
            let p = item.prompt.len() - 1; // prompt positions: the same tokens in every run
            let d32 = diff(&ours32, &theirs32, theirs32.len());
            vs32.add(d32, theirs32.len());
            vs32.same += agree(&tokens, &it32.greedy);
            vs32.total += it32.greedy.len();
            vs32_prompt.add(diff(&ours32, &theirs32, p), p);
            hf16_vs32.add(diff(&theirs, &theirs32, p), p);
            hf16_vs32.same += agree(&item.greedy, &it32.greedy);
            hf16_vs32.total += it32.greedy.len();
            entry["vs_fp32"] = json!({"max": d32.0, "mean": d32.1, "greedy_match": agree(&tokens, &it32.greedy) as f64 / it32.greedy.len().max(1) as f64});
        }
        items.push(entry);
    }
    let info = engine.model_info().clone();
    engine.shutdown();
    let plain = vs16.max <= lp_tol && vs16.greedy() >= greedy_min;
    let (pass, criterion) = match &r32 {
        None => (
            plain,
            format!(
                "vs the {} reference: max |dlogprob| <= tolerance and greedy match >= minimum",
                r.dtype
            ),
        ),
        Some(_) => {
            let lp_ok = vs32_prompt.max <= lp_tol.max(1.1 * hf16_vs32.max)
                && vs32_prompt.mean() <= (0.2 * lp_tol).max(1.1 * hf16_vs32.mean());
            let greedy_ok = vs32.greedy() >= greedy_min.min(hf16_vs32.greedy() - 0.1);
            (lp_ok && greedy_ok, "vs float32: as close as HF-bf16 is (prompt positions, mean and max within 10%) or within the tolerance; greedy agreement with float32 at least HF-bf16's minus 0.1, or the minimum".to_string())
        }
    };
    let doc = json!({
        "benchmark": "parity",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "model": info,
        "reference": reference,
        "reference_dtype": r.dtype,
        "reference_fp32": reference32,
        "vs_reference": vs16.json(),
        "vs_fp32": r32.as_ref().map(|_| vs32.json()),
        "vs_fp32_prompt_positions": r32.as_ref().map(|_| vs32_prompt.json()),
        "hf_bf16_vs_fp32_prompt_positions": r32.as_ref().map(|_| hf16_vs32.json()),
        "logprob_tolerance": lp_tol,
        "greedy_min_match": greedy_min,
        "plain_thresholds_met": plain,
        "criterion": criterion,
        "pass": pass,
        "items": items,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap();
    match out {
        Some(p) => std::fs::write(&p, text + "\n").map_err(|e| format!("{p}: {e}"))?,
        None => println!("{text}"),
    }
    let floor = if r32.is_some() {
        format!(
            "; vs fp32 (prompt positions) max {:.4} mean {:.4}, HF-bf16 vs fp32 max {:.4} mean {:.4}; greedy vs fp32 {:.3}, HF-bf16 vs fp32 {:.3}",
            vs32_prompt.max, vs32_prompt.mean(), hf16_vs32.max, hf16_vs32.mean(), vs32.greedy(), hf16_vs32.greedy()
        )
    } else {
        String::new()
    };
    eprintln!(
        "parity {model} on {device} (dtype {dtype}): vs HF {} max |dlogprob| {:.4} mean {:.4}, greedy {:.3}{floor}: {}",
        r.dtype,
        vs16.max,
        vs16.mean(),
        vs16.greedy(),
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(pass)
}
