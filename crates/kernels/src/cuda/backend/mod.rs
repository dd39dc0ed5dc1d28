//! `CudaBackend`: the backend ops (`crate::backend::Backend`) on one GPU — bf16, f16 or f32 weights (fused
//! parts uploaded into one matrix, so q|k|v and gate|up are one GEMM each), the paged KV cache, persistent
//! step-input, activation and sampling buffers sized for the largest step.
//!
//! Start-up follows vLLM: `new` binds the GPU, the model uploads its weights and allocates its activations
//! through the ops, then `finish_load` runs one profile step of `max_num_batched_tokens` tokens with the model's
//! forward, gives the KV cache what `gpu_memory_utilization` leaves (see `memory_plan`) and captures the decode
//! graphs by running that same forward under stream capture. Per step the host uploads the batch's index arrays
//! into the persistent buffers and launches (or replays a graph); the only synchronizations are the copies back
//! of logits or sampled tokens.

use std::collections::HashMap;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::device::{driver_err, Arg, DeviceBuffer, FloatBuffer, Gpu};
use super::error::CudaError;
use super::gemm::{Gemm, OutType};
use super::graph_sizes::{bucket_for, capture_sizes};
use super::memory_plan::{plan_kv_blocks, KvPlan};
use super::{
    mask_words, ActivationDtype, CudaOptions, DeviceSample, DeviceSampleParams, ModelShape, TokenEdit,
    MAX_DEVICE_TOKEN_EDITS, MAX_DEVICE_TOP_LOGPROBS,
};
use crate::backend::{Backend, Forward, Rows, TensorId, WeightId};
use crate::InputBatch;

mod graphs;
mod moe;
mod ops;
mod sampling;
mod step;
mod weights;

use graphs::StepGraph;
use step::{flash_shared_bytes, StepShape, ATTENTION_PART_BLOCKS, FLASH_PART_ROWS};

/// Step inputs, uploaded each step into the same addresses (what CUDA graphs replay against).
struct Inputs {
    tokens: DeviceBuffer<u32>,
    positions: DeviceBuffer<u32>,
    slots: DeviceBuffer<i64>,
    query_start_loc: DeviceBuffer<u32>,
    seq_lens: DeviceBuffer<u32>,
    block_tables: DeviceBuffer<u32>,
    logits_indices: DeviceBuffer<u32>,
    /// Attention work list: (sequence, first query offset) per tile.
    tile_seq: DeviceBuffer<u32>,
    tile_q0: DeviceBuffer<u32>,
    block_pairs: DeviceBuffer<u32>,
    sample_params: DeviceBuffer<DeviceSampleParams>,
    token_edits: DeviceBuffer<TokenEdit>,
    /// `[logits_capacity, mask_words(vocab)]`: the allowed-token bitmasks of a launch's constrained rows.
    token_masks: DeviceBuffer<u32>,
    /// The logits row of each sample, when the LM head runs on gathered rows.
    sample_logits_rows: DeviceBuffer<u32>,
}

/// The backend's own working buffers: attention partials, logits and what sampling writes.
struct Scratch {
    /// `[logits_capacity, vocab]` f32.
    logits: DeviceBuffer<f32>,
    sampled_ids: DeviceBuffer<u32>,
    sampled_logprobs: DeviceBuffer<f32>,
    sampled_ranks: DeviceBuffer<i32>,
    /// `[logits_capacity, MAX_DEVICE_TOP_LOGPROBS]`.
    top_ids: DeviceBuffer<u32>,
    top_logprobs: DeviceBuffer<f32>,
    /// Split-KV attention partials: `[ATTENTION_PART_BLOCKS][rows][head_dim]` and (max, sum) per row.
    part_acc: DeviceBuffer<f32>,
    part_ml: DeviceBuffer<f32>,
    /// The tensor-core kernel's partials: `[FLASH_PART_ROWS][head_dim]` and (max, sum) per row (empty when
    /// the head dim has no tensor-core kernel).
    flash_part_acc: DeviceBuffer<f32>,
    flash_part_ml: DeviceBuffer<f32>,
}

/// The LM head the last forward asked for (`Backend::lm_head`): run when logits or samples are wanted, in
/// chunks of `logits_capacity` rows.
#[derive(Clone, Copy)]
struct PendingHead {
    hidden: u64,
    weight: u64,
    hidden_size: usize,
    /// Gemma 2's final-logit soft-cap, applied to the logits right after the product.
    final_softcap: Option<f32>,
}

