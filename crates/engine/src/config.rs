//! `EngineConfig`: the one small configuration of the engine (vLLM's flag names, snake_case), with defaults
//! that work for the embedded model on a CPU.

use serde::{Deserialize, Serialize};

pub use crate::kv::BlockHashAlgo;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SchedulingPolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// Lower `priority` value first, ties by arrival (vLLM's convention).
    Priority,
}

/// How the CPU backend multiplies activations with Q4_0 / Q4_1 / Q8_0 weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CpuPrecisionChoice {
    /// int8 activations per 32, integer dot products (llama.cpp's scheme), f16 KV cache: the default. It
    /// ranks 96.3% of exact mode's greedy tokens first on the same context (`tests/cpu_precision.rs`).
    #[default]
    Fast,
    /// f32 activations and KV cache (the HF-parity reference).
    Exact,
}

impl From<CpuPrecisionChoice> for pagedllm_kernels::cpu::CpuPrecision {
    fn from(c: CpuPrecisionChoice) -> Self {
        match c {
            CpuPrecisionChoice::Fast => Self::Fast,
            CpuPrecisionChoice::Exact => Self::Exact,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes of KV cache to allocate on the CPU backend (sets the number of blocks).
    pub kv_cache_bytes: usize,
    /// Explicit block count; overrides `kv_cache_bytes` when set (tests use it to make memory scarce).
    pub num_gpu_blocks_override: Option<usize>,
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most tokens (prefill chunks + decodes) in one step.
    pub max_num_batched_tokens: usize,
    /// Context cap; `None` = the model's own.
    pub max_model_len: Option<usize>,
    pub enable_prefix_caching: bool,
    /// The prefix cache's block hash (vLLM's `--prefix-caching-hash-algo`): `sha256` (collision-resistant, the
    /// default) or `xxhash` (faster; only for trusted clients).
    pub prefix_caching_hash_algo: BlockHashAlgo,
    pub scheduling_policy: SchedulingPolicy,
    /// Compute threads for the CPU backend; `None` = the physical cores (`default_num_threads`).
    pub num_threads: Option<usize>,
    /// CPU backend: `fast` (the default: int8 activations and integer dot products for Q4_0 / Q4_1 / Q8_0
    /// weights, f16 KV cache) or `exact` (f32 activations and KV cache; what the HF-parity tests use). Other
    /// weight types are multiplied with f32 activations in both.
    pub cpu_precision: CpuPrecisionChoice,
    /// Engine-wide default seed for requests that set none (vLLM's `--seed`).
    pub seed: Option<u64>,
    /// Where the model runs: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub device: String,
    /// GPU backends: the share of the GPU's memory for weights + activations + KV cache (vLLM's flag).
    pub gpu_memory_utilization: f64,
    /// GPU backends: run every step eagerly, without CUDA graphs (vLLM's `--enforce-eager`).
    pub enforce_eager: bool,
    /// GPU backends: weights, activations and KV cache type: `auto` (the checkpoint's: f16 for f16 models,
    /// else bf16), `bfloat16`, `float16` (`half`) or `float32` (`float`; the reference type: exact f32 GEMMs, half
    /// the speed and twice the memory), as vLLM's `--dtype`. The CPU backend computes in f32.
    pub dtype: String,
    /// Do not load the checkpoint's tokenizer (vLLM's `--skip-tokenizer-init`): prompts must be token ids, outputs
    /// carry token ids and no text, and stop strings, chat templates and constrained decoding are unavailable.
    /// For token-id-only clients and for benchmarks on checkpoints without tokenizer files.
    pub skip_tokenizer_init: bool,
}

/// A parsed `dtype` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeChoice {
    Auto,
    Bfloat16,
    Float16,
    Float32,
}

impl DtypeChoice {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Self::Auto),
            "bfloat16" | "bf16" => Ok(Self::Bfloat16),
            "float16" | "half" | "fp16" | "f16" => Ok(Self::Float16),
            "float32" | "float" | "fp32" | "f32" => Ok(Self::Float32),
            _ => Err(format!(
                "unknown dtype {s:?}; expected auto, bfloat16, float16 or float32"
            )),
        }
    }
}

/// A parsed `device` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!("unknown device {s:?}; expected cpu, cuda or cuda:N")),
            },
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_bytes: 512 << 20,
            num_gpu_blocks_override: None,
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            max_model_len: None,
            enable_prefix_caching: true,
            prefix_caching_hash_algo: BlockHashAlgo::Sha256,
            scheduling_policy: SchedulingPolicy::Fcfs,
            num_threads: None,
            cpu_precision: CpuPrecisionChoice::Fast,
            seed: None,
            device: "cpu".into(),
            gpu_memory_utilization: 0.9,
            enforce_eager: false,
            dtype: "auto".into(),
            skip_tokenizer_init: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CpuPrecisionChoice, Device, DtypeChoice, EngineConfig};

    #[test]
    fn cpu_precision_json() {
        let c: EngineConfig = serde_json::from_str(r#"{"cpu_precision":"exact"}"#).unwrap();
        assert_eq!(c.cpu_precision, CpuPrecisionChoice::Exact);
        assert_eq!(EngineConfig::default().cpu_precision, CpuPrecisionChoice::Fast);
        let e = serde_json::from_str::<EngineConfig>(r#"{"cpu_precision":"int4"}"#).unwrap_err().to_string();
        assert!(e.contains("fast") && e.contains("exact"), "{e}");
    }

    #[test]
    fn dtype_strings() {
        assert_eq!(DtypeChoice::parse("auto"), Ok(DtypeChoice::Auto));
        assert_eq!(DtypeChoice::parse("BFloat16"), Ok(DtypeChoice::Bfloat16));
        assert_eq!(DtypeChoice::parse("half"), Ok(DtypeChoice::Float16));
        assert_eq!(DtypeChoice::parse("float32"), Ok(DtypeChoice::Float32));
        assert_eq!(DtypeChoice::parse("float"), Ok(DtypeChoice::Float32));
        assert!(DtypeChoice::parse("int8")
            .unwrap_err()
            .contains("bfloat16, float16 or float32"));
    }

    #[test]
    fn device_strings() {
        assert_eq!(Device::parse("cpu"), Ok(Device::Cpu));
        assert_eq!(Device::parse("CUDA"), Ok(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:3"), Ok(Device::Cuda(3)));
        assert!(Device::parse("cuda:x").unwrap_err().contains("cuda:N"));
        assert!(Device::parse("tpu").is_err());
    }
}
