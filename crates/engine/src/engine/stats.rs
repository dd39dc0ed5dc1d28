//! `EngineStats`: a snapshot of the engine's counters, read without stopping the engine loop. Feeds the
//! binding's `stats()` and the server's Prometheus metrics (vLLM names on the TS side).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    /// KV blocks the pool hands out (the null block excluded).
    pub kv_blocks_total: usize,
    /// Blocks held by requests.
    pub kv_blocks_in_use: usize,
    /// Most blocks held at once so far (measured after each step's scheduling, where allocation peaks).
    pub max_kv_blocks_in_use: usize,
    /// Free blocks that still hold a prefix-cache entry (evictable).
    pub kv_blocks_cached: usize,
    /// After the last step: KV slots in the running requests' blocks, and how many of them hold no token (the
    /// last block's tail). `kv_slots_unused / kv_slots_held` is the live KV waste.
    pub kv_slots_held: usize,
    pub kv_slots_unused: usize,
    /// The same two summed over every step so far (a time-weighted waste share over a run: the ratio of their
    /// increments).
    pub kv_slot_steps_held: u64,
    pub kv_slot_steps_unused: u64,
    /// `kv_blocks_in_use / kv_blocks_total` (cached-but-free blocks count as free, as in vLLM).
    pub kv_cache_usage: f64,
    /// Prefix-cache lookups and hits, in tokens (vLLM's `prefix_cache_queries` / `prefix_cache_hits`).
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub num_preemptions: u64,
    pub requests_finished_total: u64,
    /// Engine steps run so far.
    pub steps: u64,
    /// Most sequences in any one step so far (shows concurrent requests were batched).
    pub max_batch_seqs: usize,
    /// Most tokens in any one step so far.
    pub max_batch_tokens: usize,
    /// Where the engine thread's step time went, summed over all steps (what a later overlap of host work with
    /// the device's step would hide).
    pub step_phase_seconds: StepPhaseSeconds,
}

/// Seconds per phase of `EngineCore::step`, summed over steps.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepPhaseSeconds {
    /// The scheduler's decision.
    pub schedule: f64,
    /// The step's sequences and sampling rows gathered from the requests.
    pub prepare: f64,
    /// The flattened batch built, uploaded and launched (on the CPU backend this includes the forward pass).
    pub launch: f64,
    /// Grammar masks taken and written into the device sampling batch while the GPU runs the forward (GPU path;
    /// a mask the mask pool has not finished yet is computed or waited for here).
    #[serde(default)]
    pub masks: f64,
    /// Waiting for the device: the forward's remaining time, sampling, and the copy back of tokens or logits.
    pub wait: f64,
    /// Host sampling and prompt log-probs (host path only).
    pub host_sampling: f64,
    /// Tokens appended, stops checked, finished requests' blocks freed.
    pub update: f64,
    /// Detokenizing and sending each request's delta.
    pub outputs: f64,
}

/// Static facts about the loaded model and the engine's capacity (logged at start, shown by `/v1/models`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// A short name for the model (e.g. "SmolLM2-135M-Instruct").
    pub name: String,
    pub path: String,
    pub format: String,
    pub architecture: String,
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub block_size: usize,
    pub num_kv_blocks: usize,
    /// How many max-length requests fit in the KV cache at once.
    pub max_concurrency: f64,
    pub has_tokenizer: bool,
    pub has_chat_template: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub num_threads: usize,
    /// `"cpu"` (other backends later).
    pub device: String,
    /// The CPU kernel family in use (`avx512-vnni`, `avx-vnni`, `avx2`, `neon-dotprod`, `scalar`), detected at
    /// start-up.
    pub cpu_isa: String,
    /// The CPU matmuls' numeric mode: `fast` (int8 activations) or `exact` (f32 activations).
    pub cpu_precision: String,
    /// Wall seconds of each start-up phase, in order (`load_model`: reading and parsing the files; `tokenizer`;
    /// on CUDA `device_init`, `weights_upload`, `profile_step`, `kv_cache_alloc`, `graph_capture`; on the CPU
    /// `backend_init`, `weights_prepare`), and their sum: vLLM's start-up breakdown (issue 13's start-up target).
    pub startup_phases: Vec<StartupPhase>,
    pub startup_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StartupPhase {
    pub name: String,
    pub seconds: f64,
}

impl ModelInfo {
    /// `load_model 2.10 s, tokenizer 0.05 s, ...` for log lines.
    pub fn startup_summary(&self) -> String {
        let parts: Vec<String> = self.startup_phases.iter().map(|p| format!("{} {:.2} s", p.name, p.seconds)).collect();
        format!("start-up {:.2} s: {}", self.startup_s, parts.join(", "))
    }
}