/// A RoPE table on the device: `rotary_half` inverse frequencies (the first `2 * rotary_half` dims of a head
/// rotate) and the factor on cos and sin (LongRoPE's attention factor; 1 otherwise).
struct DeviceRope {
    inv_freq: DeviceBuffer<f32>,
    rotary_half: usize,
    attention_factor: f32,
}

pub struct CudaBackend {
    gpu: Gpu,
    gemm: Gemm,
    shape: ModelShape,
    opts: CudaOptions,
    weights: Vec<FloatBuffer>,
    vectors: Vec<FloatBuffer>,
    /// The same vectors in f32 (Gemma's norms read these; see `Norm::f32_weights`).
    vectors_f32: Vec<DeviceBuffer<f32>>,
    ropes: Vec<DeviceRope>,
    acts: Vec<FloatBuffer>,
    /// K then V of every layer: `[layers][2][num_blocks * block_size * kv_dim]`.
    kv: FloatBuffer,
    num_blocks: usize,
    inputs: Inputs,
    scratch: Scratch,
    max_tokens: usize,
    max_seqs: usize,
    max_blocks_per_seq: usize,
    logits_capacity: usize,
    /// The step the ops are launched for (set by `run_step` and by graph capture).
    step: StepShape,
    /// Logits rows of the last forward.
    num_logits_rows: usize,
    head: Option<PendingHead>,
    /// `[logits_capacity, hidden]`: the LM head's input rows when samples repeat or skip rows (allocated by the
    /// profile step, once the hidden size is known).
    gathered_hidden: Option<FloatBuffer>,
    plan: KvPlan,
    /// Decode-step graphs by padded batch size (empty with `enforce_eager`).
    graphs: HashMap<usize, StepGraph>,
    graph_sizes: Vec<usize>,
    /// Attention on the tensor-core kernel where the head dim allows (default); `PAGEDLLM_CUDA_ATTENTION=core`
    /// keeps every step on the CUDA-core kernel, for A/B measurements.
    flash_attention: bool,
    host: HostScratch,
    kernels: KernelNames,
    /// The MoE layers' working buffers (allocated by the first MoE op, in the profile step).
    moe: Option<moe::MoeScratch>,
    /// Wall seconds of `finish_load`'s phases (profile step, KV cache allocation, graph capture), for the
    /// engine's start-up report.
    startup_phases: Vec<(&'static str, f64)>,
}

/// Entry points of the kernels a step launches, for this model's head dim and float type (built once, so a
/// step formats no names).
struct KernelNames {
    add_rms_norm: String,
    add_rms_norm_f32w: String,
    rope_qkv_cache: String,
    silu_mul: String,
    gelu_tanh_mul: String,
    embedding_gather_scaled: String,
    attention: String,
    attention_combine: String,
    flash_attention: String,
    flash_attention_combine: String,
    moe_gemm: String,
    moe_combine: String,
}

impl KernelNames {
    fn new(shape: &ModelShape, dtype: ActivationDtype) -> Self {
        let (hd, t) = (shape.layout.heads.head_dim, dtype.kernel_suffix());
        KernelNames {
            add_rms_norm: format!("add_rms_norm_{t}"),
            add_rms_norm_f32w: format!("add_rms_norm_f32w_{t}"),
            rope_qkv_cache: format!("rope_qkv_cache_{t}"),
            silu_mul: format!("silu_mul_{t}"),
            gelu_tanh_mul: format!("gelu_tanh_mul_{t}"),
            embedding_gather_scaled: format!("embedding_gather_scaled_{t}"),
            attention: format!("paged_attention_hd{hd}_{t}"),
            attention_combine: format!("attention_combine_hd{hd}_{t}"),
            flash_attention: format!("flash_attention_hd{hd}_{t}"),
            flash_attention_combine: format!("flash_attention_combine_hd{hd}_{t}"),
            moe_gemm: format!("moe_gemm_{t}"),
            moe_combine: format!("moe_combine_{t}"),
        }
    }
}

/// Host-side staging reused across steps (so a step's staging allocates nothing once the vectors have grown).
#[derive(Default)]
struct HostScratch {
    ids: Vec<u32>,
    tables: Vec<u32>,
    slots: Vec<i64>,
    /// 0, 1, 2, ...: query starts, logits rows and tiles of a padded decode.
    iota: Vec<u32>,
    /// Attention tiles of an eager step (see `fill_tiles`).
    tile_seq: Vec<u32>,
    tile_q0: Vec<u32>,
}

/// Copy-on-write pairs uploaded per launch.
const MAX_BLOCK_PAIRS: usize = 4096;

impl CudaBackend {
    /// Binds the GPU and allocates the step buffers; the model then uploads its weights through the ops, and
    /// `finish_load` sizes the KV cache.
    pub fn new(opts: &CudaOptions, shape: &ModelShape) -> Result<Self, CudaError> {
        shape
            .check()
            .map_err(|m| CudaError::Unsupported(format!("the CUDA backend cannot run this model: {m}")))?;
        if opts.block_size == 0 || opts.max_num_batched_tokens == 0 || opts.max_num_seqs == 0 || opts.max_model_len == 0
        {
            return Err(CudaError::Unsupported(
                "block_size, max_num_batched_tokens, max_num_seqs and max_model_len must be positive".into(),
            ));
        }
        let dtype = opts.dtype;
        let gpu = Gpu::new(opts.ordinal)?;
        let hd = shape.layout.heads.head_dim;
        if shape.flash_q_tile(dtype).is_some() {
            let kernel = format!("flash_attention_hd{hd}_{}", dtype.kernel_suffix());
            gpu.set_max_dynamic_shared(&kernel, flash_shared_bytes(hd))?;
        }
        gpu.bind()?;
        let gemm = Gemm::new(dtype)?;
        let max_tokens = opts.max_num_batched_tokens;
        let max_seqs = opts.max_num_seqs.max(1);
        let max_blocks_per_seq = opts.max_model_len.div_ceil(opts.block_size) + 1;
        // Sampling needs one row per sequence; prompt log-probs stream through in chunks of this many rows.
        let logits_capacity = max_seqs.max(256).min(max_tokens.max(max_seqs));
        let flash_rows = if shape.flash_q_tile(dtype).is_some() {
            FLASH_PART_ROWS
        } else {
            1
        };
        let inputs = Inputs {
            tokens: DeviceBuffer::alloc(max_tokens, "step inputs")?,
            positions: DeviceBuffer::alloc(max_tokens, "step inputs")?,
            slots: DeviceBuffer::alloc(max_tokens, "step inputs")?,
            query_start_loc: DeviceBuffer::alloc(max_seqs + 1, "step inputs")?,
            seq_lens: DeviceBuffer::alloc(max_seqs, "step inputs")?,
            block_tables: DeviceBuffer::alloc(max_seqs * max_blocks_per_seq, "block tables")?,
            logits_indices: DeviceBuffer::alloc(max_tokens, "step inputs")?,
            tile_seq: DeviceBuffer::alloc(max_tokens, "step inputs")?,
            tile_q0: DeviceBuffer::alloc(max_tokens, "step inputs")?,
            block_pairs: DeviceBuffer::alloc(2 * MAX_BLOCK_PAIRS, "block copy list")?,
            sample_params: DeviceBuffer::alloc(logits_capacity, "sampling inputs")?,
            token_edits: DeviceBuffer::alloc(MAX_DEVICE_TOKEN_EDITS, "sampling inputs")?,
            token_masks: DeviceBuffer::alloc(logits_capacity * mask_words(shape.vocab_size), "sampling inputs")?,
            sample_logits_rows: DeviceBuffer::alloc(logits_capacity, "sampling inputs")?,
        };
        let v = shape.vocab_size;
        let scratch = Scratch {
            logits: DeviceBuffer::alloc(logits_capacity * v, "logits")?,
            sampled_ids: DeviceBuffer::alloc(logits_capacity, "sampled tokens")?,
            sampled_logprobs: DeviceBuffer::alloc(logits_capacity, "sampled tokens")?,
            sampled_ranks: DeviceBuffer::alloc(logits_capacity, "sampled tokens")?,
            top_ids: DeviceBuffer::alloc(logits_capacity * MAX_DEVICE_TOP_LOGPROBS, "sampled tokens")?,
            top_logprobs: DeviceBuffer::alloc(logits_capacity * MAX_DEVICE_TOP_LOGPROBS, "sampled tokens")?,
            part_acc: DeviceBuffer::alloc(ATTENTION_PART_BLOCKS * shape.attention_rows() * hd, "attention partials")?,
            part_ml: DeviceBuffer::alloc(ATTENTION_PART_BLOCKS * shape.attention_rows() * 2, "attention partials")?,
            flash_part_acc: DeviceBuffer::alloc(flash_rows * hd, "attention partials")?,
            flash_part_ml: DeviceBuffer::alloc(flash_rows * 2, "attention partials")?,
        };
        let bytes_per_block = opts.block_size * shape.kv_bytes_per_token(dtype);
        let values_per_block = bytes_per_block / dtype.bytes();
        Ok(Self {
            gpu,
            gemm,
            shape: shape.clone(),
            opts: opts.clone(),
            weights: Vec::new(),
            vectors: Vec::new(),
            vectors_f32: Vec::new(),
            ropes: Vec::new(),
            acts: Vec::new(),
            // A one-block cache for the profile step (every block table entry points at block 0).
            kv: FloatBuffer::alloc(values_per_block, dtype, "the profiling KV block")?,
            num_blocks: 1,
            inputs,
            scratch,
            max_tokens,
            max_seqs,
            max_blocks_per_seq,
            logits_capacity,
            step: StepShape::default(),
            num_logits_rows: 0,
            head: None,
            gathered_hidden: None,
            graphs: HashMap::new(),
            graph_sizes: Vec::new(),
            flash_attention: std::env::var("PAGEDLLM_CUDA_ATTENTION").map_or(true, |v| v != "core"),
            host: HostScratch::default(),
            kernels: KernelNames::new(shape, dtype),
            moe: None,
            startup_phases: Vec::new(),
            plan: KvPlan {
                total_bytes: 0,
                in_use_bytes: 0,
                budget_bytes: 0,
                kv_bytes: 0,
                bytes_per_block,
                num_blocks: 0,
            },
        })
    }

