//! `ModelRunner`: owns the model and its paged KV cache on the backend, executes one step's batch and returns
//! the logits rows the sampler needs — or, on a backend that samples on its device, the sampled tokens. The
//! engine never touches KV memory except through here.
//!
//! Backends: the CPU (`LlamaModel` + `KvCache`, f32 activations) and CUDA (`CudaDecoder`, bf16 on one GPU).
//! Which one runs is decided once, at build time of the engine; both take the same flattened `InputBatch`.

use std::time::Instant;

use pagedllm_kernels::cpu::KvCache;
use pagedllm_kernels::cuda::CudaDecoder;
use pagedllm_kernels::InputBatch;

use crate::error::{EngineError, Result};
use crate::model::llama::LlamaModel;
use crate::sampler::DeviceSamplingBatch;
use pagedllm_kernels::cuda::DeviceSample;

use super::batch_builder::{build_input_batch_into, BatchLayout, ScheduledSeq};

/// The logits of one step: `rows x vocab_size`, laid out as `layout` says.
pub struct StepLogits {
    pub logits: Vec<f32>,
    pub vocab_size: usize,
    pub layout: BatchLayout,
    pub timing: StepTiming,
}

/// Host seconds of one step in the runner: building and launching the batch, then waiting for what comes back.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTiming {
    pub launch: f64,
    pub wait: f64,
}

impl StepLogits {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.logits[r * self.vocab_size..(r + 1) * self.vocab_size]
    }
    pub fn rows(&self, first: usize, count: usize) -> &[f32] {
        &self.logits[first * self.vocab_size..(first + count) * self.vocab_size]
    }
}

/// Tokens sampled on the device: one `(token, raw log-prob)` per logits row, rows as `layout` says.
pub struct StepSamples {
    pub samples: Vec<DeviceSample>,
    pub layout: BatchLayout,
    pub timing: StepTiming,
}

enum Backend {
    Cpu { model: LlamaModel, kv: KvCache },
    Cuda(Box<CudaDecoder>),
}

pub struct ModelRunner {
    backend: Backend,
    block_size: usize,
    vocab_size: usize,
    /// The step's flattened batch, rebuilt in place each step.
    batch: InputBatch,
    /// A layout handed back by the engine after its last step (see `recycle`), refilled by the next.
    spare_layout: BatchLayout,
}

fn cuda_err(e: pagedllm_kernels::cuda::CudaError) -> EngineError {
    EngineError::Backend(e.to_string())
}

impl ModelRunner {
    pub fn new(model: LlamaModel, num_blocks: usize, block_size: usize) -> Self {
        let kv = model.new_kv_cache(num_blocks, block_size);
        let vocab_size = model.config().vocab_size;
        Self {
            backend: Backend::Cpu { model, kv },
            block_size,
            vocab_size,
            batch: InputBatch::default(),
            spare_layout: BatchLayout::default(),
        }
    }

    pub fn new_cuda(decoder: CudaDecoder, vocab_size: usize, block_size: usize) -> Self {
        Self {
            backend: Backend::Cuda(Box::new(decoder)),
            block_size,
            vocab_size,
            batch: InputBatch::default(),
            spare_layout: BatchLayout::default(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Takes back a step's layout once the engine is done with it, so the next step reuses its arrays.
    pub fn recycle(&mut self, layout: BatchLayout) {
        self.spare_layout = layout;
    }

    /// Whether `execute_and_sample` is available (the backend samples on its device).
    pub fn samples_on_device(&self) -> bool {
        matches!(self.backend, Backend::Cuda(_))
    }

    fn run(
        &mut self,
        seqs: &[ScheduledSeq<'_>],
        blocks_to_copy: &[(u32, u32)],
    ) -> Result<(BatchLayout, Option<Vec<f32>>)> {
        let mut layout = std::mem::take(&mut self.spare_layout);
        build_input_batch_into(seqs, self.block_size, &mut self.batch, &mut layout);
        let batch = &self.batch;
        if cfg!(debug_assertions) {
            batch.check();
        }
        let empty = batch.logits_indices.is_empty() && batch.num_tokens() == 0;
        match &mut self.backend {
            Backend::Cpu { model, kv } => {
                if !blocks_to_copy.is_empty() {
                    kv.copy_blocks(blocks_to_copy);
                }
                let logits = if empty { Vec::new() } else { model.forward(batch, kv)? };
                Ok((layout, Some(logits)))
            }
            Backend::Cuda(dec) => {
                if !blocks_to_copy.is_empty() {
                    dec.copy_blocks(blocks_to_copy).map_err(cuda_err)?;
                }
                dec.forward(batch).map_err(cuda_err)?;
                Ok((layout, None))
            }
        }
    }

    /// Copies whole KV blocks (copy on write of a shared partial block), runs the forward pass and returns the
    /// logits rows on the host.
    pub fn execute(&mut self, seqs: &[ScheduledSeq<'_>], blocks_to_copy: &[(u32, u32)]) -> Result<StepLogits> {
        let t0 = Instant::now();
        let (layout, logits) = self.run(seqs, blocks_to_copy)?;
        let t1 = Instant::now();
        let logits = match (logits, &mut self.backend) {
            (Some(l), _) => l,
            (None, Backend::Cuda(dec)) => {
                let mut out = Vec::new();
                dec.logits_to_host(&mut out).map_err(cuda_err)?;
                out
            }
            (None, Backend::Cpu { .. }) => {
                return Err(EngineError::Internal("the CPU backend returned no logits".into()))
            }
        };
        Ok(StepLogits {
            logits,
            vocab_size: self.vocab_size,
            layout,
            timing: StepTiming {
                launch: (t1 - t0).as_secs_f64(),
                wait: t1.elapsed().as_secs_f64(),
            },
        })
    }

    /// Runs the step and samples every logits row on the device: `rows[i]` is for the i-th sequence with
    /// `sample` set (the order of `layout.sample_rows`). Only for backends where `samples_on_device()`; the
    /// caller checked each row is device-sampleable and that no prompt log-probs are due this step.
    pub fn execute_and_sample(
        &mut self,
        seqs: &[ScheduledSeq<'_>],
        blocks_to_copy: &[(u32, u32)],
        batch: &DeviceSamplingBatch,
    ) -> Result<StepSamples> {
        let t0 = Instant::now();
        let (layout, _) = self.run(seqs, blocks_to_copy)?;
        let t1 = Instant::now();
        let Backend::Cuda(dec) = &mut self.backend else {
            return Err(EngineError::Internal(
                "execute_and_sample on a backend that samples on the host".into(),
            ));
        };
        let rows = &batch.rows;
        if rows.len() != layout.sample_rows.len() || !layout.prompt_logprob_rows.is_empty() {
            return Err(EngineError::Internal(format!(
                "{} device sampling rows for {} sampled sequences (and {} prompt log-prob ranges)",
                rows.len(),
                layout.sample_rows.len(),
                layout.prompt_logprob_rows.len()
            )));
        }
        let samples = dec.sample(rows, &batch.edits).map_err(cuda_err)?;
        Ok(StepSamples {
            samples,
            layout,
            timing: StepTiming {
                launch: (t1 - t0).as_secs_f64(),
                wait: t1.elapsed().as_secs_f64(),
            },
        })
    }
}
