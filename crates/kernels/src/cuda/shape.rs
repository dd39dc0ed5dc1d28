//! What the CUDA backend needs to know about a model and a deployment, in plain numbers (the engine's
//! `ModelConfig` and `EngineConfig` are translated into these, so this crate does not depend on the engine).

use crate::backend::KvLayout;

/// What the CUDA backend needs to know about a model before its weights arrive: the KV layout (which sizes the
/// cache, the attention kernels and their partials) and the vocabulary (the logits and sampling buffers).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub layout: KvLayout,
    pub vocab_size: usize,
}

impl ModelShape {
    /// Query rows one attention block holds (see attention.cu).
    pub fn attention_rows(&self) -> usize {
        if self.layout.heads.head_dim == 256 {
            16
        } else {
            32
        }
    }
    /// Query tokens per attention tile: as many as fill `attention_rows` with whole GQA groups.
    pub fn attention_q_tile(&self) -> usize {
        (self.attention_rows() / self.group()).max(1)
    }
    /// Query tokens per tile of the tensor-core attention kernel (flash_attention.cu: 64 rows of (token, query
    /// head of the GQA group)), or `None` for head dims or types it does not serve.
    pub fn flash_q_tile(&self, dtype: ActivationDtype) -> Option<usize> {
        (matches!(self.layout.heads.head_dim, 64 | 128) && dtype.has_tensor_core_attention())
            .then(|| (64 / self.group()).max(1))
    }
    fn group(&self) -> usize {
        let h = self.layout.heads;
        (h.num_heads / h.num_kv_heads.max(1)).max(1)
    }
    pub fn kv_dim(&self) -> usize {
        self.layout.heads.kv_dim()
    }
    /// Bytes of K and V for one token across all layers.
    pub fn kv_bytes_per_token(&self, dtype: ActivationDtype) -> usize {
        2 * self.layout.num_layers * self.kv_dim() * dtype.bytes()
    }
    /// Why this shape cannot run on the CUDA kernels, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let h = self.layout.heads;
        if ![64, 128, 256].contains(&h.head_dim) {
            return Err(format!(
                "head_dim {} (the CUDA attention kernel has 64, 128 and 256)",
                h.head_dim
            ));
        }
        if self.vocab_size % 4 != 0 {
            return Err(format!(
                "vocab_size {} is not a multiple of 4 (the GPU sampler reads float4)",
                self.vocab_size
            ));
        }
        if h.num_kv_heads == 0 || h.num_heads % h.num_kv_heads != 0 {
            return Err(format!(
                "{} heads are not a multiple of {} KV heads",
                h.num_heads, h.num_kv_heads
            ));
        }
        // The attention kernel holds one GQA group's query rows in a block (32 rows, 16 at head_dim 256).
        let max_group = if h.head_dim == 256 { 16 } else { 32 };
        if self.group() > max_group {
            return Err(format!(
                "{} query heads per KV head (the CUDA attention kernel holds {max_group})",
                self.group()
            ));
        }
        Ok(())
    }
}

/// How to place a model on a GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct CudaOptions {
    /// CUDA device ordinal (`cuda:N`).
    pub ordinal: usize,
    /// Weights, activations and KV cache in bf16, f16 or f32.
    pub dtype: ActivationDtype,
    /// Fraction of the GPU's memory this engine may use (weights + activations + KV cache), as in vLLM.
    pub gpu_memory_utilization: f64,
    pub block_size: usize,
    /// Tokens one step may carry (sizes the activation buffers; the memory profile runs a step this large).
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    /// Longest sequence (sizes block tables).
    pub max_model_len: usize,
    /// Use exactly this many KV blocks instead of planning from memory.
    pub num_blocks_override: Option<usize>,
    /// Run every step eagerly (no CUDA graphs).
    pub enforce_eager: bool,
}

/// The float type of weights, activations and the KV cache on the GPU (vLLM's `--dtype`). bf16 and f16 are the
/// serving types; f32 is the reference type (GEMMs in true f32 — no TF32 — and attention on CUDA cores), for
/// checking the engine against an f32 run of another implementation, as vLLM's `--dtype float32` is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ActivationDtype {
    #[default]
    Bf16,
    F16,
    F32,
}

impl ActivationDtype {
    /// Suffix of the kernel entry points built for this type (`add_rms_norm_bf16`, `_f16`, `_f32`).
    pub fn kernel_suffix(self) -> &'static str {
        match self {
            ActivationDtype::Bf16 => "bf16",
            ActivationDtype::F16 => "f16",
            ActivationDtype::F32 => "f32",
        }
    }
    /// The name vLLM and HF use (`bfloat16`, `float16`, `float32`).
    pub fn name(self) -> &'static str {
        match self {
            ActivationDtype::Bf16 => "bfloat16",
            ActivationDtype::F16 => "float16",
            ActivationDtype::F32 => "float32",
        }
    }
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            ActivationDtype::Bf16 | ActivationDtype::F16 => 2,
            ActivationDtype::F32 => 4,
        }
    }
    /// Whether attention can run on the tensor-core kernel (mma.sync takes 16-bit inputs only).
    pub fn has_tensor_core_attention(self) -> bool {
        self != ActivationDtype::F32
    }
    /// `x` rounded to this type (nearest even), back in f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            ActivationDtype::Bf16 => half::bf16::from_f32(x).to_f32(),
            ActivationDtype::F16 => half::f16::from_f32(x).to_f32(),
            ActivationDtype::F32 => x,
        }
    }
    /// Appends `x` in this type's little-endian encoding (16-bit types round to nearest even).
    pub fn encode_into(self, x: f32, out: &mut [u8]) {
        match self {
            ActivationDtype::Bf16 => out.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            ActivationDtype::F16 => out.copy_from_slice(&half::f16::from_f32(x).to_le_bytes()),
            ActivationDtype::F32 => out.copy_from_slice(&x.to_le_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ActivationDtype;

    #[test]
    fn encodings_round_trip_in_their_type() {
        let x = 1.0 + 1.0 / 1024.0; // exact in f16 and f32, rounds to 1.0 in bf16
        let mut two = [0u8; 2];
        let mut four = [0u8; 4];
        ActivationDtype::Bf16.encode_into(x, &mut two);
        assert_eq!(half::bf16::from_le_bytes(two).to_f32(), 1.0);
        ActivationDtype::F16.encode_into(x, &mut two);
        assert_eq!(half::f16::from_le_bytes(two).to_f32(), x);
        ActivationDtype::F32.encode_into(x, &mut four);
        assert_eq!(f32::from_le_bytes(four), x);
        for t in [ActivationDtype::Bf16, ActivationDtype::F16, ActivationDtype::F32] {
            assert_eq!(t.bytes(), if t == ActivationDtype::F32 { 4 } else { 2 });
            assert_eq!(t.has_tensor_core_attention(), t.bytes() == 2);
        }
    }
}
