//! `pagedllm-bench structured`: what structured outputs cost (issue 10's "at most 5% of decode speed"), the Rust
//! twin of `bench/structured.mjs` for machines without Node (the GPU machine):
//! 1. decode throughput with a JSON-Schema constraint against the same run unconstrained, at each batch size: B
//!    copies of one text prompt at once, each generating exactly `--output-len` tokens (the unconstrained run
//!    ignores EOS; the constrained one has a schema whose `minItems` cannot be met in that many tokens, so both
//!    generate the same number of tokens), greedy. Decode tok/s counts the tokens after each request's first one
//!    over the time from the last first token to the end (the rule of `pagedllm-bench throughput`);
//! 2. grammar compile time of a 20-field schema: the first-token latency of a never-seen schema minus that of
//!    the same schema once cached, median over `--compile-reps` distinct schemas (a new field prefix each time);
//! 3. TTFT of one request alone, with and without a (cached) constraint.
//!
//! The model needs a tokenizer (grammars work on token bytes): the default model, or an HF checkpoint with a
//! `tokenizer.json` (`scripts/gpu/make_structured_model.py` makes an 8B-shaped one with the default model's
//! tokenizer for the GPU). Prints one JSON document to stdout or `--out`.

use std::time::Instant;

use pagedllm_engine::engine::{LLMEngine, Prompt, RequestInput, RequestStream};
use pagedllm_engine::sampling_params::StructuredOutputs;
use pagedllm_engine::{EngineConfig, SamplingParams};
use serde_json::{json, Value};

const PROMPT: &str = "List some products as JSON.";

