//! The sparse MoE MLP on the GPU (`Backend::moe`): the router's GEMM on cuBLASLt, then routing, grouping by
//! expert, two grouped GEMMs with the GLU between them and the weighted combine, all on the device (see
//! `kernels/moe.cu`), so the op launches a fixed sequence for a given step size and graphs capture it. The
//! experts of a projection sit in one buffer, `[experts, rows, cols]`.

use super::weights::{encoded_weight, upload_bytes};
use super::*;
use crate::backend::{Activation, ExpertsId, MoeSpec, MoeWeights};
use crate::tensor::WeightMatrix;

/// Rows of one grouped-GEMM tile (MOE_TILE_M in moe.cu) and columns of one block (MOE_TILE_N).
const TILE_M: usize = 64;
const TILE_N: usize = 64;
/// What `moe_route` and `moe_group` handle: a warp holds the top-k, one block's shared memory the experts.
const MAX_TOP_K: usize = 32;
const MAX_EXPERTS: usize = 1024;

/// Working buffers of the MoE layers, sized for the largest step (`max_tokens` tokens) on first use — the
/// profile step, before the KV cache is planned and graphs are captured.
pub(super) struct MoeScratch {
    entries: usize,
    experts: usize,
    /// `[tokens, experts]` f32 router logits.
    logits: DeviceBuffer<f32>,
    topk_ids: DeviceBuffer<u32>,
    topk_w: DeviceBuffer<f32>,
    sorted_entry: DeviceBuffer<u32>,
    entry_pos: DeviceBuffer<u32>,
    expert_offsets: DeviceBuffer<u32>,
    tile_expert: DeviceBuffer<u32>,
    tile_row0: DeviceBuffer<u32>,
    num_tiles: DeviceBuffer<u32>,
    /// Sorted rows: `[entries, 2 inter]`, `[entries, inter]`, `[entries, hidden]`.
    gate_up: FloatBuffer,
    act: FloatBuffer,
    out: FloatBuffer,
    widths: (usize, usize),
}

/// The most tiles `entries` rows over `experts` experts can make (each expert's last tile may be partial).
fn max_tiles(entries: usize, experts: usize) -> usize {
    entries.div_ceil(TILE_M) + experts.min(entries)
}

impl MoeScratch {
    fn alloc(entries: usize, experts: usize, inter: usize, hidden: usize, max_tokens: usize, dtype: ActivationDtype) -> Result<Self, CudaError> {
        let what = "MoE buffers";
        let tiles = max_tiles(entries, experts);
        Ok(Self {
            entries,
            experts,
            logits: DeviceBuffer::alloc(max_tokens * experts, what)?,
            topk_ids: DeviceBuffer::alloc(entries, what)?,
            topk_w: DeviceBuffer::alloc(entries, what)?,
            sorted_entry: DeviceBuffer::alloc(entries, what)?,
            entry_pos: DeviceBuffer::alloc(entries, what)?,
            expert_offsets: DeviceBuffer::alloc(experts + 1, what)?,
            tile_expert: DeviceBuffer::alloc(tiles, what)?,
            tile_row0: DeviceBuffer::alloc(tiles, what)?,
            num_tiles: DeviceBuffer::alloc(1, what)?,
            gate_up: FloatBuffer::alloc(entries * 2 * inter, dtype, what)?,
            act: FloatBuffer::alloc(entries * inter, dtype, what)?,
            out: FloatBuffer::alloc(entries * hidden, dtype, what)?,
            widths: (inter, hidden),
        })
    }

    fn fits(&self, entries: usize, experts: usize, inter: usize, hidden: usize) -> bool {
        self.entries >= entries && self.experts >= experts && self.widths.0 >= inter && self.widths.1 >= hidden
    }
}

impl CudaBackend {
    pub(super) fn upload_expert_stack(&mut self, experts: &[Vec<&WeightMatrix>]) -> Result<ExpertsId, CudaError> {
        let shape = |parts: &Vec<&WeightMatrix>| -> Option<(usize, usize)> {
            let cols = parts.first()?.cols;
            parts.iter().all(|p| p.cols == cols).then(|| (parts.iter().map(|p| p.rows).sum(), cols))
        };
        let Some((rows, cols)) = experts.first().and_then(shape) else {
            return Err(CudaError::Weights("a MoE layer needs at least one expert with matching parts".into()));
        };
        if let Some(other) = experts.iter().map(shape).find(|s| *s != Some((rows, cols))) {
            return Err(CudaError::Weights(format!(
                "experts of one layer have shapes [{rows}, {cols}] and {other:?}"
            )));
        }
        let dtype = self.opts.dtype;
        let buf = FloatBuffer::alloc(experts.len() * rows * cols, dtype, "expert weights")?;
        let mut at = 0;
        for parts in experts {
            for p in parts {
                upload_bytes(&self.gpu, &buf, at, &encoded_weight(p, dtype))?;
                at += p.rows * cols;
            }
        }
        self.weights.push(buf);
        Ok(ExpertsId {
            index: (self.weights.len() - 1) as u32,
            experts: experts.len(),
            rows,
            cols,
        })
    }

