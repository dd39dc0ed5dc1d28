//! One step on the GPU: the batch's index arrays into the persistent input buffers, the attention work list,
//! and every kernel from the embedding to the final norm of the logits rows (`launch_body`, which the decode
//! graphs also capture).

use super::*;

/// At most this many (tile, kv head, split) attention blocks write partials.
pub(super) const ATTENTION_PART_BLOCKS: usize = 256;

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

/// Keys per shared K/V tile and tiles in flight of flash_attention.cu (FLASH_KEYS, FLASH_STAGES there).
const FLASH_KEYS: usize = 32;
const FLASH_STAGES: usize = 4;

/// Dynamic shared memory of the tensor-core kernel: a K and a V tile per stage, rows padded to `hd + 8` elements.
pub(super) fn flash_shared_bytes(head_dim: usize) -> usize {
    FLASH_STAGES * 2 * FLASH_KEYS * (head_dim + 8) * 2
}

/// Split-KV partial rows (one per split, token and query head) the tensor-core kernel may write.
pub(super) const FLASH_PART_ROWS: usize = 1 << 16;

/// Attention blocks a step aims for: ~2.6 waves of the GPU's ~132 SMs x 3 resident blocks, so a ragged decode grid
/// (sequences of different lengths) leaves no SM idle for long, while grids already that large run unsplit (no
/// partials, no combine pass). Measured on an H200 (Llama-3-8B shape, interleaved builds in one call,
/// bench/results/gpu-ab-flash-target-blocks-h200-2026-11-21/): 1024 decodes 3.5% faster than 2048 at batches 32 and
/// 128; 4096 is 7% slower at batch 32.
const FLASH_TARGET_BLOCKS: usize = 1024;

/// KV splits for the tensor-core kernel: enough blocks to fill the GPU evenly, at most 16, and no more
/// partial rows than the buffer holds. Prefill-sized grids run unsplit.
fn flash_splits(tiles: usize, kv_heads: usize, tokens: usize, heads: usize) -> usize {
    let blocks = (tiles * kv_heads).max(1);
    let wanted = FLASH_TARGET_BLOCKS.div_ceil(blocks).clamp(1, 16);
    let room = FLASH_PART_ROWS / (tokens * heads).max(1);
    wanted.min(room).max(1)
}

/// The launch-shape of one step: what the body's kernels need besides the persistent buffers.
#[derive(Clone, Copy)]
pub(super) struct StepShape {
    pub tokens: usize,
    /// Block-table row width.
    pub width: usize,
    /// Attention tiles (for the tensor-core kernel when `uses_flash_attention`, else the CUDA-core one).
    pub tiles: usize,
    pub logits_rows: usize,
}

impl CudaDecoder {
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

    /// Fills the host scratch with the batch's attention tiles as (sequence, first query offset) lists: runs of
    /// `flash_q_tile` tokens for the tensor-core kernel (a decode is one tile), else of `attention_q_tile` for
    /// the CUDA-core kernel (head dim 256, or `PAGEDLLM_CUDA_ATTENTION=core`).
    pub(super) fn fill_tiles(&mut self, batch: &InputBatch) {
        let step = if self.uses_flash_attention() {
            self.shape.flash_q_tile(self.opts.dtype).unwrap_or(1)
        } else {
            self.shape.attention_q_tile()
        };
        let (seq, q0) = (&mut self.scratch.tile_seq, &mut self.scratch.tile_q0);
        seq.clear();
        q0.clear();
        for s in 0..batch.num_seqs() {
            let len = (batch.query_start_loc[s + 1] - batch.query_start_loc[s]) as usize;
            for start in (0..len).step_by(step) {
                seq.push(s as u32);
                q0.push(start as u32);
            }
        }
    }

    pub(super) fn upload_batch(&mut self, batch: &InputBatch) -> Result<StepShape, CudaError> {
        self.fill_tiles(batch);
        let (tile_seq, tile_q0) = (&self.scratch.tile_seq, &self.scratch.tile_q0);
        let g = &self.gpu;
        let inp = &self.inputs;
        g.upload(inp.tokens.ptr(), &batch.token_ids)?;
        g.upload(inp.positions.ptr(), &batch.positions)?;
        g.upload(inp.slots.ptr(), &batch.slot_mapping)?;
        g.upload(inp.query_start_loc.ptr(), &batch.query_start_loc)?;
        g.upload(inp.seq_lens.ptr(), &batch.seq_lens)?;
        g.upload(inp.block_tables.ptr(), &batch.block_tables)?;
        g.upload(inp.logits_indices.ptr(), &batch.logits_indices)?;
        g.upload(inp.tile_seq.ptr(), tile_seq)?;
        g.upload(inp.tile_q0.ptr(), tile_q0)?;
        Ok(StepShape {
            tokens: batch.num_tokens(),
            width: batch.max_blocks_per_seq,
            tiles: tile_seq.len(),
            logits_rows: batch.logits_indices.len(),
        })
    }

