//! The LM head and what leaves the GPU: logits rows for the host sampler, or tokens sampled on the GPU.

use super::*;

impl CudaDecoder {
    pub(super) fn lm_head(&mut self, first_row: usize, rows: usize) -> Result<(), CudaError> {
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
