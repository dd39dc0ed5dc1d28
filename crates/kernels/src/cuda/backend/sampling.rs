//! The LM head and what leaves the GPU: logits rows for the host sampler, or tokens sampled on the GPU.
//!
//! Sampling takes a list of (logits row, parameters) pairs rather than one pair per row, so that a step can
//! sample every row on the GPU whatever else it holds: several samples of one row (the `n > 1` fork at the end
//! of a prompt), rows beside prompt log-prob rows (which go to the host separately), and more rows or token
//! edits than one launch holds (done in chunks). A seeded request then always meets the same sampler, which
//! is what makes its tokens independent of the batch (the GPU's noise differs from the CPU sampler's draw).
//!
//! Structured-output rows carry their grammar's allowed-token bitmask (`DeviceSampleParams::mask_row` into a
//! `[masks, mask_words(vocab)]` u32 block, llguidance's own layout): the block is uploaded once per launch
//! (once per step unless the step overflows a launch) and the kernel sets every disallowed logit to -inf in its
//! first pass, so no logits are copied back for them either (vLLM's `apply_grammar_bitmask`, done in-kernel).

use super::*;

impl CudaBackend {
    /// The LM head the forward asked for, on logits rows `first_row..first_row + rows`, into the logits buffer.
    fn run_lm_head(&mut self, first_row: usize, rows: usize) -> Result<(), CudaError> {
        let head = self.pending_head()?;
        let x = head.hidden + (first_row * head.hidden_size * self.opts.dtype.bytes()) as u64;
        self.lm_head_on(x, rows, head)
    }

    /// The LM head on `rows` hidden rows starting at device address `x`, into the logits buffer.
    fn lm_head_on(&mut self, x: u64, rows: usize, head: PendingHead) -> Result<(), CudaError> {
        let (v, h) = (self.shape.vocab_size, head.hidden_size);
        self.gemm.matmul(
            &self.gpu,
            x,
            head.weight,
            self.scratch.logits.ptr(),
            rows,
            v,
            h,
            OutType::F32,
        )?;
        match head.final_softcap {
            Some(cap) => self.softcap_logits(rows, cap),
            None => Ok(()),
        }
    }

    fn pending_head(&self) -> Result<PendingHead, CudaError> {
        self.head
            .ok_or_else(|| CudaError::Unsupported("the model's forward ran no LM head".into()))
    }

    /// The LM head on the hidden rows `logits_rows` (any order, repeats allowed; at most `logits_capacity`):
    /// contiguous rows directly, others gathered into `gathered_hidden` first.
    fn lm_head_rows(&mut self, logits_rows: &[u32]) -> Result<(), CudaError> {
        let first = logits_rows[0] as usize;
        if logits_rows.iter().enumerate().all(|(i, &r)| r as usize == first + i) {
            return self.run_lm_head(first, logits_rows.len());
        }
        let head = self.pending_head()?;
        let Some(gathered) = &self.gathered_hidden else {
            return Err(CudaError::Unsupported("no buffer for gathered LM-head rows".into()));
        };
        let out = gathered.ptr();
        self.gpu.upload(self.inputs.sample_logits_rows.ptr(), logits_rows)?;
        self.gpu.launch(
            "embedding_gather",
            (logits_rows.len() as u32, 1, 1),
            128,
            &[
                Arg::Ptr(head.hidden),
                Arg::Ptr(self.inputs.sample_logits_rows.ptr()),
                Arg::Ptr(out),
                // The gather copies 16-bit words.
                Arg::I32((head.hidden_size * self.opts.dtype.bytes() / 2) as i32),
            ],
        )?;
        self.lm_head_on(out, logits_rows.len(), head)
    }

    /// The logits rows of the last forward, `[rows, vocab]` f32, into `out` (resized).
    pub(super) fn copy_logits_to_host(&mut self, out: &mut Vec<f32>) -> Result<(), CudaError> {
        self.copy_logits_rows_to_host(0, out)
    }

