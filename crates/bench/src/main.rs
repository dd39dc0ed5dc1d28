//! `pagedllm-bench throughput`: offline throughput of the engine on token-id prompts (vLLM's
//! `benchmark_throughput` random workload). For each batch size B it submits B requests of `--input-len`
//! random token ids, each generating exactly `--output-len` tokens (greedy, EOS ignored), all at once, and
//! reports wall time, output tokens/s, decode tokens/s (after every request has its first token) and TTFT,
//! and per engine step: where the engine thread's time went (`EngineStats::step_phase_seconds`) and how many
//! heap allocations the whole process made (engine thread and this consumer). Prints one JSON document (machine, command, config, results) to stdout
//! or `--out`.
//!
//! `--device cuda[:N]` runs the GPU backend (build with `--features cuda`); `--model` may then be an HF
//! checkpoint directory without a tokenizer (random-weight shapes from `hf_peer.py make-model`): prompts are
//! token ids, so no tokenizer is needed.
//!
//! `--workload sharegpt|shared-prefix` (with `--requests`, `--prefix-len`, `--suffix-len`, `--seed`) offers a
//! ShareGPT-shaped or a shared-prefix request set instead (see `workloads.rs`); `--no-prefix-caching` turns the
//! prefix cache off. Every result reports TTFT/TPOT percentiles and the KV waste over the run.
//!
//! Other subcommands: `parity` (against HF references, see `parity.rs`), `structured` (what structured outputs
//! cost, see `structured.rs`) and `export-tokenizer` (a model's tokenizer as `tokenizer.json`).

mod alloc_count;
mod parity;
mod structured;
mod workloads;

#[global_allocator]
static ALLOCATOR: alloc_count::CountingAlloc = alloc_count::CountingAlloc;

use std::time::Instant;

use pagedllm_engine::engine::{LLMEngine, Prompt, RequestInput, RequestStream};
use pagedllm_engine::{CpuPrecisionChoice, EngineConfig, SamplingParams};
use rand::SeedableRng;
use serde_json::json;

