//! `ModelRunner`: owns the model and its paged KV cache on the backend, executes one step's batch and returns
//! the logits rows the sampler needs — or, on a backend that samples on its device, the sampled tokens. The
//! engine never touches KV memory except through here.
//!
//! The model is one definition (`LlamaModel`) run on one of the backends: the CPU (`CpuBackend`, f32
//! activations) or CUDA (`CudaBackend`, bf16/f16/f32 on one GPU, which can also sample). Which one runs is
//! decided once, when the engine is built; both take the same flattened `InputBatch`.

use std::time::Instant;

use pagedllm_kernels::backend::Backend;
use pagedllm_kernels::cpu::CpuBackend;
use pagedllm_kernels::cuda::{CudaBackend, DeviceSample};
use pagedllm_kernels::InputBatch;

use crate::error::{EngineError, Result};
use crate::model::llama::LlamaModel;
use crate::sampler::DeviceSamplingBatch;
use crate::request::RequestId;

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
    /// The host work run while the device computes (`execute_and_sample`'s `before_sampling`: grammar masks).
    pub masks: f64,
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

/// Tokens sampled on the device: one per sample asked (`DeviceSamplingBatch::rows` order).
pub struct StepSamples {
    pub samples: Vec<DeviceSample>,
    /// `[logits rows, vocab]` on the host when the step has prompt log-prob rows (rows as `layout` says);
    /// empty otherwise.
    pub logits: Vec<f32>,
    pub layout: BatchLayout,
    pub timing: StepTiming,
}

/// The model and the backend it was loaded onto.
pub struct ModelOn<B> {
    pub model: LlamaModel,
    pub backend: B,
}

impl<B: Backend> ModelOn<B> {
    /// Copy-on-write block copies, then one step of the model over `batch`.
    fn step(&mut self, batch: &mut InputBatch, blocks_to_copy: &[(u32, u32)]) -> Result<()> {
        let err = |e: B::Error| EngineError::Backend(e.to_string());
        if !blocks_to_copy.is_empty() {
            self.backend.copy_blocks(blocks_to_copy).map_err(err)?;
        }
        let model = &self.model;
        self.backend.run_step(batch, &mut |b| model.forward(b)).map_err(err)
    }

    fn logits(&mut self, out: &mut Vec<f32>) -> Result<()> {
        self.backend
            .logits_to_host(out)
            .map_err(|e| EngineError::Backend(e.to_string()))
    }
}

enum Device {
    Cpu(ModelOn<CpuBackend>),
    Cuda(Box<ModelOn<CudaBackend>>),
}

pub struct ModelRunner {
    device: Device,
    block_size: usize,
    vocab_size: usize,
    /// The step's flattened batch, rebuilt in place each step.
    batch: InputBatch,
    /// A layout handed back by the engine after its last step (see `recycle`), refilled by the next.
    spare_layout: BatchLayout,
    /// The logits row of each device sample of the step (reused).
    sample_logits_rows: Vec<u32>,
}

fn cuda_err(e: pagedllm_kernels::cuda::CudaError) -> EngineError {
    EngineError::Backend(e.to_string())
}

impl ModelRunner {
    pub fn new(on_cpu: ModelOn<CpuBackend>, block_size: usize) -> Self {
        Self::with_device(Device::Cpu(on_cpu), block_size)
    }

    pub fn new_cuda(on_gpu: ModelOn<CudaBackend>, block_size: usize) -> Self {
        Self::with_device(Device::Cuda(Box::new(on_gpu)), block_size)
    }