    /// After the model is loaded: profiles its largest step, sizes the KV cache from what is left, and
    /// captures the decode graphs of `forward` (unless `enforce_eager`).
    pub fn finish_load(&mut self, forward: &mut Forward<'_, Self>) -> Result<(), CudaError> {
        let t0 = std::time::Instant::now();
        self.profile_step(forward)?;
        let (free, total) = self.gpu.mem_info()?;
        self.startup_phases.push(("profile_step", t0.elapsed().as_secs_f64()));
        let t1 = std::time::Instant::now();
        let dtype = self.opts.dtype;
        let bytes_per_block = self.plan.bytes_per_block;
        self.kv = FloatBuffer::alloc(1, dtype, "placeholder")?; // release the profiling block before planning
        let in_use = total - free - bytes_per_block;
        let plan = match self.opts.num_blocks_override {
            Some(n) => KvPlan {
                total_bytes: total,
                in_use_bytes: in_use,
                budget_bytes: (total as f64 * self.opts.gpu_memory_utilization) as usize,
                kv_bytes: n * bytes_per_block,
                bytes_per_block,
                num_blocks: n,
            },
            None => plan_kv_blocks(total, in_use, self.opts.gpu_memory_utilization, bytes_per_block)
                .map_err(CudaError::OutOfMemory)?,
        };
        self.kv = FloatBuffer::alloc(plan.num_blocks * (bytes_per_block / dtype.bytes()), dtype, "the KV cache")?;
        self.num_blocks = plan.num_blocks;
        self.plan = plan;
        self.startup_phases.push(("kv_cache_alloc", t1.elapsed().as_secs_f64()));
        if !self.opts.enforce_eager {
            let t2 = std::time::Instant::now();
            self.capture_decode_graphs(forward)?;
            self.startup_phases.push(("graph_capture", t2.elapsed().as_secs_f64()));
        }
        Ok(())
    }