    /// Logits rows `first_row..` of the last forward, `[rows - first_row, vocab]` f32, into `out` (resized): the
    /// prompt log-prob rows of a step whose samples were drawn on the GPU.
    pub fn copy_logits_rows_to_host(&mut self, first_row: usize, out: &mut Vec<f32>) -> Result<(), CudaError> {
        self.gpu.bind()?;
        let (rows, v) = (self.num_logits_rows.saturating_sub(first_row), self.shape.vocab_size);
        out.resize(rows * v, 0.0);
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(self.logits_capacity);
            self.run_lm_head(first_row + r, n)?;
            self.gpu
                .download(&mut out[r * v..(r + n) * v], self.scratch.logits.ptr())?;
            r += n;
        }
        Ok(())
    }

    /// Samples one token per entry of `rows` on the GPU (see `kernels/sampling.cu`): sample `i` draws from
    /// logits row `logits_rows[i]` following `rows[i]`, whose edits index into `edits` and whose allowed-token
    /// bitmask (when `mask_row >= 0`) is row `mask_row` of `masks` (`mask_words(vocab)` words per row; rows
    /// must use increasing mask rows, as `DeviceSamplingBatch` packs them). Only ids, log-probs, ranks and the
    /// asked-for log-prob lists come back.
    pub fn sample(
        &mut self,
        rows: &[DeviceSampleParams],
        logits_rows: &[u32],
        edits: &[TokenEdit],
        masks: &[u32],
    ) -> Result<Vec<DeviceSample>, CudaError> {
        self.gpu.bind()?;
        if rows.len() != logits_rows.len() {
            return Err(CudaError::Unsupported(format!(
                "{} sampling rows for {} logits row indices",
                rows.len(),
                logits_rows.len()
            )));
        }
        if let Some(&r) = logits_rows.iter().find(|&&r| r as usize >= self.num_logits_rows) {
            return Err(CudaError::Unsupported(format!(
                "logits row {r} to sample; the step has {}",
                self.num_logits_rows
            )));
        }
        let vocab = self.shape.vocab_size;
        let words = mask_words(vocab);
        if masks.len() % words != 0 {
            return Err(CudaError::Unsupported(format!(
                "{} mask words is not a whole number of {words}-word rows",
                masks.len()
            )));
        }
        let mut last_mask = -1;
        for (r, p) in rows.iter().enumerate() {
            let end = p.edit_begin as usize + p.edit_count as usize;
            let mask_ok = p.mask_row < 0 || (p.mask_row > last_mask && (p.mask_row as usize + 1) * words <= masks.len());
            if end > edits.len()
                || p.edit_count as usize > MAX_DEVICE_TOKEN_EDITS
                || p.num_top_logprobs > MAX_DEVICE_TOP_LOGPROBS as i32
                || !mask_ok
            {
                return Err(CudaError::Unsupported(format!("sampling row {r} is malformed: {p:?}")));
            }
            last_mask = last_mask.max(p.mask_row);
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
        // Chunks of at most `logits_capacity` samples whose edits fit the edit buffer.
        let mut out = Vec::with_capacity(rows.len());
        let mut begin = 0;
        while begin < rows.len() {
            let mut end = begin;
            let mut num_edits = 0usize;
            while end < rows.len()
                && end - begin < self.logits_capacity
                && num_edits + rows[end].edit_count as usize <= MAX_DEVICE_TOKEN_EDITS
            {
                num_edits += rows[end].edit_count as usize;
                end += 1;
            }
            self.sample_chunk(&rows[begin..end], &logits_rows[begin..end], edits, masks, &mut out)?;
            begin = end;
        }
        Ok(out)
    }

    /// One launch of the sampler on at most `logits_capacity` samples whose edits fit the edit buffer.
    fn sample_chunk(
        &mut self,
        rows: &[DeviceSampleParams],
        logits_rows: &[u32],
        edits: &[TokenEdit],
        masks: &[u32],
        out: &mut Vec<DeviceSample>,
    ) -> Result<(), CudaError> {
        let n = rows.len();
        self.lm_head_rows(logits_rows)?;
        let vocab = self.shape.vocab_size;
        let words = mask_words(vocab);
        // This chunk's masks are one contiguous run of mask rows (they increase along `rows`, one per
        // constrained row, so at most `logits_capacity` of them): uploaded as is, re-based to 0.
        let first_mask = rows.iter().map(|p| p.mask_row).find(|&m| m >= 0);
        let last_mask = rows.iter().map(|p| p.mask_row).max().unwrap_or(-1);
        // This chunk's edits, packed from 0.
        let mut chunk_rows = Vec::with_capacity(n);
        let mut chunk_edits = Vec::new();
        for p in rows {
            let b = p.edit_begin as usize;
            chunk_rows.push(DeviceSampleParams {
                edit_begin: chunk_edits.len() as u32,
                mask_row: match first_mask {
                    Some(f) if p.mask_row >= 0 => p.mask_row - f,
                    _ => -1,
                },
                ..*p
            });
            chunk_edits.extend_from_slice(&edits[b..b + p.edit_count as usize]);
        }
        let g = &self.gpu;
        let a = &self.scratch;
        g.upload(self.inputs.sample_params.ptr(), &chunk_rows)?;
        g.upload(self.inputs.token_edits.ptr(), &chunk_edits)?;
        if let Some(f) = first_mask {
            let (begin, end) = (f as usize * words, (last_mask as usize + 1) * words);
            if end - begin > self.logits_capacity * words {
                return Err(CudaError::Unsupported(format!(
                    "{} masks in one sampling launch; the buffer holds {}",
                    (end - begin) / words,
                    self.logits_capacity
                )));
            }
            g.upload(self.inputs.token_masks.ptr(), &masks[begin..end])?;
        }
        g.launch(
            "sample_rows",
            (n as u32, 1, 1),
            1024,
            &[
                Arg::Ptr(a.logits.ptr()),
                Arg::I32(vocab as i32),
                Arg::Ptr(self.inputs.sample_params.ptr()),
                Arg::Ptr(self.inputs.token_edits.ptr()),
                Arg::Ptr(self.inputs.token_masks.ptr()),
                Arg::I32(words as i32),
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
        Ok(())
    }
}