    fn with_device(device: Device, block_size: usize) -> Self {
        let vocab_size = match &device {
            Device::Cpu(m) => m.model.config().vocab_size,
            Device::Cuda(m) => m.model.config().vocab_size,
        };
        Self {
            device,
            block_size,
            vocab_size,
            batch: InputBatch::default(),
            spare_layout: BatchLayout::default(),
            sample_logits_rows: Vec::new(),
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
        matches!(self.device, Device::Cuda(_))
    }

    fn run(&mut self, seqs: &[ScheduledSeq<'_>], blocks_to_copy: &[(u32, u32)]) -> Result<BatchLayout> {
        let mut layout = std::mem::take(&mut self.spare_layout);
        build_input_batch_into(seqs, self.block_size, &mut self.batch, &mut layout);
        if cfg!(debug_assertions) {
            self.batch.check();
        }
        match &mut self.device {
            Device::Cpu(m) => m.step(&mut self.batch, blocks_to_copy)?,
            Device::Cuda(m) => m.step(&mut self.batch, blocks_to_copy)?,
        }
        Ok(layout)
    }

    /// Copies whole KV blocks (copy on write of a shared partial block), runs the forward pass and returns the
    /// logits rows on the host.
    pub fn execute(&mut self, seqs: &[ScheduledSeq<'_>], blocks_to_copy: &[(u32, u32)]) -> Result<StepLogits> {
        let t0 = Instant::now();
        let layout = self.run(seqs, blocks_to_copy)?;
        let t1 = Instant::now();
        let mut logits = Vec::new();
        match &mut self.device {
            Device::Cpu(m) => m.logits(&mut logits)?,
            Device::Cuda(m) => m.logits(&mut logits)?,
        }
        Ok(StepLogits {
            logits,
            vocab_size: self.vocab_size,
            layout,
            timing: StepTiming {
                launch: (t1 - t0).as_secs_f64(),
                masks: 0.0,
                wait: t1.elapsed().as_secs_f64(),
            },
        })
    }

    /// Runs the step and samples on the device: `batch.rows[i]` is a sample of the logits row of the scheduled
    /// sequence `row_seqs[i]` (a sequence appears once per sample: the `n > 1` fork samples one row several
    /// times). When the step has prompt log-prob rows, every logits row is also copied to the host
    /// (`StepSamples::logits`), and so when `copy_logits` (beam rows, which are proposed from on the host).
    /// A sampling row without a device sample is skipped. `before_sampling` runs on the host while the GPU runs
    /// the forward pass (the engine fills grammar masks there). Only for backends where `samples_on_device()`;
    /// the caller checked each row is device-sampleable.
    pub fn execute_and_sample(
        &mut self,
        seqs: &[ScheduledSeq<'_>],
        blocks_to_copy: &[(u32, u32)],
        batch: &mut DeviceSamplingBatch,
        row_seqs: &[RequestId],
        copy_logits: bool,
        before_sampling: impl FnOnce(&mut DeviceSamplingBatch),
    ) -> Result<StepSamples> {
        let t0 = Instant::now();
        let layout = self.run(seqs, blocks_to_copy)?;
        let t_launched = Instant::now();
        before_sampling(batch);
        let t1 = Instant::now();
        let Device::Cuda(on_gpu) = &mut self.device else {
            return Err(EngineError::Internal(
                "execute_and_sample on a backend that samples on the host".into(),
            ));
        };
        // `row_seqs` lists sequences in the batch's order, as `layout.sample_rows` does: one forward walk.
        let logits_rows = &mut self.sample_logits_rows;
        logits_rows.clear();
        let mut at = 0;
        for rid in row_seqs {
            while at < layout.sample_rows.len() && layout.sample_rows[at].0 != *rid {
                at += 1;
            }
            let Some(&(_, row)) = layout.sample_rows.get(at) else {
                return Err(EngineError::Internal(format!(
                    "request {rid} has no sampling row this step (or is out of the batch's order)"
                )));
            };
            logits_rows.push(row as u32);
        }
        if batch.rows.len() != logits_rows.len() {
            return Err(EngineError::Internal(format!(
                "{} device sampling rows for {} sampled sequences",
                batch.rows.len(),
                logits_rows.len()
            )));
        }
        let samples = if batch.rows.is_empty() {
            Vec::new()
        } else {
            on_gpu
                .backend
                .sample(&batch.rows, logits_rows, &batch.edits, &batch.masks)
                .map_err(cuda_err)?
        };
        let mut logits = Vec::new();
        if copy_logits || !layout.prompt_logprob_rows.is_empty() {
            on_gpu.backend.copy_logits_rows_to_host(0, &mut logits).map_err(cuda_err)?;
        }
        Ok(StepSamples {
            samples,
            logits,
            layout,
            timing: StepTiming {
                launch: (t_launched - t0).as_secs_f64(),
                masks: (t1 - t_launched).as_secs_f64(),
                wait: t1.elapsed().as_secs_f64(),
            },
        })
    }
}
