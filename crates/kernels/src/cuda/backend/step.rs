//! One step on the GPU: the batch's index arrays into the persistent input buffers, the attention work list and
//! its KV splits, then the model's forward (or the replay of a captured decode graph).

use super::*;

/// At most this many (tile, kv head, split) attention blocks write partials.
pub(super) const ATTENTION_PART_BLOCKS: usize = 256;

/// Most KV splits of one attention block: `MAX_KV_SPLITS` of kernels/common.cuh, whose merge sizes its registers
/// and shared memory for this many.
const MAX_KV_SPLITS: usize = 16;

/// KV splits per attention block (flash-decoding): a small grid — decode at low batch — is spread over the
/// KV range so the GPU's SMs all stream K/V; a large grid runs unsplit.
fn attention_splits(tiles: usize, kv_heads: usize) -> usize {
    let blocks = tiles * kv_heads;
    if blocks >= ATTENTION_PART_BLOCKS / 2 {
        1
    } else {
        (ATTENTION_PART_BLOCKS / blocks.max(1)).clamp(1, MAX_KV_SPLITS)
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
    let wanted = FLASH_TARGET_BLOCKS.div_ceil(blocks).clamp(1, MAX_KV_SPLITS);
    let room = FLASH_PART_ROWS / (tokens * heads).max(1);
    wanted.min(room).max(1)
}

/// The launch-shape of one step: what the ops need besides the persistent buffers.
#[derive(Clone, Copy, Default)]
pub(super) struct StepShape {
    pub tokens: usize,
    /// Block-table row width.
    pub width: usize,
    /// Attention tiles (for the tensor-core kernel when `uses_flash_attention`, else the CUDA-core one).
    pub tiles: usize,
    pub logits_rows: usize,
}

impl CudaBackend {
    /// `Backend::run_step`: the batch's inputs into the persistent buffers, then the forward's launches — or,
    /// for a decode-only step (one token per sequence, each sampled), the replay of the graph captured at a
    /// padded batch size. The final hidden states of `batch.logits_indices` stay on the GPU for
    /// `logits_to_host` or `sample`.
    pub(super) fn run_step_impl(
        &mut self,
        batch: &InputBatch,
        forward: &mut Forward<'_, Self>,
    ) -> Result<(), CudaError> {
        self.check_batch(batch)?;
        self.gpu.bind()?;
        let t = batch.num_tokens();
        self.num_logits_rows = batch.logits_indices.len();
        if t == 0 {
            return Ok(());
        }
        let decode_only = t == batch.num_seqs()
            && batch.logits_indices.len() == t
            && batch.logits_indices.iter().enumerate().all(|(i, &r)| r as usize == i);
        if decode_only {
            if let Some(size) = bucket_for(t, &self.graph_sizes) {
                if self.graphs.contains_key(&size) {
                    self.upload_padded_decode(batch, size)?;
                    self.step = self.decode_shape(size);
                    return self.graphs[&size]
                        .0
                        .launch()
                        .map_err(driver_err("replaying a decode graph"));
                }
            }
        }
        self.step = self.upload_batch(batch)?;
        forward(self)
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
        let (seq, q0) = (&mut self.host.tile_seq, &mut self.host.tile_q0);
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
        let (tile_seq, tile_q0) = (&self.host.tile_seq, &self.host.tile_q0);
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

    /// KV splits of this step's attention launches (see `flash_splits` / `attention_splits`).
    pub(super) fn attention_splits(&self) -> usize {
        let heads = self.shape.layout.heads;
        if self.uses_flash_attention() {
            flash_splits(self.step.tiles, heads.num_kv_heads, self.step.tokens, heads.num_heads)
        } else {
            attention_splits(self.step.tiles, heads.num_kv_heads)
        }
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