struct Args {
    model: String,
    batches: Vec<usize>,
    input_len: usize,
    output_len: usize,
    threads: Option<usize>,
    kv_cache_bytes: Option<usize>,
    max_num_batched_tokens: usize,
    out: Option<String>,
    warmup: bool,
    device: String,
    gpu_memory_utilization: f64,
    max_num_seqs: Option<usize>,
    max_model_len: Option<usize>,
    enforce_eager: bool,
    dtype: String,
    /// None: the `--batch` list of fixed-shape random batches.
    workload: Option<String>,
    requests: usize,
    prefix_len: usize,
    suffix_len: usize,
    seed: u64,
    prefix_caching: bool,
    cpu_precision: CpuPrecisionChoice,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: String::new(),
        batches: vec![1, 16, 64],
        input_len: 128,
        output_len: 128,
        threads: None,
        kv_cache_bytes: None,
        max_num_batched_tokens: 2048,
        out: None,
        warmup: true,
        device: "cpu".into(),
        gpu_memory_utilization: 0.9,
        max_num_seqs: None,
        max_model_len: None,
        enforce_eager: false,
        dtype: "auto".into(),
        workload: None,
        requests: 1000,
        prefix_len: 2048,
        suffix_len: 128,
        seed: 0,
        prefix_caching: true,
        cpu_precision: CpuPrecisionChoice::Fast,
    };
    let mut it = std::env::args().skip(1);
    match it.next().as_deref() {
        Some("throughput") => {}
        other => {
            return Err(format!(
                "usage: pagedllm-bench throughput|parity|structured|export-tokenizer [flags] (got {other:?})"
            ))
        }
    }
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
        match flag.as_str() {
            "--model" => a.model = val()?,
            "--batch" => {
                a.batches = val()?
                    .split(',')
                    .map(|s| num(s.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--input-len" => a.input_len = num(val()?)?,
            "--output-len" => a.output_len = num(val()?)?,
            "--threads" => a.threads = Some(num(val()?)?),
            "--kv-cache-bytes" => a.kv_cache_bytes = Some(num(val()?)?),
            "--max-num-batched-tokens" => a.max_num_batched_tokens = num(val()?)?,
            "--out" => a.out = Some(val()?),
            "--no-warmup" => a.warmup = false,
            "--device" => a.device = val()?,
            "--gpu-memory-utilization" => {
                a.gpu_memory_utilization = val()?.parse().map_err(|e| format!("--gpu-memory-utilization: {e}"))?
            }
            "--max-num-seqs" => a.max_num_seqs = Some(num(val()?)?),
            "--max-model-len" => a.max_model_len = Some(num(val()?)?),
            "--enforce-eager" => a.enforce_eager = true,
            "--dtype" => a.dtype = val()?,
            "--workload" => {
                let w = val()?;
                if w != "sharegpt" && w != "shared-prefix" {
                    return Err(format!("--workload: sharegpt or shared-prefix, got {w:?}"));
                }
                a.workload = Some(w)
            }
            "--requests" => a.requests = num(val()?)?,
            "--prefix-len" => a.prefix_len = num(val()?)?,
            "--suffix-len" => a.suffix_len = num(val()?)?,
            "--seed" => a.seed = num(val()?)? as u64,
            "--no-prefix-caching" => a.prefix_caching = false,
            "--cpu-precision" => {
                a.cpu_precision = match val()?.as_str() {
                    "fast" => CpuPrecisionChoice::Fast,
                    "exact" => CpuPrecisionChoice::Exact,
                    v => return Err(format!("--cpu-precision must be fast or exact, got {v:?}")),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// Submits a token-id prompt (no tokenizer involved).
pub(crate) fn submit_token_ids(
    engine: &LLMEngine,
    ids: Vec<u32>,
    params: SamplingParams,
) -> Result<RequestStream, String> {
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

/// `batch` requests of `input_len` random ids generating `output_len` tokens each, all at once.
fn run_batch(engine: &LLMEngine, batch: usize, input_len: usize, output_len: usize, seed: u64) -> serde_json::Value {
    let vocab = engine.model_info().vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let offered = (0..batch)
        .map(|_| workloads::Offered {
            prompt: workloads::random_prompt(&mut rng, input_len, vocab),
            output_len,
        })
        .collect();
    // The shape first (scripts match result lines on `{"batch"`), then the measurements.
    let mut r = json!({ "batch": batch, "input_len": input_len, "output_len": output_len });
    if let (Some(r), serde_json::Value::Object(m)) = (r.as_object_mut(), workloads::run_requests(engine, offered)) {
        r.extend(m);
    }
    r
}

/// The engine's counters once it is idle: they are published after each step, so right after the last output
/// arrives they may not yet include the step that sent it.
fn settled_stats(engine: &LLMEngine) -> pagedllm_engine::engine::EngineStats {
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let s = engine.stats();
        if (s.num_running == 0 && s.num_waiting == 0) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

pub(crate) fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let other = match argv.get(1).map(String::as_str) {
        Some("structured") => Some(structured::run(&argv[2..])),
        Some("export-tokenizer") => Some(structured::export_tokenizer(&argv[2..])),
        _ => None,
    };
    if let Some(result) = other {
        if let Err(e) = result {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    if argv.get(1).map(String::as_str) == Some("parity") {
        match parity::run(&argv[2..]) {
            Ok(true) => return,
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let mut config = EngineConfig {
        num_threads: args.threads,
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_num_seqs: args.max_num_seqs.unwrap_or(match args.workload {
            Some(_) => 256,
            None => *args.batches.iter().max().unwrap_or(&1),
        }),
        max_model_len: args.max_model_len,
        device: args.device.clone(),
        gpu_memory_utilization: args.gpu_memory_utilization,
        enforce_eager: args.enforce_eager,
        dtype: args.dtype.clone(),
        enable_prefix_caching: args.prefix_caching,
        cpu_precision: args.cpu_precision,
        ..Default::default()
    };
    if let Some(b) = args.kv_cache_bytes {
        config.kv_cache_bytes = b;
    }
    let t0 = Instant::now();
    let engine = LLMEngine::start(&args.model, config.clone()).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let load_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "loaded {} in {load_s:.2}s on {} ({} KV blocks); {}",
        engine.model_info().name,
        engine.model_info().device,
        engine.model_info().num_kv_blocks,
        engine.model_info().startup_summary()
    );
    if args.warmup {
        run_batch(&engine, 1, 16, 8, 0);
    }
    let mut results = Vec::new();
    let vocab = engine.model_info().vocab_size as u32;
    let max_model_len = engine.model_info().max_model_len;
    let offered = match args.workload.as_deref() {
        Some("sharegpt") => Some(workloads::sharegpt(args.requests, vocab, max_model_len, args.seed)),
        Some(_) => Some(workloads::shared_prefix(
            args.requests,
            args.prefix_len,
            args.suffix_len,
            args.output_len,
            vocab,
            args.seed,
        )),
        None => None,
    };
    if let Some(offered) = offered {
        let mut r = workloads::run_requests(&engine, offered);
        r["workload"] = json!(args.workload);
        eprintln!("{r}");
        results.push(r);
    }
    for (i, &b) in args.batches.iter().enumerate().filter(|_| args.workload.is_none()) {
        let r = run_batch(&engine, b, args.input_len, args.output_len, 1 + i as u64);
        eprintln!("{r}");
        results.push(r);
    }
    let doc = json!({
        "benchmark": "throughput",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "model": engine.model_info(),
        "load_s": load_s,
        "engine_config": config,
        "results": results,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap();
    match &args.out {
        Some(p) => std::fs::write(p, text + "\n").expect("write --out"),
        None => println!("{text}"),
    }
    engine.shutdown();
}