struct Args {
    model: String,
    device: String,
    dtype: String,
    batches: Vec<usize>,
    output_len: usize,
    compile_reps: usize,
    ttft_reps: usize,
    threads: Option<usize>,
    max_num_batched_tokens: usize,
    gpu_memory_utilization: f64,
    kv_cache_bytes: Option<usize>,
    out: Option<String>,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        model: String::new(),
        device: "cpu".into(),
        dtype: "auto".into(),
        batches: vec![1, 16, 64],
        output_len: 128,
        compile_reps: 7,
        ttft_reps: 7,
        threads: None,
        max_num_batched_tokens: 2048,
        gpu_memory_utilization: 0.9,
        kv_cache_bytes: None,
        out: None,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{flag} {s}: {e}"));
        match flag.as_str() {
            "--model" => a.model = val()?,
            "--device" => a.device = val()?,
            "--dtype" => a.dtype = val()?,
            "--batch" => {
                a.batches = val()?
                    .split(',')
                    .map(|s| num(s.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--output-len" => a.output_len = num(val()?)?,
            "--compile-reps" => a.compile_reps = num(val()?)?,
            "--ttft-reps" => a.ttft_reps = num(val()?)?,
            "--threads" => a.threads = Some(num(val()?)?),
            "--max-num-batched-tokens" => a.max_num_batched_tokens = num(val()?)?,
            "--gpu-memory-utilization" => {
                a.gpu_memory_utilization = val()?.parse().map_err(|e| format!("--gpu-memory-utilization: {e}"))?
            }
            "--kv-cache-bytes" => a.kv_cache_bytes = Some(num(val()?)?),
            "--out" => a.out = Some(val()?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.batches.is_empty() || a.batches.contains(&0) || a.output_len < 2 {
        return Err("--batch needs sizes >= 1 and --output-len at least 2".into());
    }
    Ok(a)
}

/// A schema that keeps the model busy for `output_len` tokens: more items than it can finish in time.
fn long_schema(output_len: usize) -> Value {
    json!({
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": output_len.div_ceil(4),
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": "string", "maxLength": 12},
                        "ok": {"type": "boolean"}
                    },
                    "required": ["id", "name", "ok"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["items"],
        "additionalProperties": false
    })
}

/// A typical 20-field schema (strings, numbers, enums, a date, an array, a nested object); `tag` makes it new.
fn twenty_field_schema(tag: &str) -> Value {
    let kinds = [
        json!({"type": "string", "maxLength": 40}),
        json!({"type": "integer", "minimum": 0}),
        json!({"type": "number"}),
        json!({"type": "boolean"}),
        json!({"enum": ["low", "medium", "high"]}),
        json!({"type": "string", "format": "date"}),
        json!({"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 5}),
        json!({"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}),
    ];
    let mut properties = serde_json::Map::new();
    for i in 0..20 {
        properties.insert(format!("{tag}_field_{i}"), kinds[i % kinds.len()].clone());
    }
    let required: Vec<Value> = properties.keys().map(|k| Value::String(k.clone())).collect();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn json_constraint(schema: Value) -> Option<StructuredOutputs> {
    Some(StructuredOutputs {
        json: Some(schema),
        ..Default::default()
    })
}

fn submit(engine: &LLMEngine, params: SamplingParams) -> Result<RequestStream, String> {
    engine
        .add_request(RequestInput {
            request_id: None,
            prompt: Prompt::Text(PROMPT.into()),
            params,
            priority: 0,
            cache_salt: None,
            add_special_tokens: true,
        })
        .map_err(|e| e.to_string())
}

/// Seconds from submitting one request of `params` (one token) to its first token.
fn first_token_seconds(engine: &LLMEngine, params: &SamplingParams) -> Result<f64, String> {
    let params = SamplingParams {
        max_tokens: Some(1),
        ..params.clone()
    };
    let t0 = Instant::now();
    let mut stream = submit(engine, params)?;
    while let Some(out) = stream.blocking_next() {
        let out = out.map_err(|e| e.to_string())?;
        if out.outputs.iter().any(|o| !o.token_ids.is_empty()) {
            let t = t0.elapsed().as_secs_f64();
            while stream.blocking_next().is_some() {}
            return Ok(t);
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// `batch` requests of `params` at once; decode tokens/s after the last first token.
fn decode_run(engine: &LLMEngine, batch: usize, params: &SamplingParams) -> Result<Value, String> {
    let stats0 = crate::settled_stats(engine);
    let start = Instant::now();
    let mut streams = (0..batch)
        .map(|_| submit(engine, params.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut last_first = 0f64;
    let mut tokens = 0usize;
    for s in &mut streams {
        while let Some(out) = s.blocking_next() {
            let out = out.map_err(|e| e.to_string())?;
            tokens += out.outputs.iter().map(|o| o.token_ids.len()).sum::<usize>();
            // The last delta carries the request's timings (epoch seconds, stamped by the engine thread).
            if let Some(m) = &out.metrics {
                last_first = last_first.max(m.first_token_time.unwrap_or(m.arrival_time) - m.arrival_time);
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let decode_time = (wall - last_first).max(1e-9);
    let stats1 = crate::settled_stats(engine);
    Ok(json!({
        "wall_s": wall,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens as f64 / wall,
        "decode_tokens_per_s": tokens.saturating_sub(batch) as f64 / decode_time,
        "engine_steps": stats1.steps - stats0.steps,
        // Where the engine thread's time went per step (the constrained run's extra cost shows by phase).
        "step_phase_ms": crate::workloads::step_phase_ms(&stats0, &stats1),
    }))
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
}

/// Runs the benchmark; `Err` for bad flags or a failed request.
pub fn run(argv: &[String]) -> Result<(), String> {
    let args = parse(argv)?;
    let mut config = EngineConfig {
        num_threads: args.threads,
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_num_seqs: *args.batches.iter().max().unwrap_or(&1),
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        gpu_memory_utilization: args.gpu_memory_utilization,
        ..Default::default()
    };
    if let Some(b) = args.kv_cache_bytes {
        config.kv_cache_bytes = b;
    }
    let t0 = Instant::now();
    let engine = LLMEngine::start(&args.model, config.clone()).map_err(|e| e.to_string())?;
    eprintln!(
        "loaded {} in {:.2}s on {}",
        engine.model_info().name,
        t0.elapsed().as_secs_f64(),
        engine.model_info().device
    );
    let schema = long_schema(args.output_len);
    let base = SamplingParams {
        temperature: 0.0,
        max_tokens: Some(args.output_len),
        ..Default::default()
    };
    let unconstrained = SamplingParams {
        ignore_eos: true,
        ..base.clone()
    };
    let constrained = SamplingParams {
        structured_outputs: json_constraint(schema.clone()),
        ..base.clone()
    };
    // Warm-up: threads, caches, graphs, and the long schema's compile.
    let short = |p: &SamplingParams| SamplingParams {
        max_tokens: Some(8),
        ..p.clone()
    };
    decode_run(&engine, 1, &short(&unconstrained))?;
    decode_run(&engine, 1, &short(&constrained))?;

    let mut decode = Vec::new();
    for &batch in &args.batches {
        let plain = decode_run(&engine, batch, &unconstrained)?;
        let masked = decode_run(&engine, batch, &constrained)?;
        let (a, b) = (
            plain["decode_tokens_per_s"].as_f64(),
            masked["decode_tokens_per_s"].as_f64(),
        );
        let cost = a.zip(b).filter(|(a, _)| *a > 0.0).map(|(a, b)| 100.0 * (1.0 - b / a));
        eprintln!("batch {batch}: {a:?} tok/s unconstrained, {b:?} constrained ({cost:?}% lower)");
        eprintln!(
            "batch {batch} step ms: unconstrained {}, constrained {}",
            plain["step_phase_ms"], masked["step_phase_ms"]
        );
        decode
            .push(json!({"batch": batch, "unconstrained": plain, "constrained": masked, "decode_cost_percent": cost}));
    }

    let mut compile_ms = Vec::new();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    for i in 0..args.compile_reps {
        let p = SamplingParams {
            temperature: 0.0,
            structured_outputs: json_constraint(twenty_field_schema(&format!("r{i}_{nonce}"))),
            ..Default::default()
        };
        let fresh = first_token_seconds(&engine, &p)?;
        let cached = first_token_seconds(&engine, &p)?;
        compile_ms.push((fresh - cached) * 1e3);
    }
    eprintln!("20-field schema compile: median {:?} ms", median(compile_ms.clone()));

    let (mut ttft_with, mut ttft_without) = (Vec::new(), Vec::new());
    for _ in 0..args.ttft_reps {
        ttft_without.push(first_token_seconds(&engine, &SamplingParams::greedy())?);
        ttft_with.push(first_token_seconds(&engine, &short(&constrained))?);
    }
    let doc = json!({
        "benchmark": "structured-outputs",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": crate::machine(),
        "model": engine.model_info(),
        "engine_config": config,
        "config": {"prompt": PROMPT, "batches": args.batches, "output_len": args.output_len, "schema": schema},
        "decode": decode,
        "compile_20_field_schema_ms": {"median": median(compile_ms.clone()), "samples": compile_ms},
        "ttft_s": {
            "unconstrained_median": median(ttft_without.clone()),
            "constrained_cached_median": median(ttft_with.clone()),
            "unconstrained": ttft_without,
            "constrained_cached": ttft_with,
        },
    });
    engine.shutdown();
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    match &args.out {
        Some(p) => std::fs::write(p, text + "\n").map_err(|e| format!("writing {p}: {e}"))?,
        None => println!("{text}"),
    }
    Ok(())
}

/// `pagedllm-bench export-tokenizer --model GGUF_OR_DIR --out DIR`: the model's tokenizer as `tokenizer.json`
/// (and its chat template and special tokens as `tokenizer_config.json`), so an HF checkpoint made elsewhere
/// (random weights on the GPU machine) can carry the default model's vocabulary.
pub fn export_tokenizer(argv: &[String]) -> Result<(), String> {
    let (mut model, mut out) = (None, None);
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--model" => model = it.next().cloned(),
            "--out" => out = it.next().cloned(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let (Some(model), Some(out)) = (model, out) else {
        return Err("usage: pagedllm-bench export-tokenizer --model GGUF_OR_DIR --out DIR".into());
    };
    let loaded = pagedllm_engine::loader::load_model(&model).map_err(|e| e.to_string())?;
    let source = loaded.tokenizer.ok_or_else(|| format!("{model} has no tokenizer"))?;
    let tok = pagedllm_engine::tokenizer::Tokenizer::from_source(&source).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {out}: {e}"))?;
    let dir = std::path::Path::new(&out);
    tok.hf()
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| format!("writing tokenizer.json: {e}"))?;
    let config = json!({
        "bos_token": tok.bos_token(),
        "eos_token": tok.eos_token(),
        "chat_template": tok.chat_template(),
        "add_bos_token": false,
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).map_err(|e| e.to_string())?;
    eprintln!("wrote {out}/tokenizer.json ({} tokens)", tok.vocab_size());
    Ok(())
}
