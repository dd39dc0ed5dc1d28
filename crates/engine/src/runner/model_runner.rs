//! `ModelRunner`: owns the model and its paged KV cache on the backend, executes one step's batch and returns
//! the logits rows the sampler needs. The engine never touches KV memory except through here.

use pagedllm_kernels::cpu::KvCache;

use crate::error::Result;
use crate::model::llama::LlamaModel;

use super::batch_builder::{build_input_batch, BatchLayout, ScheduledSeq};

/// The logits of one step: `rows x vocab_size`, laid out as `layout` says.
pub struct StepLogits {
    pub logits: Vec<f32>,
    pub vocab_size: usize,
    pub layout: BatchLayout,
}

impl StepLogits {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.logits[r * self.vocab_size..(r + 1) * self.vocab_size]
    }
    pub fn rows(&self, first: usize, count: usize) -> &[f32] {
        &self.logits[first * self.vocab_size..(first + count) * self.vocab_size]
    }
}

pub struct ModelRunner {
    model: LlamaModel,
    kv: KvCache,
    block_size: usize,
    vocab_size: usize,
}

impl ModelRunner {
    pub fn new(model: LlamaModel, num_blocks: usize, block_size: usize) -> Self {
        let kv = model.new_kv_cache(num_blocks, block_size);
        let vocab_size = model.config().vocab_size;
        Self {
            model,
            kv,
            block_size,
            vocab_size,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Copies whole KV blocks (copy on write of a shared partial block), then runs the forward pass.
    pub fn execute(&mut self, seqs: &[ScheduledSeq<'_>], blocks_to_copy: &[(u32, u32)]) -> Result<StepLogits> {
        if !blocks_to_copy.is_empty() {
            self.kv.copy_blocks(blocks_to_copy);
        }
        let (batch, layout) = build_input_batch(seqs, self.block_size);
        if cfg!(debug_assertions) {
            batch.check();
        }
        let logits = if batch.logits_indices.is_empty() && batch.num_tokens() == 0 {
            Vec::new()
        } else {
            self.model.forward(&batch, &mut self.kv)?
        };
        Ok(StepLogits {
            logits,
            vocab_size: self.vocab_size,
            layout,
        })
    }
}
