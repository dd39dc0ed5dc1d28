//! The backend ops on the GPU: each op is one kernel launch (two for split-KV attention: partials, then their
//! combine), on the persistent buffers, so a forward made of them can be captured into a graph. GEMMs go to
//! cuBLASLt; the rest are the kernels in `kernels/*.cu`.

use super::weights::{encoded_weight, upload_bytes};
use super::*;
use crate::backend::{
    Activation, AttentionSpec, ExpertsId, HeadLayout, MoeSpec, MoeWeights, Norm, QkNorm, RopeId, RopeSpec, VectorId,
};
use crate::tensor::WeightMatrix;

type R = Result<(), CudaError>;

fn bad(m: String) -> R {
    Err(CudaError::Unsupported(m))
}

/// The norm kernel holds a row in registers (see norm.cu): rows of at most this many values, multiples of 8.
const MAX_NORM_WIDTH: usize = 8192;

impl Backend for CudaBackend {
    type Error = CudaError;

    fn upload_matrix(&mut self, parts: &[&WeightMatrix]) -> Result<WeightId, CudaError> {
        let Some(first) = parts.first() else {
            return Err(CudaError::Weights("a weight matrix needs at least one part".into()));
        };
        let cols = first.cols;
        if let Some(p) = parts.iter().find(|p| p.cols != cols) {
            return Err(CudaError::Weights(format!(
                "fused weight parts have {cols} and {} columns",
                p.cols
            )));
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let dtype = self.opts.dtype;
        let buf = FloatBuffer::alloc(rows * cols, dtype, "weights")?;
        let mut at = 0;
        for p in parts {
            // One part at a time: host memory never holds more than one tensor in the GPU's type.
            upload_bytes(&self.gpu, &buf, at, &encoded_weight(p, dtype))?;
            at += p.rows * cols;
        }
        self.weights.push(buf);
        Ok(WeightId {
            index: (self.weights.len() - 1) as u32,
            rows,
            cols,
        })
    }

    fn upload_experts(&mut self, experts: &[Vec<&WeightMatrix>]) -> Result<ExpertsId, CudaError> {
        self.upload_expert_stack(experts)
    }

    fn upload_vector(&mut self, parts: &[&[f32]]) -> Result<VectorId, CudaError> {
        let dtype = self.opts.dtype;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut bytes = vec![0u8; len * dtype.bytes()];
        for (x, out) in parts.iter().flat_map(|p| p.iter()).zip(bytes.chunks_exact_mut(dtype.bytes())) {
            dtype.encode_into(*x, out);
        }
        let buf = FloatBuffer::alloc(len, dtype, "weights")?;
        upload_bytes(&self.gpu, &buf, 0, &bytes)?;
        self.vectors.push(buf);
        let values: Vec<f32> = parts.concat();
        let f32_buf = DeviceBuffer::alloc(len.max(1), "weights")?;
        self.gpu.upload(f32_buf.ptr(), &values)?;
        self.gpu.synchronize()?;
        self.vectors_f32.push(f32_buf);
        Ok(VectorId {
            index: (self.vectors.len() - 1) as u32,
            len,
        })
    }

    fn upload_rope(&mut self, spec: &RopeSpec) -> Result<RopeId, CudaError> {
        let hd = self.shape.layout.heads.head_dim;
        if spec.inv_freq.is_empty() || spec.rotary_dim() > hd {
            return Err(CudaError::Unsupported(format!(
                "{} RoPE frequencies for head_dim {hd}",
                spec.inv_freq.len()
            )));
        }
        if !(spec.attention_factor.is_finite() && spec.attention_factor > 0.0) {
            return Err(CudaError::Unsupported(format!(
                "RoPE attention factor {} must be positive",
                spec.attention_factor
            )));
        }
        let buf = DeviceBuffer::alloc(spec.inv_freq.len(), "RoPE frequencies")?;
        self.gpu.upload(buf.ptr(), &spec.inv_freq)?;
        self.gpu.synchronize()?;
        self.ropes.push(DeviceRope {
            inv_freq: buf,
            rotary_half: spec.inv_freq.len(),
            attention_factor: spec.attention_factor,
        });
        Ok(RopeId((self.ropes.len() - 1) as u32))
    }

    fn alloc_activation(&mut self, rows: Rows, width: usize) -> Result<TensorId, CudaError> {
        // Logits rows are a subset of the step's tokens, so both kinds hold `max_tokens` rows.
        let buf = FloatBuffer::alloc(self.max_tokens * width, self.opts.dtype, "activations")?;
        self.acts.push(buf);
        Ok(TensorId {
            index: (self.acts.len() - 1) as u32,
            rows,
            width,
        })
    }

    fn embed(&mut self, table: WeightId, scale: Option<f32>, out: TensorId) -> R {
        if out.rows != Rows::Tokens || out.width != table.cols {
            return bad(format!("embed: output {out:?} for a table of {} columns", table.cols));
        }
        let t = self.step.tokens as u32;
        if let Some(scale) = scale {
            // HF multiplies by the normalizer as a tensor of the model's dtype: round it the same way.
            let rounded = self.opts.dtype.round(scale);
            return self.gpu.launch(
                &self.kernels.embedding_gather_scaled,
                (t, 1, 1),
                256,
                &[
                    Arg::Ptr(self.weight(table)),
                    Arg::Ptr(self.inputs.tokens.ptr()),
                    Arg::Ptr(self.act(out)),
                    Arg::I32(out.width as i32),
                    Arg::F32(rounded),
                ],
            );
        }
        self.gpu.launch(
            "embedding_gather",
            (t, 1, 1),
            128,
            &[
                Arg::Ptr(self.weight(table)),
                Arg::Ptr(self.inputs.tokens.ptr()),
                Arg::Ptr(self.act(out)),
                // The gather copies 16-bit words.
                Arg::I32((out.width * self.opts.dtype.bytes() / 2) as i32),
            ],
        )
    }

    fn add_rms_norm(&mut self, residual: TensorId, delta: Option<TensorId>, weight: VectorId, n: Norm, out: TensorId) -> R {
        let h = residual.width;
        if residual.rows != Rows::Tokens || h != weight.len || out.width != h || h % 8 != 0 || h > MAX_NORM_WIDTH {
            return bad(format!(
                "add_rms_norm: {residual:?} -> {out:?} with a weight of {} (rows of at most {MAX_NORM_WIDTH}, \
                 multiples of 8)",
                weight.len
            ));
        }
        // Logits rows: norm only the gathered rows, leave the residual stream as it is.
        let (rows_ptr, write) = match out.rows {
            Rows::Tokens => (0, true),
            Rows::Logits => (self.inputs.logits_indices.ptr(), false),
        };
        let rows = self.rows(out) as u32;
        if rows == 0 {
            return Ok(());
        }
        let (kernel, weights) = if n.f32_weights {
            (&self.kernels.add_rms_norm_f32w, self.vectors_f32[weight.index as usize].ptr())
        } else {
            (&self.kernels.add_rms_norm, self.vectors[weight.index as usize].ptr())
        };
        self.gpu.launch(
            kernel,
            (rows, 1, 1),
            256,
            &[
                Arg::Ptr(self.act(residual)),
                Arg::Ptr(delta.map_or(0, |d| self.act(d))),
                Arg::Ptr(weights),
                Arg::Ptr(self.act(out)),
                Arg::Ptr(rows_ptr),
                Arg::I32(h as i32),
                Arg::F32(n.eps),
                Arg::I32(write as i32),
            ],
        )
    }

    fn linear(&mut self, x: TensorId, w: WeightId, out: TensorId) -> R {
        if x.rows != out.rows || x.width != w.cols || out.width != w.rows {
            return bad(format!("linear: {x:?} -> {out:?} through a [{}, {}] weight", w.rows, w.cols));
        }
        let t = self.rows(x);
        let (xp, wp, yp) = (self.act(x), self.weight(w), self.act(out));
        self.gemm.matmul(&self.gpu, xp, wp, yp, t, w.rows, w.cols, OutType::Act)
    }

    fn rope_kv_write(
        &mut self,
        layer: usize,
        qkv: TensorId,
        heads: HeadLayout,
        bias: Option<VectorId>,
        qk_norm: Option<QkNorm>,
        rope: RopeId,
    ) -> R {
        if heads != self.shape.layout.heads || qkv.width != heads.qkv_dim() || layer >= self.shape.layout.num_layers {
            return bad(format!("rope_kv_write: {qkv:?} for {heads:?} in layer {layer}"));
        }
        let hd = heads.head_dim;
        let (qn, kn, eps) = match qk_norm {
            Some(n) if n.q.len == hd && n.k.len == hd => (
                self.vectors[n.q.index as usize].ptr(),
                self.vectors[n.k.index as usize].ptr(),
                n.norm.eps,
            ),
            Some(n) => {
                return bad(format!("qk-norm weights of {} / {} values for head_dim {hd}", n.q.len, n.k.len))
            }
            None => (0, 0, 0.0),
        };
        let (k_cache, v_cache) = self.kv_layer(layer);
        let rope = &self.ropes[rope.0 as usize];
        self.gpu.launch(
            &self.kernels.rope_qkv_cache,
            (self.step.tokens as u32, (heads.num_heads + heads.num_kv_heads) as u32, 1),
            (hd / 2) as u32,
            &[
                Arg::Ptr(self.act(qkv)),
                Arg::Ptr(bias.map_or(0, |b| self.vectors[b.index as usize].ptr())),
                Arg::Ptr(qn),
                Arg::Ptr(kn),
                Arg::F32(eps),
                Arg::Ptr(self.inputs.positions.ptr()),
                Arg::Ptr(rope.inv_freq.ptr()),
                Arg::I32(rope.rotary_half as i32),
                Arg::F32(rope.attention_factor),
                Arg::Ptr(self.inputs.slots.ptr()),
                Arg::Ptr(k_cache),
                Arg::Ptr(v_cache),
                Arg::I32(heads.num_heads as i32),
                Arg::I32(heads.num_kv_heads as i32),
                Arg::I32(hd as i32),
            ],
        )
    }

    fn attention(&mut self, layer: usize, qkv: TensorId, heads: HeadLayout, spec: AttentionSpec, out: TensorId) -> R {
        if heads != self.shape.layout.heads
            || qkv.width != heads.qkv_dim()
            || out.width != heads.q_dim()
            || layer >= self.shape.layout.num_layers
        {
            return bad(format!("attention: {qkv:?} -> {out:?} for {heads:?} in layer {layer}"));
        }
        let StepShape { tokens: t, width, tiles, .. } = self.step;
        if tiles == 0 {
            return Ok(());
        }
        let splits = self.attention_splits();
        // 0: no window / no cap (the kernels' convention).
        let window = spec.sliding_window.map_or(0, |w| w.min(i32::MAX as u32) as i32);
        let softcap = spec.softcap.unwrap_or(0.0);
        let (k_cache, v_cache) = self.kv_layer(layer);
        let inp = &self.inputs;
        let sc = &self.scratch;
        let g = &self.gpu;
        let k = &self.kernels;
        let grid = (tiles as u32, heads.num_kv_heads as u32, splits as u32);
        let combine_grid = (tiles as u32, heads.num_kv_heads as u32, 1);
        let (nh, nkv) = (heads.num_heads as i32, heads.num_kv_heads as i32);
        if self.uses_flash_attention() {
            g.launch_with_shared(
                &k.flash_attention,
                grid,
                128,
                flash_shared_bytes(heads.head_dim) as u32,
                &[
                    Arg::Ptr(self.act(qkv)),
                    Arg::I32(qkv.width as i32),
                    Arg::Ptr(k_cache),
                    Arg::Ptr(v_cache),
                    Arg::Ptr(inp.block_tables.ptr()),
                    Arg::I32(width as i32),
                    Arg::Ptr(inp.seq_lens.ptr()),
                    Arg::Ptr(inp.query_start_loc.ptr()),
                    Arg::Ptr(inp.tile_seq.ptr()),
                    Arg::Ptr(inp.tile_q0.ptr()),
                    Arg::Ptr(self.act(out)),
                    Arg::I32(nh),
                    Arg::I32(nkv),
                    Arg::I32(self.opts.block_size as i32),
                    Arg::F32(spec.scale),
                    Arg::I32(window),
                    Arg::F32(softcap),
                    Arg::I32(splits as i32),
                    Arg::I32(t as i32),
                    Arg::Ptr(sc.flash_part_acc.ptr()),
                    Arg::Ptr(sc.flash_part_ml.ptr()),
                ],
            )?;
            if splits > 1 {
                g.launch(
                    &k.flash_attention_combine,
                    combine_grid,
                    128,
                    &[
                        Arg::Ptr(inp.query_start_loc.ptr()),
                        Arg::Ptr(inp.tile_seq.ptr()),
                        Arg::Ptr(inp.tile_q0.ptr()),
                        Arg::Ptr(self.act(out)),
                        Arg::I32(nh),
                        Arg::I32(nkv),
                        Arg::I32(splits as i32),
                        Arg::I32(t as i32),
                        Arg::Ptr(sc.flash_part_acc.ptr()),
                        Arg::Ptr(sc.flash_part_ml.ptr()),
                    ],
                )?;
            }
            return Ok(());
        }
        let q_tile = self.shape.attention_q_tile() as i32;
        g.launch(
            &k.attention,
            grid,
            128,
            &[
                Arg::Ptr(self.act(qkv)),
                Arg::I32(qkv.width as i32),
                Arg::Ptr(k_cache),
                Arg::Ptr(v_cache),
                Arg::Ptr(inp.block_tables.ptr()),
                Arg::I32(width as i32),
                Arg::Ptr(inp.seq_lens.ptr()),
                Arg::Ptr(inp.query_start_loc.ptr()),
                Arg::Ptr(inp.tile_seq.ptr()),
                Arg::Ptr(inp.tile_q0.ptr()),
                Arg::I32(q_tile),
                Arg::Ptr(self.act(out)),
                Arg::I32(nh),
                Arg::I32(nkv),
                Arg::I32(self.opts.block_size as i32),
                Arg::F32(spec.scale),
                Arg::I32(window),
                Arg::F32(softcap),
                Arg::I32(splits as i32),
                Arg::Ptr(sc.part_acc.ptr()),
                Arg::Ptr(sc.part_ml.ptr()),
            ],
        )?;
        if splits > 1 {
            g.launch(
                &k.attention_combine,
                combine_grid,
                128,
                &[
                    Arg::Ptr(inp.query_start_loc.ptr()),
                    Arg::Ptr(inp.tile_seq.ptr()),
                    Arg::Ptr(inp.tile_q0.ptr()),
                    Arg::I32(q_tile),
                    Arg::Ptr(self.act(out)),
                    Arg::I32(nh),
                    Arg::I32(nkv),
                    Arg::I32(splits as i32),
                    Arg::Ptr(sc.part_acc.ptr()),
                    Arg::Ptr(sc.part_ml.ptr()),
                ],
            )?;
        }
        Ok(())
    }

    fn glu(&mut self, gate_up: TensorId, act: Activation, out: TensorId) -> R {
        if gate_up.rows != out.rows || gate_up.width != 2 * out.width {
            return bad(format!("glu: {gate_up:?} -> {out:?}"));
        }
        let (t, inter) = (self.rows(out), out.width);
        let kernel = match act {
            Activation::Silu => &self.kernels.silu_mul,
            Activation::GeluTanh => &self.kernels.gelu_tanh_mul,
        };
        self.gpu.launch(
            kernel,
            (inter.div_ceil(8 * 256) as u32, t.min(65_535) as u32, 1),
            256,
            &[
                Arg::Ptr(self.act(gate_up)),
                Arg::Ptr(self.act(out)),
                Arg::I32(t as i32),
                Arg::I32(inter as i32),
            ],
        )
    }

    fn moe(&mut self, x: TensorId, weights: &MoeWeights, spec: MoeSpec, shared: Option<TensorId>, out: TensorId) -> R {
        self.moe_mlp(x, weights, spec, shared, out)
    }

    fn lm_head(&mut self, hidden: TensorId, w: WeightId, final_softcap: Option<f32>) -> R {
        if hidden.rows != Rows::Logits || hidden.width != w.cols || w.rows != self.shape.vocab_size {
            return bad(format!("lm_head: {hidden:?} through a [{}, {}] weight", w.rows, w.cols));
        }
        if final_softcap.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad(format!("lm_head: final soft-cap {final_softcap:?} must be a positive number"));
        }
        // Deferred: logits_to_host or sample runs it, in chunks the logits buffer holds.
        self.head = Some(PendingHead {
            hidden: self.act(hidden),
            weight: self.weight(w),
            hidden_size: w.cols,
            final_softcap,
        });
        Ok(())
    }

    fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> R {
        self.copy_kv_blocks(pairs)
    }

    fn run_step(&mut self, batch: &mut InputBatch, forward: &mut Forward<'_, Self>) -> R {
        self.run_step_impl(batch, forward)
    }

    fn logits_to_host(&mut self, out: &mut Vec<f32>) -> R {
        self.copy_logits_to_host(out)
    }
}

impl CudaBackend {
    /// Gemma 2's final-logit soft-cap on the first `rows` rows of the logits buffer (after the LM head's
    /// product; one launch, no host read, so it stays inside a captured step).
    pub(super) fn softcap_logits(&mut self, rows: usize, cap: f32) -> R {
        let n = rows * self.shape.vocab_size;
        if n == 0 {
            return Ok(());
        }
        if n > i32::MAX as usize {
            return bad(format!("{rows} logits rows of {} values in one soft-cap launch", self.shape.vocab_size));
        }
        self.gpu.launch(
            "softcap_f32",
            (n.div_ceil(256).min(65_535) as u32, 1, 1),
            256,
            &[Arg::Ptr(self.scratch.logits.ptr()), Arg::I32(n as i32), Arg::F32(cap)],
        )
    }

    /// Copies whole KV blocks `(from, to)` in every layer (copy-on-write of shared partial blocks).
    fn copy_kv_blocks(&mut self, pairs: &[(u32, u32)]) -> R {
        self.gpu.bind()?;
        // The kernel copies 16-bit words, whatever the float type.
        let block_words = self.opts.block_size * self.shape.kv_dim() * self.opts.dtype.bytes() / 2;
        for chunk in pairs.chunks(MAX_BLOCK_PAIRS) {
            if let Some(&(a, b)) = chunk
                .iter()
                .find(|&&(a, b)| a as usize >= self.num_blocks || b as usize >= self.num_blocks)
            {
                return bad(format!("KV block copy {a} -> {b} is outside {} blocks", self.num_blocks));
            }
            let flat: Vec<u32> = chunk.iter().flat_map(|&(a, b)| [a, b]).collect();
            self.gpu.upload(self.inputs.block_pairs.ptr(), &flat)?;
            for l in 0..self.shape.layout.num_layers {
                let (k, v) = self.kv_layer(l);
                self.gpu.launch(
                    "copy_kv_blocks",
                    (chunk.len() as u32, 1, 1),
                    256,
                    &[
                        Arg::Ptr(k),
                        Arg::Ptr(v),
                        Arg::Ptr(self.inputs.block_pairs.ptr()),
                        Arg::I32(block_words as i32),
                    ],
                )?;
            }
        }
        Ok(())
    }
}
