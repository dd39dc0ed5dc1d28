//! `CpuBackend`: the backend ops (`crate::backend::Backend`) on the CPU kernels of this module — f32
//! activations, weights read in their stored format (f32/f16/bf16/GGML quants) or, in fast mode on x86, packed in
//! 16-row tiles (`packed_matrix`), the paged KV cache in f16 (fast) or f32 (exact).
//!
//! Fused weights stay as their parts here (q, k, v or gate, up as stored, each possibly in its own quant type, as
//! in a Q4_K_M file): one product per part, written into the fused rows. Ops run eagerly, so `lm_head` computes
//! the logits at once and `logits_to_host` hands them over.

use std::sync::Arc;

use super::int8_matmul::{self, matmul_q8};
use super::isa::{CpuIsa, CpuPrecision};
use super::packed_matrix::{self, matmul_packed_parts, PackedMatrix};
use super::q8_acts::Q8Acts;
use super::team::{par_chunks_mut, ThreadTeam};
use super::{activation, attention, kv_cache::KvCache, matmul::matmul, norm, rope::RopeTable};
use crate::backend::{
    Activation, AttentionSpec, Backend, ExpertsId, Forward, HeadLayout, KvLayout, MoeSpec, MoeWeights, Norm, QkNorm,
    RopeId, RopeSpec, Rows, TensorId, VectorId, WeightId,
};
use crate::batch::InputBatch;
use crate::quant;
use crate::tensor::WeightMatrix;

#[path = "backend_moe.rs"]
mod moe;

/// Most activation rows that take the file-layout int8 kernels in fast mode (Arm, where weights are not packed):
/// decode batches up to 64. Longer prefill chunks keep the dequantize + GEMM path there. Packed weights (x86)
/// take every batch: their kernels beat the GEMM path at prefill too (bench/results/cpu-packed-*).
const FAST_MAX_ROWS: usize = 64;

/// RoPE cos/sin are tabulated for this many leading positions (later ones are computed per token).
const ROPE_CACHED_POSITIONS: usize = 8192;

/// A CPU op refused its arguments (a model/backend mismatch: the model validates shapes at load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuError(pub String);

impl std::fmt::Display for CpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type R = Result<(), CpuError>;

fn bad<T>(m: String) -> Result<T, CpuError> {
    Err(CpuError(m))
}

pub struct CpuBackend {
    weights: Vec<Vec<WeightMatrix>>,
    /// Per weight, its parts re-laid for the fast-mode kernels where this CPU packs them
    /// (`packed_matrix::packs_on`); the file layout stays for exact mode and the embedding lookup.
    packed: Vec<Option<Vec<PackedMatrix>>>,
    vectors: Vec<Vec<f32>>,
    /// Per `ExpertsId`, the weight index of each expert.
    expert_sets: Vec<Vec<u32>>,
    ropes: Vec<RopeTable>,
    acts: Vec<Vec<f32>>,
    kv: KvCache,
    /// The step's batch (swapped in by `run_step`, handed back after).
    batch: InputBatch,
    logits: Vec<f32>,
    /// Contiguous q, k, v of one layer (the kernels take them apart from the fused rows).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    part: Vec<f32>,
    max_position_embeddings: usize,
    precision: CpuPrecision,
    isa: CpuIsa,
    /// The int8 activations of the current matmul input (fast mode), reused across calls.
    q8: Q8Acts,
    /// The compute threads the ops of a forward pass run on (`with_threads`); without one the kernels use
    /// rayon's current pool.
    team: Option<Arc<ThreadTeam>>,
}

