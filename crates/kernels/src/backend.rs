//! The backend boundary: the small set of fused ops a model's forward pass is written against, once, for every
//! device (vLLM's CustomOp pattern; candle's one backend trait). The CPU backend (`cpu::CpuBackend`) and the
//! CUDA backend (`cuda::CudaBackend`) implement it; model files in the engine (`model/*.rs`) call it.
//!
//! What the interface guarantees, so a backend can capture or trace a forward pass (CUDA graphs now, a PJRT
//! StableHLO program later):
//! - Tensors, weights and RoPE tables are opaque handles (`TensorId`, `WeightId`, ...) the backend hands out at
//!   load time; an op names its inputs and outputs by handle and never returns data. Nothing in a forward reads
//!   device memory back to the host.
//! - Shapes are fixed per step: a tensor has `width` columns and either one row per scheduled token or one row
//!   per logits row (`Rows`); the row counts, positions, block tables and slot mapping are the step's
//!   `InputBatch`, handed to the backend by `run_step` before the forward runs.
//! - Per-architecture switches (q|k|v bias, qk-norm, tied embeddings, RoPE variant, ...) are arguments of ops,
//!   chosen by the model from its config; a backend holds no model-specific code.
//!
//! Where the result of a step goes is the backend's business: `lm_head` may compute at once (CPU) or defer until
//! the engine asks for logits or for sampled tokens (CUDA, which samples on the device).

use crate::batch::InputBatch;
use crate::tensor::WeightMatrix;

/// How many rows a tensor has in a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// One row per scheduled token (`InputBatch::token_ids`).
    Tokens,
    /// One row per entry of `InputBatch::logits_indices`.
    Logits,
}

/// An activation tensor: `rows x width` values in the backend's activation type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorId {
    pub index: u32,
    pub rows: Rows,
    pub width: usize,
}

/// A weight matrix `[rows, cols]` (output features x input features) on the device, in the backend's
/// format for it (dense in the activation type on CUDA; the stored format, quantized or not, on the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightId {
    pub index: u32,
    pub rows: usize,
    pub cols: usize,
}

/// A weight vector (norm weights, biases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorId {
    pub index: u32,
    pub len: usize,
}

/// A rotary-embedding table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeId(pub u32);

/// RMSNorm parameters: `y = x / sqrt(mean(x^2) + eps) * w`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Norm {
    pub eps: f32,
    /// Gemma's RMSNorm (HF `Gemma2RMSNorm`): the normalized row times the weight in f32 (weights kept in f32:
    /// the folded `1 + w` loses bits in bf16), rounded once. Otherwise Llama's order: the normalized value is
    /// rounded to the activation type before the weight (in that type) multiplies it. Only the row norms
    /// (`add_rms_norm`) read it; the CPU computes in f32 either way.
    pub f32_weights: bool,
}

/// A rotary embedding in HF's rotate-half convention over the first `rotary_dim = 2 * inv_freq.len()` dims of
/// each head: the pair `(x[i], x[i + rotary_dim / 2])` turns by `position * inv_freq[i]`, and dims from
/// `rotary_dim` on pass through (partial rotary: Phi-4-mini rotates 3/4 of each head). Scaling schemes (llama3,
/// linear, the chosen LongRoPE factor list) are folded into `inv_freq` by the model; LongRoPE's attention
/// factor scales cos and sin (HF: `cos = emb.cos() * attention_scaling`).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    /// `rotary_dim / 2` inverse frequencies (`rotary_dim` even, at most `head_dim`).
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (1 except for LongRoPE).
    pub attention_factor: f32,
}

impl RopeSpec {
    /// Full-head RoPE with no attention factor.
    pub fn new(inv_freq: Vec<f32>) -> Self {
        Self {
            inv_freq,
            attention_factor: 1.0,
        }
    }

    pub fn rotary_dim(&self) -> usize {
        2 * self.inv_freq.len()
    }
}

