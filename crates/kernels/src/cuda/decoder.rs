//! `CudaDecoder`: a Llama-family decoder resident on one GPU — bf16 weights (q|k|v and gate|up fused so each
//! sub-layer is one GEMM), the paged KV cache, persistent step-input and activation buffers sized for the
//! largest step, and the forward pass over one flattened varlen batch.
//!
//! Start-up follows vLLM: load weights, run one profile step of `max_num_batched_tokens` tokens, then give the
//! KV cache what `gpu_memory_utilization` leaves (see `memory_plan`). Per step the host uploads the batch's
//! index arrays into the persistent buffers and launches; the only synchronizations are the copies back of
//! logits or sampled tokens.

use std::collections::HashMap;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use half::bf16;

use super::device::{driver_err, Arg, DeviceBuffer, Gpu};
use super::error::CudaError;
use super::gemm::{Gemm, OutType};
use super::graph_sizes::{bucket_for, capture_sizes};
use super::memory_plan::{plan_kv_blocks, KvPlan};
use super::{CudaOptions, DecoderShape, FetchWeight};
use crate::InputBatch;

struct Layer {
    input_norm: DeviceBuffer<bf16>,
    /// `[q_dim + 2 kv_dim, hidden]`: q, k, v projections stacked.
    qkv: DeviceBuffer<bf16>,
    qkv_bias: Option<DeviceBuffer<bf16>>,
    o_proj: DeviceBuffer<bf16>,
    post_norm: DeviceBuffer<bf16>,
    /// `[2 inter, hidden]`: gate then up.
    gate_up: DeviceBuffer<bf16>,
    down: DeviceBuffer<bf16>,
}

/// Step inputs, uploaded each step into the same addresses (what CUDA graphs will replay against).
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
    temperatures: DeviceBuffer<f32>,
    seeds: DeviceBuffer<u64>,
}

/// Activations for up to `max_tokens` tokens.
struct Activations {
    residual: DeviceBuffer<bf16>,
    normed: DeviceBuffer<bf16>,
    qkv: DeviceBuffer<bf16>,
    attn: DeviceBuffer<bf16>,
    delta: DeviceBuffer<bf16>,
    gate_up: DeviceBuffer<bf16>,
    act: DeviceBuffer<bf16>,
    /// Final-normed hidden states of the logits rows.
    last_hidden: DeviceBuffer<bf16>,
    /// `[logits_capacity, vocab]` f32.
    logits: DeviceBuffer<f32>,
    sampled_ids: DeviceBuffer<u32>,
    sampled_logprobs: DeviceBuffer<f32>,
    /// Split-KV attention partials: `[ATTENTION_PART_BLOCKS][rows][head_dim]` and (max, sum) per row.
    part_acc: DeviceBuffer<f32>,
    part_ml: DeviceBuffer<f32>,
}

/// At most this many (tile, kv head, split) attention blocks write partials.
const ATTENTION_PART_BLOCKS: usize = 256;

/// KV splits per attention block (flash-decoding): a small grid — decode at low batch — is spread over the
/// KV range so the GPU's SMs all stream K/V; a large grid runs unsplit.
fn attention_splits(tiles: usize, kv_heads: usize) -> usize {
    let blocks = tiles * kv_heads;
    if blocks >= ATTENTION_PART_BLOCKS / 2 {
        1
    } else {
        (ATTENTION_PART_BLOCKS / blocks.max(1)).clamp(1, 16)
    }
}

pub struct CudaDecoder {
    gpu: Gpu,
    gemm: Gemm,
    shape: DecoderShape,
    opts: CudaOptions,
    embed: DeviceBuffer<bf16>,
    /// None when tied to `embed`.
    lm_head: Option<DeviceBuffer<bf16>>,
    final_norm: DeviceBuffer<bf16>,
    layers: Vec<Layer>,
    inv_freq: DeviceBuffer<f32>,
    /// K then V of every layer: `[layers][2][num_blocks * block_size * kv_dim]`.
    kv: DeviceBuffer<bf16>,
    num_blocks: usize,
    inputs: Inputs,
    act: Activations,
    max_tokens: usize,
    max_seqs: usize,
    max_blocks_per_seq: usize,
    logits_capacity: usize,
    /// Logits rows of the last forward (their final-normed hidden states are in `act.last_hidden`).
    num_logits_rows: usize,
    plan: KvPlan,
    /// Decode-step graphs by padded batch size (empty with `enforce_eager`).
    graphs: HashMap<usize, StepGraph>,
    graph_sizes: Vec<usize>,
}