impl CpuBackend {
    /// A backend with an empty KV cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new(layout: KvLayout, num_blocks: usize, block_size: usize, max_position_embeddings: usize) -> Self {
        let h = layout.heads;
        Self {
            weights: Vec::new(),
            packed: Vec::new(),
            vectors: Vec::new(),
            expert_sets: Vec::new(),
            ropes: Vec::new(),
            acts: Vec::new(),
            kv: KvCache::with_dtype(
                layout.num_layers,
                num_blocks,
                block_size,
                h.num_kv_heads,
                h.head_dim,
                CpuPrecision::default().kv_dtype(),
            ),
            batch: InputBatch::default(),
            logits: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            part: Vec::new(),
            max_position_embeddings,
            precision: CpuPrecision::default(),
            isa: CpuIsa::detect(),
            q8: Q8Acts::default(),
            team: None,
        }
    }

    /// Runs the ops of every forward pass on a persistent team of `threads` threads (the calling thread and
    /// `threads - 1` workers; see `team`). Fails only if the OS refuses to start a thread.
    pub fn with_threads(mut self, threads: usize) -> Result<Self, CpuError> {
        let team =
            ThreadTeam::new(threads).map_err(|e| CpuError(format!("starting {threads} compute threads: {e}")))?;
        self.team = Some(Arc::new(team));
        Ok(self)
    }

    /// Sets the numeric mode (`fast` by default): fast mode's int8 matmul inputs, packed weights and f16 KV
    /// cache ([`CpuPrecision::kv_dtype`]; the cache is reallocated empty in that element type).
    pub fn with_precision(mut self, precision: CpuPrecision) -> Self {
        self.precision = precision;
        self.packed = self.weights.iter().map(|parts| self.pack(parts)).collect();
        let kv = &self.kv;
        if kv.dtype() != precision.kv_dtype() {
            self.kv = KvCache::with_dtype(
                kv.num_layers,
                kv.num_blocks,
                kv.block_size,
                kv.num_kv_heads,
                kv.head_dim,
                precision.kv_dtype(),
            );
        }
        self
    }

    pub fn precision(&self) -> CpuPrecision {
        self.precision
    }

    /// The kernel family fast mode runs on this CPU.
    pub fn isa(&self) -> CpuIsa {
        self.isa
    }

    pub fn kv_cache(&self) -> &KvCache {
        &self.kv
    }

    /// `parts` packed, if fast mode runs packed weights here and every part can be.
    fn pack(&self, parts: &[WeightMatrix]) -> Option<Vec<PackedMatrix>> {
        let packs = self.precision == CpuPrecision::Fast && packed_matrix::packs_on(self.isa);
        (packs && parts.iter().all(packed_matrix::packable)).then(|| parts.iter().map(PackedMatrix::pack).collect())
    }

    fn rows(&self, r: Rows) -> usize {
        match r {
            Rows::Tokens => self.batch.num_tokens(),
            Rows::Logits => self.batch.logits_indices.len(),
        }
    }

    /// Takes tensor `id` out (to write it while reading others), resized to this step's rows.
    fn take(&mut self, id: TensorId) -> Vec<f32> {
        let mut t = std::mem::take(&mut self.acts[id.index as usize]);
        t.resize(self.rows(id.rows) * id.width, 0.0);
        t
    }

    fn put(&mut self, id: TensorId, t: Vec<f32>) {
        self.acts[id.index as usize] = t;
    }

    fn act(&self, id: TensorId) -> &[f32] {
        &self.acts[id.index as usize]
    }

    fn check_rows(&self, a: TensorId, b: TensorId, what: &str) -> R {
        if a.rows != b.rows {
            return bad(format!("{what}: input rows {:?} but output rows {:?}", a.rows, b.rows));
        }
        if a.index == b.index {
            return bad(format!("{what}: input and output are the same tensor"));
        }
        Ok(())
    }

    /// Copies the q, k and v parts of the fused rows into `self.q/k/v`.
    fn split_qkv(&mut self, qkv: TensorId, heads: HeadLayout) {
        let (qd, kvd) = (heads.q_dim(), heads.kv_dim());
        let t = self.batch.num_tokens();
        let rows = &self.acts[qkv.index as usize];
        for (buf, off, w) in [
            (&mut self.q, 0, qd),
            (&mut self.k, qd, kvd),
            (&mut self.v, qd + kvd, kvd),
        ] {
            buf.clear();
            buf.reserve(t * w);
            for r in 0..t {
                let row = &rows[r * qkv.width..(r + 1) * qkv.width];
                buf.extend_from_slice(&row[off..off + w]);
            }
        }
    }
}