/// How the fused q|k|v rows of a layer are laid out: `[q (num_heads * head_dim) | k | v (num_kv_heads *
/// head_dim each)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLayout {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl HeadLayout {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
}

/// Per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3): weights of `head_dim` values each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QkNorm {
    pub q: VectorId,
    pub k: VectorId,
    pub norm: Norm,
}

/// What a layer's attention op needs besides the step's batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    /// Multiplies `q · k` (HF: `head_dim ** -0.5` unless the config says otherwise).
    pub scale: f32,
    /// Sliding-window attention (Mistral, Gemma's local layers): a token at position `p` sees keys
    /// `p + 1 - w ..= p`; earlier positions are never read, so their blocks may be freed.
    pub sliding_window: Option<u32>,
    /// Gemma 2's attention-logit soft-capping: `s -> c * tanh(s / c)` after scaling.
    pub softcap: Option<f32>,
}

/// The gating activation of a GLU MLP: `out = act(gate) * up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    /// SwiGLU (Llama, Qwen, Mistral).
    #[default]
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma's `gelu_pytorch_tanh`):
    /// `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`.
    GeluTanh,
}

/// A stack of `experts` weight matrices of one shape `[rows, cols]`: one MoE layer's gate|up (each expert's
/// gate and up fused) or down projections, expert `e` at position `e`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertsId {
    pub index: u32,
    pub experts: usize,
    pub rows: usize,
    pub cols: usize,
}

/// The weights of a sparse MoE MLP (HF `Qwen3MoeSparseMoeBlock`, `Qwen2MoeSparseMoeBlock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeWeights {
    /// `[experts, hidden]`: the router's logits are `x · routerᵀ`.
    pub router: WeightId,
    /// `experts x [2 inter, hidden]`.
    pub gate_up: ExpertsId,
    /// `experts x [hidden, inter]`.
    pub down: ExpertsId,
    /// Qwen2-MoE: `[1, hidden]`, the shared expert's output is added times `sigmoid(x · gateᵀ)`.
    pub shared_gate: Option<WeightId>,
}

/// How a MoE MLP routes: the `top_k` experts of highest softmax probability (f32 softmax over the router's
/// logits; ties to the lower expert index), their probabilities renormalized to sum 1 when `renormalize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeSpec {
    pub top_k: usize,
    pub renormalize: bool,
    pub activation: Activation,
}

/// The shape a backend's KV cache and step buffers are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub num_layers: usize,
    pub heads: HeadLayout,
}

/// A model's forward pass as a backend runs it: called once per eager step, and at capture time by backends
/// that record it (CUDA graphs).
pub type Forward<'a, B> = dyn FnMut(&mut B) -> Result<(), <B as Backend>::Error> + 'a;

/// The ops a model is written against (see the module doc for the guarantees).
pub trait Backend {
    type Error: std::fmt::Display;

    // --- load time ---
    /// Uploads a matrix made of `parts` stacked by rows (q|k|v or gate|up fused into one product); every part
    /// has the same number of columns.
    fn upload_matrix(&mut self, parts: &[&WeightMatrix]) -> Result<WeightId, Self::Error>;
    /// Uploads the values of `parts` concatenated (a fused bias, or one norm weight).
    fn upload_vector(&mut self, parts: &[&[f32]]) -> Result<VectorId, Self::Error>;
    fn upload_rope(&mut self, spec: &RopeSpec) -> Result<RopeId, Self::Error>;
    /// Uploads one MoE layer's experts: `experts[e]` are expert `e`'s parts stacked by rows (gate|up fused, or
    /// the single down matrix); every expert has the same shape.
    fn upload_experts(&mut self, experts: &[Vec<&WeightMatrix>]) -> Result<ExpertsId, Self::Error>;
    /// A persistent activation buffer of `width` columns, with room for the largest step.
    fn alloc_activation(&mut self, rows: Rows, width: usize) -> Result<TensorId, Self::Error>;

