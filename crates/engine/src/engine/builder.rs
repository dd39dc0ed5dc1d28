//! Assembles an engine from a model spec and an `EngineConfig`: load the model, build the tokenizer and chat
//! template, size the KV cache from the byte budget, and create the scheduler, the model runner and the
//! compute thread pool. Everything that can fail at start-up fails here, with the cause named.

use std::sync::Arc;
use std::time::Instant;

use pagedllm_kernels::cpu::{CpuBackend, CpuIsa, CpuPrecision, KvCache};
use pagedllm_kernels::cuda::CudaBackend;

use crate::config::{Device, DtypeChoice, EngineConfig};
use crate::error::{EngineError, Result};
use crate::loader::{load_model, GenerationDefaults};
use crate::model::device_weights::{auto_dtype, model_shape};
use crate::model::llama::LlamaModel;
use crate::runner::{ModelOn, ModelRunner};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::tokenizer::{ChatTemplate, Tokenizer};
use pagedllm_kernels::cuda::ActivationDtype;

use super::core::{EngineCore, InjectedFault};
use super::stats::{ModelInfo, StartupPhase};

pub(crate) struct EngineParts {
    pub core: EngineCore,
    pub info: ModelInfo,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub chat_template: Option<ChatTemplate>,
    pub eos_token_ids: Vec<u32>,
    pub generation_defaults: GenerationDefaults,
    pub pool: rayon::ThreadPool,
}

/// The window behind which the scheduler may release KV blocks: the model's sliding window when EVERY layer
/// uses it (Mistral, Phi-3). Interleaved local/global models (Gemma 2/3) get None: their global layers read
/// every position through the same block table (per-layer-group tables would lift that; not done).
fn releasable_window(mc: &crate::model::config::ModelConfig) -> Option<usize> {
    let w = mc.sliding_window?;
    (0..mc.num_hidden_layers).all(|l| mc.layer_window(l) == Some(w)).then_some(w)
}

/// Wall time of start-up phases, lap by lap (`ModelInfo::startup_phases`).
struct StartupClock {
    last: Instant,
    phases: Vec<StartupPhase>,
}