impl CpuBackend {
    /// `o = xs · wᵀ` for `m` rows of `xs` through weight `index` (its parts written side by side): the packed
    /// kernels where the weight is packed, else fast mode's int8 kernels up to `FAST_MAX_ROWS` rows, else the
    /// dequantizing GEMM.
    fn product(&mut self, index: usize, xs: &[f32], m: usize, o: &mut [f32]) {
        let parts = &self.weights[index];
        let (cols, rows) = (parts[0].cols, parts.iter().map(|p| p.rows).sum::<usize>());
        if let Some(packed) = &self.packed[index] {
            self.q8.quantize(xs, m, cols);
            matmul_packed_parts(&self.q8, packed, o, self.isa);
            return;
        }
        // Fast mode: quantize the input once for every part (q, k, v or gate, up each take it).
        let fast =
            self.precision == CpuPrecision::Fast && m <= FAST_MAX_ROWS && parts.iter().all(int8_matmul::supports);
        if fast {
            self.q8.quantize(xs, m, cols);
        }
        let (q8, isa) = (&self.q8, self.isa);
        let product = |p: &WeightMatrix, rows_x: &[f32], rows: usize, dst: &mut [f32]| {
            if fast {
                matmul_q8(q8, p, dst, isa)
            } else {
                matmul(rows_x, rows, p, dst)
            }
        };
        if parts.len() == 1 {
            product(&parts[0], xs, m, o);
        } else if m == 1 && fast {
            int8_matmul::matmul_q8_row_parts(q8, parts, o, isa);
        } else if m == 1 {
            super::matmul::matmul_row_parts(xs, parts, o);
        } else {
            let mut off = 0;
            for p in parts {
                self.part.resize(m * p.rows, 0.0);
                product(p, xs, m, &mut self.part);
                for (dst, src) in o.chunks_exact_mut(rows).zip(self.part.chunks_exact(p.rows)) {
                    dst[off..off + p.rows].copy_from_slice(src);
                }
                off += p.rows;
            }
        }
    }
}

/// `o = act(gate) * up` row by row over the fused `[gate | up]` rows `gu` (`inter` = the width of `o`).
fn glu_rows(gu: &[f32], act: Activation, inter: usize, o: &mut [f32]) {
    // Decode rows split into 256-column pieces (one 1,536-wide row is ~5 µs of exps, serial otherwise);
    // prefill's many rows go a row per task.
    let width = if o.len() < 16 * inter && inter % 256 == 0 { 256 } else { inter.max(1) };
    par_chunks_mut(o, width, |i, o| {
        let (r, c0) = (i * width / inter, i * width % inter);
        let gu = &gu[r * 2 * inter..][..2 * inter];
        let (g, u) = (&gu[c0..c0 + width], &gu[inter + c0..inter + c0 + width]);
        match act {
            Activation::Silu => {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            }
            Activation::GeluTanh => {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = activation::gelu_tanh(g) * u;
                }
            }
        }
    });
}

/// Per-head RMSNorm in place over `[rows, heads, head_dim]`.
fn head_rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    par_chunks_mut(x, d * 16, |_, c| {
        for h in c.chunks_exact_mut(d) {
            let ss: f32 = h.iter().map(|v| v * v).sum();
            let inv = 1.0 / (ss / d as f32 + eps).sqrt();
            for (v, w) in h.iter_mut().zip(weight) {
                *v = w * (*v * inv);
            }
        }
    });
}

impl Backend for CpuBackend {
    type Error = CpuError;

    fn upload_matrix(&mut self, parts: &[&WeightMatrix]) -> Result<WeightId, CpuError> {
        let Some(first) = parts.first() else {
            return bad("a weight matrix needs at least one part".into());
        };
        if let Some(p) = parts.iter().find(|p| p.cols != first.cols) {
            return bad(format!("fused weight parts have {} and {} columns", first.cols, p.cols));
        }
        let id = WeightId {
            index: self.weights.len() as u32,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
        };
        let parts: Vec<WeightMatrix> = parts.iter().map(|&p| p.clone()).collect();
        self.packed.push(self.pack(&parts));
        self.weights.push(parts);
        Ok(id)
    }

    fn upload_experts(&mut self, experts: &[Vec<&WeightMatrix>]) -> Result<ExpertsId, CpuError> {
        let mut ids = Vec::with_capacity(experts.len());
        for parts in experts {
            ids.push(self.upload_matrix(parts)?);
        }
        let Some(&first) = ids.first() else {
            return bad("a MoE layer needs at least one expert".into());
        };
        if let Some(w) = ids.iter().find(|w| (w.rows, w.cols) != (first.rows, first.cols)) {
            return bad(format!(
                "experts of one layer have shapes [{}, {}] and [{}, {}]",
                first.rows, first.cols, w.rows, w.cols
            ));
        }
        self.expert_sets.push(ids.iter().map(|w| w.index).collect());
        Ok(ExpertsId {
            index: (self.expert_sets.len() - 1) as u32,
            experts: ids.len(),
            rows: first.rows,
            cols: first.cols,
        })
    }