    /// Wall seconds of the phases of `finish_load`, in order: `profile_step`, `kv_cache_alloc`, `graph_capture`
    /// (absent with `enforce_eager`).
    pub fn startup_phases(&self) -> &[(&'static str, f64)] {
        &self.startup_phases
    }

    /// One step of `max_tokens` tokens (sequences of at most `max_model_len`), writing no KV, plus the LM
    /// head and sampler on the largest row count: peak activation memory is then in use for the planner.
    fn profile_step(&mut self, forward: &mut Forward<'_, Self>) -> Result<(), CudaError> {
        let per_seq = self.opts.max_model_len.min(self.max_tokens);
        let num_seqs = self.max_tokens.div_ceil(per_seq).min(self.max_seqs);
        // No sequence may exceed max_model_len (its block table would be too short).
        let t = self.max_tokens.min(num_seqs * per_seq);
        let mut batch = InputBatch {
            block_size: self.opts.block_size,
            max_blocks_per_seq: self.max_blocks_per_seq,
            ..Default::default()
        };
        batch.query_start_loc.push(0);
        let mut left = t;
        for s in 0..num_seqs {
            let n = if s + 1 == num_seqs { left } else { per_seq.min(left) };
            left -= n;
            for p in 0..n {
                batch.token_ids.push((p % self.shape.vocab_size) as u32);
                batch.positions.push(p as u32);
                batch.slot_mapping.push(-1);
            }
            batch.query_start_loc.push(batch.token_ids.len() as u32);
            batch.seq_lens.push(n as u32);
            batch
                .block_tables
                .extend(std::iter::repeat_n(0, self.max_blocks_per_seq));
            batch.logits_indices.push(batch.token_ids.len() as u32 - 1);
        }
        self.run_step(&mut batch, forward)?;
        let rows = self.num_logits_rows;
        if let Some(head) = self.head {
            let len = self.logits_capacity * head.hidden_size;
            self.gathered_hidden = Some(FloatBuffer::alloc(len, self.opts.dtype, "gathered LM-head rows")?);
        }
        // The sampler's heaviest path (truncation and log-prob lists) runs once here too.
        let heavy = DeviceSampleParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 50,
            num_top_logprobs: MAX_DEVICE_TOP_LOGPROBS as i32,
            ..DeviceSampleParams::default()
        };
        let logits_rows: Vec<u32> = (0..rows as u32).collect();
        self.sample(&vec![heavy; rows], &logits_rows, &[], &[])?;
        self.gpu.synchronize()
    }