impl StartupClock {
    fn new() -> Self {
        Self { last: Instant::now(), phases: Vec::new() }
    }
    /// Ends the phase `name` now.
    fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push(StartupPhase { name: name.to_string(), seconds: (now - self.last).as_secs_f64() });
        self.last = now;
    }
    /// Phases a backend timed itself; the clock restarts after them.
    fn take_from(&mut self, timed: &[(&'static str, f64)]) {
        self.phases.extend(timed.iter().map(|&(name, seconds)| StartupPhase { name: name.to_string(), seconds }));
        self.last = Instant::now();
    }
}

/// Every backend pages its KV cache in blocks of 1..=256 tokens.
fn check_block_size(config: &EngineConfig) -> Result<()> {
    if config.block_size == 0 || config.block_size > 256 {
        return Err(EngineError::invalid(
            "block_size",
            format!("must be in 1..=256, got {}", config.block_size),
        ));
    }
    Ok(())
}

/// KV blocks for the config: an explicit count, else the byte budget over the bytes one block takes.
pub fn num_kv_blocks(config: &EngineConfig, model: &crate::model::ModelConfig) -> Result<usize> {
    check_block_size(config)?;
    let n = match config.num_gpu_blocks_override {
        Some(n) => n,
        None => {
            let per_block = KvCache::bytes_per_block(
                model.num_hidden_layers,
                config.block_size,
                model.num_key_value_heads,
                model.head_dim,
                CpuPrecision::from(config.cpu_precision).kv_dtype(),
            );
            config.kv_cache_bytes / per_block
        }
    };
    if n < 2 {
        return Err(EngineError::invalid(
            "kv_cache_bytes",
            format!("the KV cache budget leaves {n} blocks; at least 2 are needed (one is the reserved null block)"),
        ));
    }
    Ok(n)
}

pub(crate) fn build_engine(spec: &str, config: &EngineConfig) -> Result<EngineParts> {
    if config.max_num_seqs == 0 {
        return Err(EngineError::invalid("max_num_seqs", "must be at least 1"));
    }
    if config.max_num_batched_tokens == 0 {
        return Err(EngineError::invalid("max_num_batched_tokens", "must be at least 1"));
    }
    let started = Instant::now();
    let mut phases = StartupClock::new();
    let loaded = load_model(spec)?;
    phases.lap("load_model");
    let mut mc = loaded.config.clone();
    let tokenizer = match &loaded.tokenizer {
        Some(_) if config.skip_tokenizer_init => None,
        Some(src) => Some(Arc::new(Tokenizer::from_source(src)?)),
        None => None,
    };
    let chat_template = match tokenizer
        .as_ref()
        .and_then(|t| t.chat_template().map(|s| (t, s.to_string())))
    {
        Some((t, src)) => Some(ChatTemplate::new(&src, t.bos_token(), t.eos_token())?),
        None => None,
    };
    phases.lap("tokenizer");
    let mut eos: Vec<u32> = loaded.generation_defaults.eos_token_ids.clone();
    eos.extend(&mc.eos_token_ids);
    if let Some(e) = tokenizer.as_ref().and_then(|t| t.eos_token_id()) {
        eos.push(e);
    }
    eos.sort_unstable();
    eos.dedup();

    let device = Device::parse(&config.device).map_err(|m| EngineError::invalid("device", m))?;
    let dtype_choice = DtypeChoice::parse(&config.dtype).map_err(|m| EngineError::invalid("dtype", m))?;
    let requested_len = match config.max_model_len {
        Some(m) if m == 0 || m > mc.max_position_embeddings => {
            return Err(EngineError::invalid(
                "max_model_len",
                format!(
                    "must be in 1..={} (the model's context), got {m}",
                    mc.max_position_embeddings
                ),
            ))
        }
        Some(m) => m,
        None => mc.max_position_embeddings,
    };
    // LongRoPE's factor list follows the context the engine allows (vLLM's rule; see `RopeScaling::LongRope`).
    mc.set_max_model_len(requested_len);
    // The GPU decoder plans its KV cache from a memory profile; the CPU cache comes from a byte budget.
    let cuda = match device {
        Device::Cpu => None,
        Device::Cuda(ordinal) => {
            check_block_size(config)?;
            let dtype = match dtype_choice {
                DtypeChoice::Auto => auto_dtype(&loaded.weights),
                DtypeChoice::Bfloat16 => ActivationDtype::Bf16,
                DtypeChoice::Float16 => ActivationDtype::F16,
                DtypeChoice::Float32 => ActivationDtype::F32,
            };
            let opts = pagedllm_kernels::cuda::CudaOptions {
                ordinal,
                dtype,
                gpu_memory_utilization: config.gpu_memory_utilization,
                block_size: config.block_size,
                max_num_batched_tokens: config.max_num_batched_tokens,
                max_num_seqs: config.max_num_seqs,
                max_model_len: requested_len,
                num_blocks_override: config.num_gpu_blocks_override,
                enforce_eager: config.enforce_eager,
            };
            let gpu_err = |e: pagedllm_kernels::cuda::CudaError| EngineError::Backend(e.to_string());
            let mut backend = CudaBackend::new(&opts, &model_shape(&mc)).map_err(gpu_err)?;
            phases.lap("device_init");
            let model = LlamaModel::load(&mc, &loaded.weights, &mut backend)?;
            phases.lap("weights_upload");
            backend.finish_load(&mut |b| model.forward(b)).map_err(gpu_err)?;
            phases.take_from(backend.startup_phases());
            Some(ModelOn { model, backend })
        }
    };
    let num_blocks = match &cuda {
        Some(on_gpu) => on_gpu.backend.num_kv_blocks(),
        None => num_kv_blocks(config, &mc)?,
    };
    let kv_capacity = (num_blocks - 1) * config.block_size;
    let max_model_len = match config.max_model_len {
        Some(m) if m > kv_capacity => {
            return Err(EngineError::invalid(
                "max_model_len",
                format!(
                    "{m} tokens do not fit the KV cache ({kv_capacity} tokens in {} blocks); \
                     raise kv_cache_bytes or lower max_model_len",
                    num_blocks - 1
                ),
            ))
        }
        Some(m) => m,
        // Unset: the model's context, capped to what the KV cache can hold (a CPU byte budget is often smaller).
        None => mc.max_position_embeddings.min(kv_capacity),
    };
    if let Some(ModelOn { backend: dec, .. }) = &cuda {
        // vLLM's start-up line: what the profile left for the KV cache and how many full-length requests fit.
        let plan = dec.kv_plan();
        eprintln!(
            "pagedllm: {} ({}, {}): {:.2} GiB in use after loading and profiling; KV cache {:.2} GiB = {} blocks of \
             {} tokens under gpu_memory_utilization {}; maximum concurrency for {max_model_len}-token requests: {:.2}x",
            dec.device_name(),
            config.device,
            dec.dtype().name(),
            plan.in_use_bytes as f64 / (1u64 << 30) as f64,
            plan.kv_bytes as f64 / (1u64 << 30) as f64,
            plan.num_blocks,
            config.block_size,
            config.gpu_memory_utilization,
            kv_capacity as f64 / max_model_len as f64
        );
    }
    let threads = match config.num_threads {
        Some(0) => return Err(EngineError::invalid("num_threads", "must be at least 1".to_string())),
        Some(n) => n,
        None => super::threads::default_num_threads(),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("pagedllm-cpu-{i}"))
        .build()
        .map_err(|e| EngineError::Internal(format!("building the compute thread pool: {e}")))?;

    let device_name = match &cuda {
        Some(on_gpu) => format!("{} ({})", config.device, on_gpu.backend.device_name()),
        None => "cpu".to_string(),
    };
    let runner = match cuda {
        Some(on_gpu) => ModelRunner::new_cuda(on_gpu, config.block_size),
        None => {
            let mut backend = CpuBackend::new(
                LlamaModel::kv_layout(&mc),
                num_blocks,
                config.block_size,
                mc.max_position_embeddings,
            )
            .with_precision(config.cpu_precision.into())
            .with_threads(threads)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
            phases.lap("backend_init");
            let model = LlamaModel::load(&mc, &loaded.weights, &mut backend)?;
            phases.lap("weights_prepare");
            ModelRunner::new(ModelOn { model, backend }, config.block_size)
        }
    };
    let scheduler = Scheduler::new(SchedulerConfig {
        sliding_window: releasable_window(&mc),
        ..SchedulerConfig::from_engine(config, max_model_len, num_blocks)
    })?
    .with_block_hash_algo(config.prefix_caching_hash_algo);
    let usable_blocks = num_blocks - 1;
    let info = ModelInfo {
        name: loaded.source.name.clone(),
        path: loaded.source.path.display().to_string(),
        format: format!("{:?}", loaded.source.format),
        architecture: mc.architecture.clone(),
        max_model_len,
        vocab_size: mc.vocab_size,
        block_size: config.block_size,
        num_kv_blocks: usable_blocks,
        max_concurrency: (usable_blocks * config.block_size) as f64 / max_model_len as f64,
        has_tokenizer: tokenizer.is_some(),
        has_chat_template: chat_template.is_some(),
        bos_token_id: tokenizer.as_ref().and_then(|t| t.bos_token_id()).or(mc.bos_token_id),
        eos_token_ids: eos.clone(),
        num_threads: threads,
        device: device_name,
        cpu_isa: CpuIsa::detect().name().to_string(),
        cpu_precision: CpuPrecision::from(config.cpu_precision).name().to_string(),
        startup_phases: phases.phases,
        startup_s: started.elapsed().as_secs_f64(),
    };
    let mut core = EngineCore::new(scheduler, runner, tokenizer.clone(), Arc::new(eos.clone()), config.seed)?;
    core.inject_fault(InjectedFault::from_env());
    Ok(EngineParts {
        core,
        info,
        tokenizer,
        chat_template,
        eos_token_ids: eos,
        generation_defaults: loaded.generation_defaults,
        pool,
    })
}