    /// Every kernel of one step, from the embedding to the final norm of the logits rows, on the persistent
    /// buffers (so the same launches can be captured into a graph).
    pub(super) fn launch_body(&mut self, shape: StepShape) -> Result<(), CudaError> {
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
            "embedding_gather",
            (tt, 1, 1),
            128,
            &[
                Arg::Ptr(self.embed.ptr()),
                Arg::Ptr(inp.tokens.ptr()),
                Arg::Ptr(a.residual.ptr()),
                // The gather copies 16-bit words.
                Arg::I32((h * self.opts.dtype.bytes() / 2) as i32),
            ],
        )?;
        let norm = |g: &Gpu, delta: u64, weight: u64, out: u64, rows_ptr: u64, rows: u32, write: bool| {
            g.launch(
                &self.kernels.add_rms_norm,
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
        let k = &self.kernels;
        let (attention, combine) = (&k.attention, &k.attention_combine);
        let (flash, flash_combine) = (&k.flash_attention, &k.flash_attention_combine);
        let flash_on = self.uses_flash_attention();
        let splits = if flash_on {
            flash_splits(tiles, s.num_kv_heads, t, s.num_heads)
        } else {
            attention_splits(tiles, s.num_kv_heads)
        };
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
                OutType::Act,
            )?;
            let (k_cache, v_cache) = self.kv_layer(l);
            g.launch(
                &k.rope_qkv_cache,
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
            if tiles > 0 && !flash_on {
                g.launch(
                    attention,
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
                        combine,
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
            }
            if tiles > 0 && flash_on {
                let (tile_seq, tile_q0) = (inp.tile_seq.ptr(), inp.tile_q0.ptr());
                g.launch_with_shared(
                    flash,
                    (tiles as u32, s.num_kv_heads as u32, splits as u32),
                    128,
                    flash_shared_bytes(s.head_dim) as u32,
                    &[
                        Arg::Ptr(a.qkv.ptr()),
                        Arg::I32(qkv_dim as i32),
                        Arg::Ptr(k_cache),
                        Arg::Ptr(v_cache),
                        Arg::Ptr(inp.block_tables.ptr()),
                        Arg::I32(width as i32),
                        Arg::Ptr(inp.seq_lens.ptr()),
                        Arg::Ptr(inp.query_start_loc.ptr()),
                        Arg::Ptr(tile_seq),
                        Arg::Ptr(tile_q0),
                        Arg::Ptr(a.attn.ptr()),
                        Arg::I32(s.num_heads as i32),
                        Arg::I32(s.num_kv_heads as i32),
                        Arg::I32(self.opts.block_size as i32),
                        Arg::F32(scale),
                        Arg::I32(splits as i32),
                        Arg::I32(t as i32),
                        Arg::Ptr(a.flash_part_acc.ptr()),
                        Arg::Ptr(a.flash_part_ml.ptr()),
                    ],
                )?;
                if splits > 1 {
                    g.launch(
                        flash_combine,
                        (tiles as u32, s.num_kv_heads as u32, 1),
                        128,
                        &[
                            Arg::Ptr(inp.query_start_loc.ptr()),
                            Arg::Ptr(tile_seq),
                            Arg::Ptr(tile_q0),
                            Arg::Ptr(a.attn.ptr()),
                            Arg::I32(s.num_heads as i32),
                            Arg::I32(s.num_kv_heads as i32),
                            Arg::I32(splits as i32),
                            Arg::I32(t as i32),
                            Arg::Ptr(a.flash_part_acc.ptr()),
                            Arg::Ptr(a.flash_part_ml.ptr()),
                        ],
                    )?;
                }
            }
            self.gemm.matmul(
                g,
                a.attn.ptr(),
                layer.o_proj.ptr(),
                a.delta.ptr(),
                t,
                h,
                q_dim,
                OutType::Act,
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
                OutType::Act,
            )?;
            g.launch(
                &k.silu_mul,
                (inter.div_ceil(8 * 256) as u32, t.min(65_535) as u32, 1),
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
                OutType::Act,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_partials_always_fit_their_buffer_and_large_grids_stay_unsplit() {
        for tiles in 1..600 {
            for kv_heads in [1, 2, 4, 8, 16] {
                let s = attention_splits(tiles, kv_heads);
                assert!((1..=16).contains(&s));
                if s > 1 {
                    assert!(
                        tiles * kv_heads * s <= ATTENTION_PART_BLOCKS,
                        "{tiles} x {kv_heads} x {s}"
                    );
                }
                if tiles * kv_heads >= ATTENTION_PART_BLOCKS / 2 {
                    assert_eq!(s, 1);
                }
            }
        }
        // Decode of one sequence with 8 KV heads (Llama-3-8B) spreads over 16 splits.
        assert_eq!(attention_splits(1, 8), 16);
    }

    #[test]
    fn flash_splits_fill_the_gpu_within_the_partial_buffer() {
        for tiles in 1..1100 {
            for (kv_heads, heads) in [(1, 8), (2, 14), (8, 32), (8, 64)] {
                for tokens in [tiles, tiles * 4, tiles * 64] {
                    let s = flash_splits(tiles, kv_heads, tokens, heads);
                    assert!((1..=16).contains(&s));
                    if s > 1 {
                        assert!(s * tokens * heads <= FLASH_PART_ROWS, "{tiles} {kv_heads} {tokens} {s}");
                        assert!(
                            tiles * kv_heads * (s - 1) < FLASH_TARGET_BLOCKS,
                            "no more splits than needed"
                        );
                    }
                }
            }
        }
        // Llama-3-8B: one decode spreads over 16 splits, 32 decodes over 4, 128 decodes and an 8192-token
        // prefill not at all.
        assert_eq!(flash_splits(1, 8, 1, 32), 16);
        assert_eq!(flash_splits(32, 8, 32, 32), 4);
        assert_eq!(flash_splits(128, 8, 128, 32), 1);
        assert_eq!(flash_splits(512, 8, 8192, 32), 1);
    }
}