    fn upload_vector(&mut self, parts: &[&[f32]]) -> Result<VectorId, CpuError> {
        let v: Vec<f32> = parts.concat();
        let len = v.len();
        self.vectors.push(v);
        Ok(VectorId {
            index: (self.vectors.len() - 1) as u32,
            len,
        })
    }

    fn upload_rope(&mut self, spec: &RopeSpec) -> Result<RopeId, CpuError> {
        let hd = self.kv.head_dim;
        if spec.inv_freq.is_empty() || spec.rotary_dim() > hd || hd > 512 {
            return bad(format!(
                "{} RoPE frequencies for head_dim {hd} (at most 512)",
                spec.inv_freq.len()
            ));
        }
        if !(spec.attention_factor.is_finite() && spec.attention_factor > 0.0) {
            return bad(format!(
                "RoPE attention factor {} must be positive",
                spec.attention_factor
            ));
        }
        let cached = self.max_position_embeddings.min(ROPE_CACHED_POSITIONS);
        self.ropes.push(RopeTable::partial(
            spec.inv_freq.clone(),
            hd,
            spec.attention_factor,
            cached,
        ));
        Ok(RopeId((self.ropes.len() - 1) as u32))
    }

    fn alloc_activation(&mut self, rows: Rows, width: usize) -> Result<TensorId, CpuError> {
        self.acts.push(Vec::new());
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
        if let Some(&id) = self.batch.token_ids.iter().find(|&&id| id as usize >= table.rows) {
            return bad(format!("token id {id} is outside the vocabulary of {}", table.rows));
        }
        let mut o = self.take(out);
        let emb = &self.weights[table.index as usize][0];
        let ids = &self.batch.token_ids;
        par_chunks_mut(&mut o, out.width, |i, row| {
            quant::dequantize_row(emb.dtype, emb.row(ids[i] as usize), row);
            if let Some(s) = scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        });
        self.put(out, o);
        Ok(())
    }

    fn add_rms_norm(
        &mut self,
        residual: TensorId,
        delta: Option<TensorId>,
        weight: VectorId,
        n: Norm,
        out: TensorId,
    ) -> R {
        if residual.rows != Rows::Tokens || residual.width != weight.len || out.width != weight.len {
            return bad(format!(
                "add_rms_norm: {residual:?} / {out:?} with a weight of {}",
                weight.len
            ));
        }
        let mut o = self.take(out);
        match out.rows {
            Rows::Tokens => {
                let mut x = self.take(residual);
                let w = &self.vectors[weight.index as usize];
                match delta {
                    Some(d) => norm::add_rms_norm(&mut x, self.act(d), w, n.eps, &mut o),
                    None => norm::rms_norm(&x, w, n.eps, &mut o),
                }
                self.put(residual, x);
            }
            Rows::Logits => {
                // Only the logits rows get the residual add and the norm; the residual stream is not written.
                let h = residual.width;
                let w = &self.vectors[weight.index as usize];
                let (x, d) = (self.act(residual), delta.map(|d| self.act(d)));
                let mut rows = vec![0.0f32; o.len()];
                for (dst, &i) in rows.chunks_exact_mut(h).zip(&self.batch.logits_indices) {
                    let i = i as usize;
                    dst.copy_from_slice(&x[i * h..(i + 1) * h]);
                    if let Some(d) = d {
                        norm::add_assign(dst, &d[i * h..(i + 1) * h]);
                    }
                }
                if !rows.is_empty() {
                    norm::rms_norm(&rows, w, n.eps, &mut o);
                }
            }
        }
        self.put(out, o);
        Ok(())
    }

