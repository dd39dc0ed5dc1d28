//! The LM head and what leaves the GPU: logits rows for the host sampler, or tokens sampled on the GPU.

use super::*;

impl CudaBackend {
    /// The LM head the forward asked for, on logits rows `first_row..first_row + rows`, into the logits buffer.
    fn run_lm_head(&mut self, first_row: usize, rows: usize) -> Result<(), CudaError> {
        let Some(head) = self.head else {
            return Err(CudaError::Unsupported("the model's forward ran no LM head".into()));
        };
        let value_bytes = self.opts.dtype.bytes();
        let x = head.hidden + (first_row * head.hidden_size * value_bytes) as u64;
        let (v, h) = (self.shape.vocab_size, head.hidden_size);
        self.gemm
            .matmul(&self.gpu, x, head.weight, self.scratch.logits.ptr(), rows, v, h, OutType::F32)
    }

    /// The logits rows of the last forward, `[rows, vocab]` f32, into `out` (resized).
    pub(super) fn copy_logits_to_host(&mut self, out: &mut Vec<f32>) -> Result<(), CudaError> {
        self.gpu.bind()?;
        let (rows, v) = (self.num_logits_rows, self.shape.vocab_size);
        out.resize(rows * v, 0.0);
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(self.logits_capacity);
            self.run_lm_head(r, n)?;
            self.gpu.download(&mut out[r * v..(r + n) * v], self.scratch.logits.ptr())?;
            r += n;
        }
        Ok(())
    }

    /// Samples one token per logits row on the GPU (see `kernels/sampling.cu`): row `r` follows `rows[r]`,
    /// whose edits index into `edits`. Only ids, log-probs, ranks and the asked-for log-prob lists come back.
    pub fn sample(&mut self, rows: &[DeviceSampleParams], edits: &[TokenEdit]) -> Result<Vec<DeviceSample>, CudaError> {
        self.gpu.bind()?;
        let n = self.num_logits_rows;
        if rows.len() != n {
            return Err(CudaError::Unsupported(format!(
                "{} sampling rows for {n} logits rows",
                rows.len()
            )));
        }
        if n > self.logits_capacity {
            return Err(CudaError::Unsupported(format!(
                "{n} rows to sample; at most {}",
                self.logits_capacity
            )));
        }
        if edits.len() > MAX_DEVICE_TOKEN_EDITS {
            return Err(CudaError::Unsupported(format!(
                "{} token edits in one step; at most {MAX_DEVICE_TOKEN_EDITS}",
                edits.len()
            )));
        }
        let vocab = self.shape.vocab_size;
        for (r, p) in rows.iter().enumerate() {
            let end = p.edit_begin as usize + p.edit_count as usize;
            if end > edits.len() || p.num_top_logprobs > MAX_DEVICE_TOP_LOGPROBS as i32 {
                return Err(CudaError::Unsupported(format!("sampling row {r} is malformed: {p:?}")));
            }
            if let Some(e) = edits[p.edit_begin as usize..end]
                .iter()
                .find(|e| e.token as usize >= vocab)
            {
                return Err(CudaError::Unsupported(format!(
                    "token id {} is outside the vocabulary (size {vocab})",
                    e.token
                )));
            }
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        self.run_lm_head(0, n)?;
        let g = &self.gpu;
        let a = &self.scratch;
        g.upload(self.inputs.sample_params.ptr(), rows)?;
        g.upload(self.inputs.token_edits.ptr(), edits)?;
        g.launch(
            "sample_rows",
            (n as u32, 1, 1),
            1024,
            &[
                Arg::Ptr(a.logits.ptr()),
                Arg::I32(vocab as i32),
                Arg::Ptr(self.inputs.sample_params.ptr()),
                Arg::Ptr(self.inputs.token_edits.ptr()),
                Arg::Ptr(a.sampled_ids.ptr()),
                Arg::Ptr(a.sampled_logprobs.ptr()),
                Arg::Ptr(a.sampled_ranks.ptr()),
                Arg::Ptr(a.top_ids.ptr()),
                Arg::Ptr(a.top_logprobs.ptr()),
            ],
        )?;
        let mut ids = vec![0u32; n];
        let mut lps = vec![0f32; n];
        g.download(&mut ids, a.sampled_ids.ptr())?;
        g.download(&mut lps, a.sampled_logprobs.ptr())?;
        let want_rank = rows.iter().any(|p| p.num_top_logprobs >= 0);
        let want_top = rows.iter().any(|p| p.num_top_logprobs > 0);
        let mut ranks = vec![0i32; if want_rank { n } else { 0 }];
        let mut top_ids = vec![0u32; if want_top { n * MAX_DEVICE_TOP_LOGPROBS } else { 0 }];
        let mut top_lps = vec![0f32; top_ids.len()];
        if want_rank {
            g.download(&mut ranks, a.sampled_ranks.ptr())?;
        }
        if want_top {
            g.download(&mut top_ids, a.top_ids.ptr())?;
            g.download(&mut top_lps, a.top_logprobs.ptr())?;
        }
        let mut out = Vec::with_capacity(n);
        for (r, p) in rows.iter().enumerate() {
            if ids[r] as usize >= vocab {
                return Err(CudaError::Unsupported(format!(
                    "no token can be sampled in row {r}: the logits contain NaN or every logit is -inf after processing"
                )));
            }
            let k = (p.num_top_logprobs.max(0) as usize).min(vocab);
            let base = r * MAX_DEVICE_TOP_LOGPROBS;
            out.push(DeviceSample {
                token: ids[r],
                logprob: lps[r],
                rank: if p.num_top_logprobs >= 0 { ranks[r] as u32 } else { 0 },
                top_logprobs: (0..k).map(|j| (top_ids[base + j], top_lps[base + j])).collect(),
            });
        }
        Ok(out)
    }
}