/// A captured decode step. The graph only refers to the decoder's own persistent buffers.
struct StepGraph(CudaGraph);
// SAFETY: the graph is launched only from the thread that owns the decoder (one at a time), on its stream.
unsafe impl Send for StepGraph {}

/// The launch-shape of one step: what the body's kernels need besides the persistent buffers.
#[derive(Clone, Copy)]
struct StepShape {
    tokens: usize,
    /// Block-table row width.
    width: usize,
    tiles: usize,
    logits_rows: usize,
}

/// Copy-on-write pairs uploaded per launch.
const MAX_BLOCK_PAIRS: usize = 4096;

fn upload_weight(
    gpu: &Gpu,
    fetch: &mut FetchWeight<'_>,
    dst: &DeviceBuffer<bf16>,
    offset: usize,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<(), CudaError> {
    let host = fetch(name, rows, cols).map_err(CudaError::Weights)?;
    if host.len() != rows * cols {
        return Err(CudaError::Weights(format!(
            "`{name}` has {} values, expected {rows} x {cols}",
            host.len()
        )));
    }
    gpu.upload(dst.at(offset), &host)?;
    // The source is pageable host memory: finish before it is dropped.
    gpu.synchronize()
}

fn weight(
    gpu: &Gpu,
    fetch: &mut FetchWeight<'_>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<DeviceBuffer<bf16>, CudaError> {
    let buf = DeviceBuffer::alloc(rows * cols, name)?;
    upload_weight(gpu, fetch, &buf, 0, name, rows, cols)?;
    Ok(buf)
}

impl CudaDecoder {
    /// Uploads the weights, profiles the largest step and sizes the KV cache.
    pub fn load(opts: &CudaOptions, shape: &DecoderShape, fetch: &mut FetchWeight<'_>) -> Result<Self, CudaError> {
        shape
            .check()
            .map_err(|m| CudaError::Unsupported(format!("the CUDA backend cannot run this model: {m}")))?;
        if opts.block_size == 0 || opts.max_num_batched_tokens == 0 || opts.max_num_seqs == 0 || opts.max_model_len == 0
        {
            return Err(CudaError::Unsupported(
                "block_size, max_num_batched_tokens, max_num_seqs and max_model_len must be positive".into(),
            ));
        }
        let gpu = Gpu::new(opts.ordinal)?;
        gpu.bind()?;
        let gemm = Gemm::new()?;
        let s = shape;
        let (h, inter, q_dim, kv_dim, qkv_dim) =
            (s.hidden_size, s.intermediate_size, s.q_dim(), s.kv_dim(), s.qkv_dim());

        let embed = weight(&gpu, fetch, "model.embed_tokens.weight", s.vocab_size, h)?;
        let mut layers = Vec::with_capacity(s.num_layers);
        for l in 0..s.num_layers {
            let p = format!("model.layers.{l}");
            let qkv = DeviceBuffer::alloc(qkv_dim * h, "qkv weights")?;
            upload_weight(&gpu, fetch, &qkv, 0, &format!("{p}.self_attn.q_proj.weight"), q_dim, h)?;
            upload_weight(
                &gpu,
                fetch,
                &qkv,
                q_dim * h,
                &format!("{p}.self_attn.k_proj.weight"),
                kv_dim,
                h,
            )?;
            upload_weight(
                &gpu,
                fetch,
                &qkv,
                (q_dim + kv_dim) * h,
                &format!("{p}.self_attn.v_proj.weight"),
                kv_dim,
                h,
            )?;
            let qkv_bias = if s.attention_bias {
                let b = DeviceBuffer::alloc(qkv_dim, "qkv bias")?;
                upload_weight(&gpu, fetch, &b, 0, &format!("{p}.self_attn.q_proj.bias"), 1, q_dim)?;
                upload_weight(&gpu, fetch, &b, q_dim, &format!("{p}.self_attn.k_proj.bias"), 1, kv_dim)?;
                upload_weight(
                    &gpu,
                    fetch,
                    &b,
                    q_dim + kv_dim,
                    &format!("{p}.self_attn.v_proj.bias"),
                    1,
                    kv_dim,
                )?;
                Some(b)
            } else {
                None
            };
            let gate_up = DeviceBuffer::alloc(2 * inter * h, "gate/up weights")?;
            upload_weight(&gpu, fetch, &gate_up, 0, &format!("{p}.mlp.gate_proj.weight"), inter, h)?;
            upload_weight(
                &gpu,
                fetch,
                &gate_up,
                inter * h,
                &format!("{p}.mlp.up_proj.weight"),
                inter,
                h,
            )?;
            layers.push(Layer {
                input_norm: weight(&gpu, fetch, &format!("{p}.input_layernorm.weight"), 1, h)?,
                qkv,
                qkv_bias,
                o_proj: weight(&gpu, fetch, &format!("{p}.self_attn.o_proj.weight"), h, q_dim)?,
                post_norm: weight(&gpu, fetch, &format!("{p}.post_attention_layernorm.weight"), 1, h)?,
                gate_up,
                down: weight(&gpu, fetch, &format!("{p}.mlp.down_proj.weight"), h, inter)?,
            });
        }
        let final_norm = weight(&gpu, fetch, "model.norm.weight", 1, h)?;
        let lm_head = if s.tie_word_embeddings {
            None
        } else {
            Some(weight(&gpu, fetch, "lm_head.weight", s.vocab_size, h)?)
        };
        let inv_freq = DeviceBuffer::alloc(s.rope_inv_freq.len(), "RoPE frequencies")?;
        gpu.upload(inv_freq.ptr(), &s.rope_inv_freq)?;

        let max_tokens = opts.max_num_batched_tokens;
        let max_seqs = opts.max_num_seqs.max(1);
        let max_blocks_per_seq = opts.max_model_len.div_ceil(opts.block_size) + 1;
        // Sampling needs one row per sequence; prompt log-probs stream through in chunks of this many rows.
        let logits_capacity = max_seqs.max(256).min(max_tokens.max(max_seqs));
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
            temperatures: DeviceBuffer::alloc(logits_capacity, "sampling inputs")?,
            seeds: DeviceBuffer::alloc(logits_capacity, "sampling inputs")?,
        };
        let act = Activations {
            residual: DeviceBuffer::alloc(max_tokens * h, "activations")?,
            normed: DeviceBuffer::alloc(max_tokens * h, "activations")?,
            qkv: DeviceBuffer::alloc(max_tokens * qkv_dim, "activations")?,
            attn: DeviceBuffer::alloc(max_tokens * q_dim, "activations")?,
            delta: DeviceBuffer::alloc(max_tokens * h, "activations")?,
            gate_up: DeviceBuffer::alloc(max_tokens * 2 * inter, "activations")?,
            act: DeviceBuffer::alloc(max_tokens * inter, "activations")?,
            last_hidden: DeviceBuffer::alloc(max_tokens * h, "activations")?,
            logits: DeviceBuffer::alloc(logits_capacity * s.vocab_size, "logits")?,
            sampled_ids: DeviceBuffer::alloc(logits_capacity, "sampled tokens")?,
            sampled_logprobs: DeviceBuffer::alloc(logits_capacity, "sampled tokens")?,
            part_acc: DeviceBuffer::alloc(
                ATTENTION_PART_BLOCKS * s.attention_rows() * s.head_dim,
                "attention partials",
            )?,
            part_ml: DeviceBuffer::alloc(ATTENTION_PART_BLOCKS * s.attention_rows() * 2, "attention partials")?,
        };
        let bytes_per_block = 2 * s.num_layers * opts.block_size * kv_dim * 2;
        let mut dec = Self {
            gpu,
            gemm,
            shape: s.clone(),
            opts: opts.clone(),
            embed,
            lm_head,
            final_norm,
            layers,
            inv_freq,
            // A one-block cache for the profile step (every block table entry points at block 0).
            kv: DeviceBuffer::alloc(bytes_per_block / 2, "the profiling KV block")?,
            num_blocks: 1,
            inputs,
            act,
            max_tokens,
            max_seqs,
            max_blocks_per_seq,
            logits_capacity,
            num_logits_rows: 0,
            graphs: HashMap::new(),
            graph_sizes: Vec::new(),
            plan: KvPlan {
                total_bytes: 0,
                in_use_bytes: 0,
                budget_bytes: 0,
                kv_bytes: 0,
                bytes_per_block,
                num_blocks: 0,
            },
        };
        dec.profile_step()?;
        let (free, total) = dec.gpu.mem_info()?;
        dec.kv = DeviceBuffer::alloc(1, "placeholder")?; // release the profiling block before planning
        let in_use = total - free - bytes_per_block / 2;
        let plan = match opts.num_blocks_override {
            Some(n) => KvPlan {
                total_bytes: total,
                in_use_bytes: in_use,
                budget_bytes: (total as f64 * opts.gpu_memory_utilization) as usize,
                kv_bytes: n * bytes_per_block,
                bytes_per_block,
                num_blocks: n,
            },
            None => plan_kv_blocks(total, in_use, opts.gpu_memory_utilization, bytes_per_block)
                .map_err(CudaError::OutOfMemory)?,
        };
        dec.kv = DeviceBuffer::alloc(plan.num_blocks * bytes_per_block / 2, "the KV cache")?;
        dec.num_blocks = plan.num_blocks;
        dec.plan = plan;
        if !opts.enforce_eager {
            dec.capture_decode_graphs()?;
        }
        Ok(dec)
    }

    /// One step of `max_tokens` tokens (sequences of at most `max_model_len`), writing no KV, plus the LM
    /// head and sampler on the largest row count: peak activation memory is then in use for the planner.
    fn profile_step(&mut self) -> Result<(), CudaError> {
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
        self.forward(&batch)?;
        let rows = self.num_logits_rows;
        self.sample(&vec![1.0; rows], &vec![0; rows])?;
        self.gpu.synchronize()
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
        let a = &self.act;
        let bufs: [(u64, usize); 11] = [
            (a.part_acc.ptr(), a.part_acc.bytes()),
            (a.part_ml.ptr(), a.part_ml.bytes()),
            (a.residual.ptr(), a.residual.bytes()),
            (a.normed.ptr(), a.normed.bytes()),
            (a.qkv.ptr(), a.qkv.bytes()),
            (a.attn.ptr(), a.attn.bytes()),
            (a.delta.ptr(), a.delta.bytes()),
            (a.gate_up.ptr(), a.gate_up.bytes()),
            (a.act.ptr(), a.act.bytes()),
            (a.last_hidden.ptr(), a.last_hidden.bytes()),
            (a.logits.ptr(), a.logits.bytes()),
        ];
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

    /// Copies whole KV blocks `(from, to)` in every layer (copy-on-write of shared partial blocks).
    pub fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<(), CudaError> {
        self.gpu.bind()?;
        let block_elems = self.opts.block_size * self.shape.kv_dim();
        for chunk in pairs.chunks(MAX_BLOCK_PAIRS) {
            if let Some(&(a, b)) = chunk
                .iter()
                .find(|&&(a, b)| a as usize >= self.num_blocks || b as usize >= self.num_blocks)
            {
                return Err(CudaError::Unsupported(format!(
                    "KV block copy {a} -> {b} is outside {} blocks",
                    self.num_blocks
                )));
            }
            let flat: Vec<u32> = chunk.iter().flat_map(|&(a, b)| [a, b]).collect();
            self.gpu.upload(self.inputs.block_pairs.ptr(), &flat)?;
            for l in 0..self.shape.num_layers {
                let (k, v) = self.kv_layer(l);
                self.gpu.launch(
                    "copy_kv_blocks_bf16",
                    (chunk.len() as u32, 1, 1),
                    256,
                    &[
                        Arg::Ptr(k),
                        Arg::Ptr(v),
                        Arg::Ptr(self.inputs.block_pairs.ptr()),
                        Arg::I32(block_elems as i32),
                    ],
                )?;
            }
        }
        Ok(())
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

    /// Runs the decoder over `batch`; the final hidden states of `batch.logits_indices` stay on the GPU for
    /// [`Self::logits_to_host`] or [`Self::sample`].
    pub fn forward(&mut self, batch: &InputBatch) -> Result<(), CudaError> {
        self.check_batch(batch)?;
        self.gpu.bind()?;
        let t = batch.num_tokens();
        self.num_logits_rows = batch.logits_indices.len();
        if t == 0 {
            return Ok(());
        }
        // Decode-only steps (one token per sequence, each sampled) replay a graph at a padded batch size.
        let decode_only = t == batch.num_seqs()
            && batch.logits_indices.len() == t
            && batch.logits_indices.iter().enumerate().all(|(i, &r)| r as usize == i);
        if decode_only {
            if let Some(size) = bucket_for(t, &self.graph_sizes) {
                if self.graphs.contains_key(&size) {
                    self.upload_padded_decode(batch, size)?;
                    return self.graphs[&size]
                        .0
                        .launch()
                        .map_err(driver_err("replaying a decode graph"));
                }
            }
        }
        let shape = self.upload_batch(batch)?;
        self.launch_body(shape)
    }

    /// Attention tiles of a batch: each sequence's query tokens in runs of `q_tile`.
    fn tiles(&self, batch: &InputBatch) -> (Vec<u32>, Vec<u32>) {
        let q_tile = self.shape.attention_q_tile();
        let (mut seq, mut q0) = (Vec::new(), Vec::new());
        for s in 0..batch.num_seqs() {
            let len = (batch.query_start_loc[s + 1] - batch.query_start_loc[s]) as usize;
            for start in (0..len).step_by(q_tile) {
                seq.push(s as u32);
                q0.push(start as u32);
            }
        }
        (seq, q0)
    }

    fn upload_batch(&mut self, batch: &InputBatch) -> Result<StepShape, CudaError> {
        let (tile_seq, tile_q0) = self.tiles(batch);
        let g = &self.gpu;
        let inp = &self.inputs;
        g.upload(inp.tokens.ptr(), &batch.token_ids)?;
        g.upload(inp.positions.ptr(), &batch.positions)?;
        g.upload(inp.slots.ptr(), &batch.slot_mapping)?;
        g.upload(inp.query_start_loc.ptr(), &batch.query_start_loc)?;
        g.upload(inp.seq_lens.ptr(), &batch.seq_lens)?;
        g.upload(inp.block_tables.ptr(), &batch.block_tables)?;
        g.upload(inp.logits_indices.ptr(), &batch.logits_indices)?;
        g.upload(inp.tile_seq.ptr(), &tile_seq)?;
        g.upload(inp.tile_q0.ptr(), &tile_q0)?;
        Ok(StepShape {
            tokens: batch.num_tokens(),
            width: batch.max_blocks_per_seq,
            tiles: tile_seq.len(),
            logits_rows: batch.logits_indices.len(),
        })
    }

    /// A decode step padded to `size` sequences, in the fixed layout its graph was captured with: full-width
    /// block tables; padding sequences have one token, no KV write, context 1 (they read block 0 and are
    /// never sampled).
    fn upload_padded_decode(&mut self, batch: &InputBatch, size: usize) -> Result<(), CudaError> {
        let n = batch.num_tokens();
        let w = self.max_blocks_per_seq;
        let pad = |v: &[u32], fill: u32| -> Vec<u32> {
            v.iter()
                .copied()
                .chain(std::iter::repeat_n(fill, size - v.len()))
                .collect()
        };
        let mut tables = vec![0u32; size * w];
        for s in 0..n {
            let row = batch.block_table(s);
            tables[s * w..s * w + row.len()].copy_from_slice(row);
        }
        let mut slots = batch.slot_mapping.clone();
        slots.resize(size, -1);
        let idx: Vec<u32> = (0..size as u32).collect();
        let g = &self.gpu;
        let inp = &self.inputs;
        g.upload(inp.tokens.ptr(), &pad(&batch.token_ids, 0))?;
        g.upload(inp.positions.ptr(), &pad(&batch.positions, 0))?;
        g.upload(inp.slots.ptr(), &slots)?;
        let qsl: Vec<u32> = (0..=size as u32).collect();
        g.upload(inp.query_start_loc.ptr(), &qsl)?;
        g.upload(inp.seq_lens.ptr(), &pad(&batch.seq_lens, 1))?;
        g.upload(inp.block_tables.ptr(), &tables)?;
        g.upload(inp.logits_indices.ptr(), &idx)?;
        g.upload(inp.tile_seq.ptr(), &idx)?;
        g.upload(inp.tile_q0.ptr(), &vec![0u32; size])?;
        Ok(())
    }

    fn decode_shape(&self, size: usize) -> StepShape {
        StepShape {
            tokens: size,
            width: self.max_blocks_per_seq,
            tiles: size,
            logits_rows: size,
        }
    }

    /// Captures one decode-step graph per padded batch size (vLLM's CUDA-graph scheme; `--enforce-eager`
    /// skips this). Each capture is preceded by an eager run of the same shape, which creates the cuBLASLt
    /// plans outside the capture.
    fn capture_decode_graphs(&mut self) -> Result<(), CudaError> {
        let sizes = capture_sizes(self.max_seqs.min(self.max_tokens));
        for &size in &sizes {
            let dummy = InputBatch {
                token_ids: vec![0; size],
                positions: vec![0; size],
                query_start_loc: (0..=size as u32).collect(),
                seq_lens: vec![1; size],
                block_tables: vec![0; size],
                max_blocks_per_seq: 1,
                slot_mapping: vec![-1; size],
                logits_indices: (0..size as u32).collect(),
                block_size: self.opts.block_size,
            };
            self.upload_padded_decode(&dummy, size)?;
            let shape = self.decode_shape(size);
            self.launch_body(shape)?;
            self.gpu.synchronize()?;
            let stream = self.gpu.stream.clone();
            stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                .map_err(driver_err("starting a graph capture"))?;
            let body = self.launch_body(shape);
            let graph = stream
                .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH)
                .map_err(driver_err("capturing a decode graph"));
            body?;
            let graph = graph?.ok_or_else(|| CudaError::Unsupported("a decode graph captured nothing".into()))?;
            self.graphs.insert(size, StepGraph(graph));
        }
        self.graph_sizes = sizes;
        self.gpu.synchronize()
    }

    /// Every kernel of one step, from the embedding to the final norm of the logits rows, on the persistent
    /// buffers (so the same launches can be captured into a graph).
    fn launch_body(&mut self, shape: StepShape) -> Result<(), CudaError> {
        let StepShape {
            tokens: t,
            width,
            tiles,
            logits_rows,
        } = shape;
        let g = &self.gpu;
        let inp = &self.inputs;
        let s = &self.shape;
        let (h, inter, q_dim, qkv_dim) = (s.hidden_size, s.intermediate_size, s.q_dim(), s.qkv_dim());
        let a = &self.act;
        let tt = t as u32;
        g.launch(
            "embedding_bf16",
            (tt, 1, 1),
            128,
            &[
                Arg::Ptr(self.embed.ptr()),
                Arg::Ptr(inp.tokens.ptr()),
                Arg::Ptr(a.residual.ptr()),
                Arg::I32(h as i32),
            ],
        )?;
        let norm = |g: &Gpu, delta: u64, weight: u64, out: u64, rows_ptr: u64, rows: u32, write: bool| {
            g.launch(
                "add_rms_norm_bf16",
                (rows, 1, 1),
                256,
                &[
                    Arg::Ptr(a.residual.ptr()),
                    Arg::Ptr(delta),
                    Arg::Ptr(weight),
                    Arg::Ptr(out),
                    Arg::Ptr(rows_ptr),
                    Arg::I32(h as i32),
                    Arg::F32(s.rms_norm_eps),
                    Arg::I32(write as i32),
                ],
            )
        };
        let attention = format!("paged_attention_hd{}_bf16", s.head_dim);
        let combine = format!("attention_combine_hd{}_bf16", s.head_dim);
        let splits = attention_splits(tiles, s.num_kv_heads);
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            // Layer 0 normalizes the embeddings; later layers first add the previous MLP output.
            let delta = if l == 0 { 0 } else { a.delta.ptr() };
            norm(g, delta, layer.input_norm.ptr(), a.normed.ptr(), 0, tt, true)?;
            self.gemm.matmul(
                g,
                a.normed.ptr(),
                layer.qkv.ptr(),
                a.qkv.ptr(),
                t,
                qkv_dim,
                h,
                OutType::Bf16,
            )?;
            let (k_cache, v_cache) = {
                let per = self.num_blocks * self.opts.block_size * s.kv_dim();
                (self.kv.at(2 * l * per), self.kv.at((2 * l + 1) * per))
            };
            g.launch(
                "rope_qkv_cache_bf16",
                (tt, (s.num_heads + s.num_kv_heads) as u32, 1),
                (s.head_dim / 2) as u32,
                &[
                    Arg::Ptr(a.qkv.ptr()),
                    Arg::Ptr(layer.qkv_bias.as_ref().map_or(0, |b| b.ptr())),
                    Arg::Ptr(inp.positions.ptr()),
                    Arg::Ptr(self.inv_freq.ptr()),
                    Arg::Ptr(inp.slots.ptr()),
                    Arg::Ptr(k_cache),
                    Arg::Ptr(v_cache),
                    Arg::I32(s.num_heads as i32),
                    Arg::I32(s.num_kv_heads as i32),
                    Arg::I32(s.head_dim as i32),
                ],
            )?;
            g.launch(
                &attention,
                (tiles as u32, s.num_kv_heads as u32, splits as u32),
                128,
                &[
                    Arg::Ptr(a.qkv.ptr()),
                    Arg::I32(qkv_dim as i32),
                    Arg::Ptr(k_cache),
                    Arg::Ptr(v_cache),
                    Arg::Ptr(inp.block_tables.ptr()),
                    Arg::I32(width as i32),
                    Arg::Ptr(inp.seq_lens.ptr()),
                    Arg::Ptr(inp.query_start_loc.ptr()),
                    Arg::Ptr(inp.tile_seq.ptr()),
                    Arg::Ptr(inp.tile_q0.ptr()),
                    Arg::I32(s.attention_q_tile() as i32),
                    Arg::Ptr(a.attn.ptr()),
                    Arg::I32(s.num_heads as i32),
                    Arg::I32(s.num_kv_heads as i32),
                    Arg::I32(self.opts.block_size as i32),
                    Arg::F32(scale),
                    Arg::I32(splits as i32),
                    Arg::Ptr(a.part_acc.ptr()),
                    Arg::Ptr(a.part_ml.ptr()),
                ],
            )?;
            if splits > 1 {
                g.launch(
                    &combine,
                    (tiles as u32, s.num_kv_heads as u32, 1),
                    128,
                    &[
                        Arg::Ptr(inp.query_start_loc.ptr()),
                        Arg::Ptr(inp.tile_seq.ptr()),
                        Arg::Ptr(inp.tile_q0.ptr()),
                        Arg::I32(s.attention_q_tile() as i32),
                        Arg::Ptr(a.attn.ptr()),
                        Arg::I32(s.num_heads as i32),
                        Arg::I32(s.num_kv_heads as i32),
                        Arg::I32(splits as i32),
                        Arg::Ptr(a.part_acc.ptr()),
                        Arg::Ptr(a.part_ml.ptr()),
                    ],
                )?;
            }
            self.gemm.matmul(
                g,
                a.attn.ptr(),
                layer.o_proj.ptr(),
                a.delta.ptr(),
                t,
                h,
                q_dim,
                OutType::Bf16,
            )?;
            norm(g, a.delta.ptr(), layer.post_norm.ptr(), a.normed.ptr(), 0, tt, true)?;
            self.gemm.matmul(
                g,
                a.normed.ptr(),
                layer.gate_up.ptr(),
                a.gate_up.ptr(),
                t,
                2 * inter,
                h,
                OutType::Bf16,
            )?;
            let n = t * inter;
            g.launch(
                "silu_mul_bf16",
                (n.div_ceil(256).min(65_535) as u32, 1, 1),
                256,
                &[
                    Arg::Ptr(a.gate_up.ptr()),
                    Arg::Ptr(a.act.ptr()),
                    Arg::I32(t as i32),
                    Arg::I32(inter as i32),
                ],
            )?;
            self.gemm.matmul(
                g,
                a.act.ptr(),
                layer.down.ptr(),
                a.delta.ptr(),
                t,
                h,
                inter,
                OutType::Bf16,
            )?;
        }
        // Final residual add + norm on the logits rows only.
        if logits_rows > 0 {
            norm(
                g,
                a.delta.ptr(),
                self.final_norm.ptr(),
                a.last_hidden.ptr(),
                inp.logits_indices.ptr(),
                logits_rows as u32,
                false,
            )?;
        }
        Ok(())
    }

    fn lm_head(&mut self, first_row: usize, rows: usize) -> Result<(), CudaError> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed).ptr();
        let x = self.act.last_hidden.at(first_row * self.shape.hidden_size);
        let (v, h) = (self.shape.vocab_size, self.shape.hidden_size);
        self.gemm
            .matmul(&self.gpu, x, head, self.act.logits.ptr(), rows, v, h, OutType::F32)
    }

    /// The logits rows of the last forward, `[rows, vocab]` f32, into `out` (resized).
    pub fn logits_to_host(&mut self, out: &mut Vec<f32>) -> Result<(), CudaError> {
        self.gpu.bind()?;
        let (rows, v) = (self.num_logits_rows, self.shape.vocab_size);
        out.resize(rows * v, 0.0);
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(self.logits_capacity);
            self.lm_head(r, n)?;
            self.gpu.download(&mut out[r * v..(r + n) * v], self.act.logits.ptr())?;
            r += n;
        }
        Ok(())
    }

    /// Samples one token per logits row on the GPU: greedy where `temperatures[r] == 0`, else an exact sample
    /// of softmax(logits / T) seeded by `seeds[r]`. Returns (token, log-prob under the raw distribution).
    pub fn sample(&mut self, temperatures: &[f32], seeds: &[u64]) -> Result<Vec<(u32, f32)>, CudaError> {
        self.gpu.bind()?;
        let rows = self.num_logits_rows;
        if temperatures.len() != rows || seeds.len() != rows {
            return Err(CudaError::Unsupported(format!(
                "{} temperatures and {} seeds for {rows} logits rows",
                temperatures.len(),
                seeds.len()
            )));
        }
        if rows > self.logits_capacity {
            return Err(CudaError::Unsupported(format!(
                "{rows} rows to sample; at most {}",
                self.logits_capacity
            )));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        self.lm_head(0, rows)?;
        let g = &self.gpu;
        g.upload(self.inputs.temperatures.ptr(), temperatures)?;
        g.upload(self.inputs.seeds.ptr(), seeds)?;
        g.launch(
            "sample_rows_f32",
            (rows as u32, 1, 1),
            1024,
            &[
                Arg::Ptr(self.act.logits.ptr()),
                Arg::I32(self.shape.vocab_size as i32),
                Arg::Ptr(self.inputs.temperatures.ptr()),
                Arg::Ptr(self.inputs.seeds.ptr()),
                Arg::Ptr(self.act.sampled_ids.ptr()),
                Arg::Ptr(self.act.sampled_logprobs.ptr()),
            ],
        )?;
        let mut ids = vec![0u32; rows];
        let mut lps = vec![0f32; rows];
        // SAFETY-free ordering: both copies are on the stream; the second download synchronizes.
        g.download(&mut ids, self.act.sampled_ids.ptr())?;
        g.download(&mut lps, self.act.sampled_logprobs.ptr())?;
        Ok(ids.into_iter().zip(lps).collect())
    }
}
