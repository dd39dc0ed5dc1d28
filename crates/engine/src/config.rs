//! `EngineConfig`: the one small configuration of the engine (vLLM's flag names, snake_case), with defaults
//! that work for the embedded model on a CPU.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SchedulingPolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// Lower `priority` value first, ties by arrival (vLLM's convention).
    Priority,
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
    pub scheduling_policy: SchedulingPolicy,
    /// Compute threads for the CPU backend; `None` = all cores.
    pub num_threads: Option<usize>,
    /// Engine-wide default seed for requests that set none (vLLM's `--seed`).
    pub seed: Option<u64>,
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
            scheduling_policy: SchedulingPolicy::Fcfs,
            num_threads: None,
            seed: None,
        }
    }
}