    pub(super) fn moe_mlp(
        &mut self,
        x: TensorId,
        w: &MoeWeights,
        spec: MoeSpec,
        shared: Option<TensorId>,
        out: TensorId,
    ) -> Result<(), CudaError> {
        let (hidden, experts) = (x.width, w.router.rows);
        let (gu, down) = (w.gate_up, w.down);
        let inter = down.cols;
        let ok = x.rows == Rows::Tokens
            && out.rows == Rows::Tokens
            && out.width == hidden
            && w.router.cols == hidden
            && gu.experts == experts
            && down.experts == experts
            && (gu.rows, gu.cols) == (2 * inter, hidden)
            && down.rows == hidden
            && (1..=experts.min(MAX_TOP_K)).contains(&spec.top_k)
            && experts <= MAX_EXPERTS
            && shared.is_some() == w.shared_gate.is_some()
            && shared.is_none_or(|s| s.width == hidden && s.rows == Rows::Tokens)
            && w.shared_gate.is_none_or(|g| (g.rows, g.cols) == (1, hidden));
        if !ok {
            return Err(CudaError::Unsupported(format!(
                "moe: {x:?} -> {out:?} with {w:?}, {spec:?}, shared {shared:?} (at most {MAX_EXPERTS} experts and \
                 {MAX_TOP_K} per token)"
            )));
        }
        let t = self.step.tokens;
        if t == 0 {
            return Ok(());
        }
        let entries = t * spec.top_k;
        let dtype = self.opts.dtype;
        if !self.moe.as_ref().is_some_and(|m| m.fits(entries, experts, inter, hidden)) {
            let most = self.max_tokens * spec.top_k;
            self.moe = Some(MoeScratch::alloc(most.max(entries), experts, inter, hidden, self.max_tokens, dtype)?);
        }
        let m = self.moe.as_ref().expect("allocated above");
        let (g, k) = (&self.gpu, &self.kernels);
        self.gemm
            .matmul(g, self.acts[x.index as usize].ptr(), self.weights[w.router.index as usize].ptr(), m.logits.ptr(), t, experts, hidden, OutType::F32)?;
        g.launch(
            "moe_route",
            (t as u32, 1, 1),
            32,
            &[
                Arg::Ptr(m.logits.ptr()),
                Arg::I32(experts as i32),
                Arg::I32(spec.top_k as i32),
                Arg::I32(spec.renormalize as i32),
                Arg::Ptr(m.topk_ids.ptr()),
                Arg::Ptr(m.topk_w.ptr()),
            ],
        )?;
        g.launch(
            "moe_group",
            (1, 1, 1),
            1024,
            &[
                Arg::Ptr(m.topk_ids.ptr()),
                Arg::I32(entries as i32),
                Arg::I32(experts as i32),
                Arg::Ptr(m.sorted_entry.ptr()),
                Arg::Ptr(m.entry_pos.ptr()),
                Arg::Ptr(m.expert_offsets.ptr()),
                Arg::Ptr(m.tile_expert.ptr()),
                Arg::Ptr(m.tile_row0.ptr()),
                Arg::Ptr(m.num_tiles.ptr()),
            ],
        )?;
        let tiles = max_tiles(entries, experts) as u32;
        let gemm = |a: u64, gather: bool, weights: u64, y: u64, n: usize, kdim: usize| {
            g.launch(
                &k.moe_gemm,
                (tiles, n.div_ceil(TILE_N) as u32, 1),
                256,
                &[
                    Arg::Ptr(a),
                    Arg::I32(gather as i32),
                    Arg::I32(spec.top_k as i32),
                    Arg::Ptr(m.sorted_entry.ptr()),
                    Arg::Ptr(weights),
                    Arg::Ptr(y),
                    Arg::I32(n as i32),
                    Arg::I32(kdim as i32),
                    Arg::Ptr(m.expert_offsets.ptr()),
                    Arg::Ptr(m.tile_expert.ptr()),
                    Arg::Ptr(m.tile_row0.ptr()),
                    Arg::Ptr(m.num_tiles.ptr()),
                ],
            )
        };
        let x_ptr = self.acts[x.index as usize].ptr();
        gemm(x_ptr, true, self.weights[gu.index as usize].ptr(), m.gate_up.ptr(), 2 * inter, hidden)?;
        let glu = match spec.activation {
            Activation::Silu => &k.silu_mul,
            Activation::GeluTanh => &k.gelu_tanh_mul,
        };
        g.launch(
            glu,
            (inter.div_ceil(8 * 256) as u32, entries.min(65_535) as u32, 1),
            256,
            &[
                Arg::Ptr(m.gate_up.ptr()),
                Arg::Ptr(m.act.ptr()),
                Arg::I32(entries as i32),
                Arg::I32(inter as i32),
            ],
        )?;
        gemm(m.act.ptr(), false, self.weights[down.index as usize].ptr(), m.out.ptr(), hidden, inter)?;
        g.launch(
            &k.moe_combine,
            (t as u32, 1, 1),
            256,
            &[
                Arg::Ptr(m.out.ptr()),
                Arg::Ptr(m.topk_w.ptr()),
                Arg::Ptr(m.entry_pos.ptr()),
                Arg::Ptr(x_ptr),
                Arg::Ptr(shared.map_or(0, |s| self.acts[s.index as usize].ptr())),
                Arg::Ptr(w.shared_gate.map_or(0, |gw| self.weights[gw.index as usize].ptr())),
                Arg::Ptr(self.acts[out.index as usize].ptr()),
                Arg::I32(hidden as i32),
                Arg::I32(spec.top_k as i32),
            ],
        )
    }
}