    // --- one step ---
    /// `out[t] = table[token_ids[t]]`, times `scale` when given (Gemma's `sqrt(hidden)`; HF rounds the scale to
    /// the activation type first, and so does a backend).
    fn embed(&mut self, table: WeightId, scale: Option<f32>, out: TensorId) -> Result<(), Self::Error>;
    /// `residual += delta` (when given), then `out = rms_norm(residual) * weight`. With `out.rows ==
    /// Rows::Logits` only the logits rows are normed into `out` and `residual` is left as it was.
    fn add_rms_norm(
        &mut self,
        residual: TensorId,
        delta: Option<TensorId>,
        weight: VectorId,
        norm: Norm,
        out: TensorId,
    ) -> Result<(), Self::Error>;
    /// `out = x · wᵀ` (`x`: `[rows, w.cols]`, `out`: `[rows, w.rows]`).
    fn linear(&mut self, x: TensorId, w: WeightId, out: TensorId) -> Result<(), Self::Error>;
    /// On the fused q|k|v rows of `qkv`, in place: add `bias` (q|k|v, when given), per-head RMSNorm of q and k
    /// (when given), rotate q and k; then write k and v into layer `layer`'s paged KV cache through the slot
    /// mapping (slot < 0: not written).
    fn rope_kv_write(
        &mut self,
        layer: usize,
        qkv: TensorId,
        heads: HeadLayout,
        bias: Option<VectorId>,
        qk_norm: Option<QkNorm>,
        rope: RopeId,
    ) -> Result<(), Self::Error>;
    /// Causal attention of the q part of `qkv` over layer `layer`'s paged KV cache, for the step's varlen batch
    /// (prefill chunks and decodes mixed): `out` `[tokens, num_heads * head_dim]`.
    fn attention(
        &mut self,
        layer: usize,
        qkv: TensorId,
        heads: HeadLayout,
        spec: AttentionSpec,
        out: TensorId,
    ) -> Result<(), Self::Error>;
    /// `out = act(gate) * up` on the fused `[gate | up]` rows of `gate_up`.
    fn glu(&mut self, gate_up: TensorId, act: Activation, out: TensorId) -> Result<(), Self::Error>;
    /// A sparse MoE MLP on the normed rows `x` (`[tokens, hidden]`): per token, the experts chosen by `spec` from
    /// the router's softmax, `out = sum_e p_e * down_e(act(gate_e x) * up_e x)`, plus (Qwen2-MoE) the shared
    /// expert's output `shared` times `sigmoid(x · shared_gateᵀ)`. Routing happens on the device: the op reads
    /// nothing back, so a backend can capture it.
    fn moe(
        &mut self,
        x: TensorId,
        weights: &MoeWeights,
        spec: MoeSpec,
        shared: Option<TensorId>,
        out: TensorId,
    ) -> Result<(), Self::Error>;
    /// The step's logits: `hidden` (the final-normed logits rows) times `w`ᵀ, f32, then (when `final_softcap`
    /// is given: Gemma 2's `final_logit_softcapping`) `x -> c * tanh(x / c)` on every logit, so sampling and
    /// log-probs see the capped values. A backend may compute them here or when they are asked for.
    fn lm_head(&mut self, hidden: TensorId, w: WeightId, final_softcap: Option<f32>) -> Result<(), Self::Error>;

    // --- around the forward ---
    /// Copies whole KV blocks `(from, to)` in every layer (copy-on-write of a shared partial block).
    fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<(), Self::Error>;
    /// Runs one step: takes the batch's inputs, then runs (or replays a capture of) `forward`.
    fn run_step(&mut self, batch: &mut InputBatch, forward: &mut Forward<'_, Self>) -> Result<(), Self::Error>;
    /// The logits rows of the last step, `[rows, vocab]` f32, into `out` (resized).
    fn logits_to_host(&mut self, out: &mut Vec<f32>) -> Result<(), Self::Error>;
}