    /// Whether attention runs on the tensor-core kernel (flash_attention.cu) for this model.
    pub(super) fn uses_flash_attention(&self) -> bool {
        self.flash_attention && self.shape.flash_q_tile(self.opts.dtype).is_some()
    }

    /// The float type of weights, activations and KV cache.
    pub fn dtype(&self) -> ActivationDtype {
        self.opts.dtype
    }

    pub fn device_name(&self) -> &str {
        &self.gpu.name
    }

    pub fn kv_plan(&self) -> &KvPlan {
        &self.plan
    }

    pub fn num_kv_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Test support: fills the activation buffers and logits (and with `kv`, the whole KV cache) with 0xFF
    /// bytes — NaN in bf16 and f32 — so anything a step reads without writing it first shows up as NaN.
    pub fn poison(&mut self, kv: bool) -> Result<(), CudaError> {
        self.gpu.bind()?;
        let s = &self.scratch;
        let mut bufs: Vec<(u64, usize)> = vec![
            (s.part_acc.ptr(), s.part_acc.bytes()),
            (s.part_ml.ptr(), s.part_ml.bytes()),
            (s.logits.ptr(), s.logits.bytes()),
        ];
        bufs.extend(self.acts.iter().map(|a| (a.ptr(), a.bytes())));
        for (ptr, bytes) in bufs {
            self.gpu.fill_bytes(ptr, 0xFF, bytes)?;
        }
        if kv {
            self.gpu.fill_bytes(self.kv.ptr(), 0xFF, self.kv.bytes())?;
        }
        self.gpu.synchronize()
    }

    fn kv_layer(&self, layer: usize) -> (u64, u64) {
        let per = self.num_blocks * self.opts.block_size * self.shape.kv_dim();
        (self.kv.at(2 * layer * per), self.kv.at((2 * layer + 1) * per))
    }

    fn act(&self, t: TensorId) -> u64 {
        self.acts[t.index as usize].ptr()
    }

    fn weight(&self, w: WeightId) -> u64 {
        self.weights[w.index as usize].ptr()
    }

    /// Rows of `t` in the step being launched.
    fn rows(&self, t: TensorId) -> usize {
        match t.rows {
            Rows::Tokens => self.step.tokens,
            Rows::Logits => self.step.logits_rows,
        }
    }

    fn check_batch(&self, b: &InputBatch) -> Result<(), CudaError> {
        let bad = |m: String| Err(CudaError::Unsupported(m));
        if b.num_tokens() > self.max_tokens {
            return bad(format!(
                "{} tokens in one step; this GPU runner holds {}",
                b.num_tokens(),
                self.max_tokens
            ));
        }
        if b.num_seqs() > self.max_seqs {
            return bad(format!(
                "{} sequences in one step; this GPU runner holds {}",
                b.num_seqs(),
                self.max_seqs
            ));
        }
        if b.max_blocks_per_seq > self.max_blocks_per_seq {
            return bad(format!(
                "block tables of {} blocks; at most {}",
                b.max_blocks_per_seq, self.max_blocks_per_seq
            ));
        }
        if b.block_size != self.opts.block_size {
            return bad(format!("block size {} != {}", b.block_size, self.opts.block_size));
        }
        let slots = (self.num_blocks * self.opts.block_size) as i64;
        if b.slot_mapping.iter().any(|&s| s >= slots) || b.block_tables.iter().any(|&x| x as usize >= self.num_blocks) {
            return bad("a slot or block id is outside the KV cache".into());
        }
        if b.token_ids.iter().any(|&t| t as usize >= self.shape.vocab_size) {
            return bad("a token id is outside the vocabulary".into());
        }
        Ok(())
    }
}