    fn linear(&mut self, x: TensorId, w: WeightId, out: TensorId) -> R {
        self.check_rows(x, out, "linear")?;
        if x.width != w.cols || out.width != w.rows {
            return bad(format!(
                "linear: {x:?} -> {out:?} through a [{}, {}] weight",
                w.rows, w.cols
            ));
        }
        let m = self.rows(x.rows);
        let mut o = self.take(out);
        // Out of `acts` while the product borrows the backend's scratch (put back below).
        let xs = std::mem::take(&mut self.acts[x.index as usize]);
        self.product(w.index as usize, &xs, m, &mut o);
        self.acts[x.index as usize] = xs;
        self.put(out, o);
        Ok(())
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
        if qkv.width != heads.qkv_dim() || layer >= self.kv.num_layers {
            return bad(format!("rope_kv_write: {qkv:?} for {heads:?} in layer {layer}"));
        }
        self.split_qkv(qkv, heads);
        let (qd, kvd, hd) = (heads.q_dim(), heads.kv_dim(), heads.head_dim);
        if let Some(b) = bias {
            let b = &self.vectors[b.index as usize];
            for (buf, bb) in [
                (&mut self.q, &b[..qd]),
                (&mut self.k, &b[qd..qd + kvd]),
                (&mut self.v, &b[qd + kvd..]),
            ] {
                buf.chunks_exact_mut(bb.len()).for_each(|row| norm::add_assign(row, bb));
            }
        }
        if let Some(n) = qk_norm {
            if n.q.len != hd || n.k.len != hd {
                return bad(format!(
                    "qk-norm weights of {} / {} values for head_dim {hd}",
                    n.q.len, n.k.len
                ));
            }
            head_rms_norm(&mut self.q, &self.vectors[n.q.index as usize], n.norm.eps);
            head_rms_norm(&mut self.k, &self.vectors[n.k.index as usize], n.norm.eps);
        }
        let table = &self.ropes[rope.0 as usize];
        if table.head_dim() != hd {
            return bad(format!(
                "a RoPE table for head_dim {} in a head_dim {hd} layer",
                table.head_dim()
            ));
        }
        table.apply_qk(
            &mut self.q,
            heads.num_heads,
            &mut self.k,
            heads.num_kv_heads,
            &self.batch.positions,
        );
        self.kv.write(layer, &self.batch.slot_mapping, &self.k, &self.v);
        // The rotated q and k back into the fused rows (attention reads q from there).
        let rows = &mut self.acts[qkv.index as usize];
        for (r, row) in rows.chunks_exact_mut(qkv.width).enumerate() {
            row[..qd].copy_from_slice(&self.q[r * qd..(r + 1) * qd]);
            row[qd..qd + kvd].copy_from_slice(&self.k[r * kvd..(r + 1) * kvd]);
            row[qd + kvd..].copy_from_slice(&self.v[r * kvd..(r + 1) * kvd]);
        }
        Ok(())
    }

    fn attention(&mut self, layer: usize, qkv: TensorId, heads: HeadLayout, spec: AttentionSpec, out: TensorId) -> R {
        self.check_rows(qkv, out, "attention")?;
        if qkv.width != heads.qkv_dim() || out.width != heads.q_dim() || layer >= self.kv.num_layers {
            return bad(format!("attention: {qkv:?} -> {out:?} for {heads:?} in layer {layer}"));
        }
        let (qd, t) = (heads.q_dim(), self.batch.num_tokens());
        self.q.clear();
        for r in 0..t {
            self.q
                .extend_from_slice(&self.acts[qkv.index as usize][r * qkv.width..r * qkv.width + qd]);
        }
        let mut o = self.take(out);
        attention::paged_attention(&self.q, &self.kv, layer, &self.batch, heads.num_heads, &spec, &mut o);
        self.put(out, o);
        Ok(())
    }

    fn glu(&mut self, gate_up: TensorId, act: Activation, out: TensorId) -> R {
        self.check_rows(gate_up, out, "glu")?;
        if gate_up.width != 2 * out.width {
            return bad(format!("glu: {gate_up:?} -> {out:?}"));
        }
        let mut o = self.take(out);
        glu_rows(&self.acts[gate_up.index as usize], act, out.width, &mut o);
        self.put(out, o);
        Ok(())
    }

    fn moe(&mut self, x: TensorId, weights: &MoeWeights, spec: MoeSpec, shared: Option<TensorId>, out: TensorId) -> R {
        self.moe_mlp(x, weights, spec, shared, out)
    }

    fn lm_head(&mut self, hidden: TensorId, w: WeightId, final_softcap: Option<f32>) -> R {
        if hidden.rows != Rows::Logits || hidden.width != w.cols {
            return bad(format!("lm_head: {hidden:?} through a [{}, {}] weight", w.rows, w.cols));
        }
        let m = self.rows(Rows::Logits);
        self.logits.resize(m * w.rows, 0.0);
        let x = &self.acts[hidden.index as usize];
        let head = &self.weights[w.index as usize][0];
        if let Some(packed) = &self.packed[w.index as usize] {
            self.q8.quantize(x, m, w.cols);
            matmul_packed_parts(&self.q8, packed, &mut self.logits, self.isa);
        } else if self.precision == CpuPrecision::Fast && m <= FAST_MAX_ROWS && int8_matmul::supports(head) {
            self.q8.quantize(x, m, w.cols);
            matmul_q8(&self.q8, head, &mut self.logits, self.isa);
        } else {
            matmul(x, m, head, &mut self.logits);
        }
        if let Some(cap) = final_softcap {
            if !(cap.is_finite() && cap > 0.0) {
                return bad(format!("lm_head: final soft-cap {cap} must be a positive number"));
            }
            activation::softcap(&mut self.logits, cap);
        }
        Ok(())
    }

    fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> R {
        if let Some(&(a, b)) = pairs
            .iter()
            .find(|&&(a, b)| a as usize >= self.kv.num_blocks || b as usize >= self.kv.num_blocks)
        {
            return bad(format!(
                "KV block copy {a} -> {b} is outside {} blocks",
                self.kv.num_blocks
            ));
        }
        self.kv.copy_blocks(pairs);
        Ok(())
    }

    fn run_step(&mut self, batch: &mut InputBatch, forward: &mut Forward<'_, Self>) -> R {
        self.logits.clear();
        std::mem::swap(&mut self.batch, batch);
        let result = if self.batch.num_tokens() == 0 && self.batch.logits_indices.is_empty() {
            Ok(())
        } else {
            check_batch(&self.batch, &self.kv).and_then(|()| match self.team.clone() {
                Some(team) => {
                    let r = team.install(|| forward(self));
                    // The engine samples and schedules next: the workers sleep instead of spinning beside it.
                    team.rest();
                    r
                }
                None => forward(self),
            })
        };
        std::mem::swap(&mut self.batch, batch);
        result
    }

    fn logits_to_host(&mut self, out: &mut Vec<f32>) -> R {
        std::mem::swap(out, &mut self.logits);
        Ok(())
    }
}

/// Everything the kernels would otherwise panic on, as errors naming the inconsistent field.
fn check_batch(b: &InputBatch, kv: &KvCache) -> R {
    let (t, n) = (b.num_tokens(), b.num_seqs());
    if b.block_size == 0 || b.block_size != kv.block_size {
        return bad(format!(
            "block_size {} but the KV cache uses {}",
            b.block_size, kv.block_size
        ));
    }
    if b.positions.len() != t || b.slot_mapping.len() != t {
        return bad(format!(
            "{t} tokens but {} positions, {} slots",
            b.positions.len(),
            b.slot_mapping.len()
        ));
    }
    if b.query_start_loc.len() != n + 1 || b.query_start_loc.first() != Some(&0) {
        return bad("query_start_loc must have one entry per sequence plus one, starting at 0".into());
    }
    if b.query_start_loc.windows(2).any(|w| w[1] < w[0]) || b.query_start_loc[n] as usize != t {
        return bad(format!("query_start_loc must rise to the token count {t}"));
    }
    if b.block_tables.len() != n * b.max_blocks_per_seq {
        return bad(format!(
            "block_tables has {} entries for {n} sequences",
            b.block_tables.len()
        ));
    }
    let slots = kv.num_blocks * kv.block_size;
    if let Some(&s) = b.slot_mapping.iter().find(|&&s| s >= slots as i64) {
        return bad(format!("slot {s} beyond the cache's {slots} slots"));
    }
    if let Some(&i) = b.logits_indices.iter().find(|&&i| i as usize >= t) {
        return bad(format!("logits index {i} out of {t} tokens"));
    }
    for s in 0..n {
        let q_len = (b.query_start_loc[s + 1] - b.query_start_loc[s]) as usize;
        let ctx = b.seq_lens[s] as usize;
        if q_len > ctx {
            return bad(format!("sequence {s} has {q_len} new tokens but a context of {ctx}"));
        }
        if ctx.div_ceil(b.block_size) > b.max_blocks_per_seq {
            return bad(format!(
                "sequence {s}: a context of {ctx} needs more than {} blocks",
                b.max_blocks_per_seq
            ));
        }
        if let Some(&blk) = b.block_table(s)[..ctx.div_ceil(b.block_size)]
            .iter()
            .find(|&&blk| blk as usize >= kv.num_blocks)
        {
            return bad(format!(
                "sequence {s}: block {blk} beyond the cache's {} blocks",
                kv.num_blocks
            ));
        }
    }
    Ok(())
}
