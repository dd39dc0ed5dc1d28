//! `ModelConfig`: the switches that tell the decoder families apart (Llama 2/3/3.1, SmolLM2, Mistral, Qwen2,
//! Qwen3, Gemma 2, Gemma 3 text). Filled from GGUF metadata or an HF `config.json` by the loaders; read by the
//! model and the memory planner. Gemma's differences from Llama are data in `DecoderVariant` (after HF's
//! `modeling_gemma2.py` / `modeling_gemma3.py`), so the one model forward serves both.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    None,
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Position interpolation: positions divided by `factor`.
    Linear {
        factor: f32,
    },
}

/// The MLP's gating activation (`hidden_act` / `hidden_activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HiddenActivation {
    #[default]
    Silu,
    /// `gelu_pytorch_tanh` (Gemma).
    GeluTanh,
}

/// Where a decoder departs from Llama's block; `Default` is Llama's.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct DecoderVariant {
    /// Gemma: every RMSNorm multiplies by `(1 + w)` rather than `w` (folded into the weights at load; GGUF files
    /// from llama.cpp already store `1 + w`, and their loader clears this).
    #[serde(default)]
    pub norm_unit_offset: bool,
    /// Gemma: embeddings times `sqrt(hidden_size)` (HF's `normalizer`).
    #[serde(default)]
    pub scale_embeddings: bool,
    /// Gemma: norms on both sides of each sub-layer (`post_attention_layernorm` on the attention output,
    /// `pre_feedforward_layernorm` / `post_feedforward_layernorm` around the MLP).
    #[serde(default)]
    pub sandwich_norms: bool,
    #[serde(default)]
    pub activation: HiddenActivation,
    /// Gemma: attention scale `query_pre_attn_scalar ** -0.5` instead of `head_dim ** -0.5`.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f32>,
    /// Gemma 2: `attn_logit_softcapping`.
    #[serde(default)]
    pub attn_logit_softcap: Option<f32>,
    /// Gemma 2: `final_logit_softcapping` on the LM head's logits.
    #[serde(default)]
    pub final_logit_softcap: Option<f32>,
    /// Interleaved local/global layers (Gemma 2/3 `layer_types`): `true` where layer `i` uses the sliding
    /// window. Empty: `sliding_window` (when set) applies to every layer (Mistral).
    #[serde(default)]
    pub sliding_layers: Vec<bool>,
    /// Gemma 3: the RoPE base of the sliding-window layers (`rope_local_base_freq`), unscaled; the global layers
    /// use `rope_theta` with `rope_scaling`.
    #[serde(default)]
    pub rope_local_theta: Option<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `llama`, `mistral`, `qwen2` (as the file names it).
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2: bias on q/k/v projections.
    pub attention_bias: bool,
    /// Qwen3: per-head RMSNorm of q and k before RoPE (`self_attn.q_norm` / `k_norm`, `head_dim` weights).
    #[serde(default)]
    pub qk_norm: bool,
    /// Mistral, Gemma's local layers: sliding-window attention over the last this many positions (None: full
    /// attention). Which layers: `variant.sliding_layers`.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Gemma 2/3's departures from the Llama block.
    #[serde(default)]
    pub variant: DecoderVariant,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// The architectures the Llama model file implements.
    pub const SUPPORTED_ARCHITECTURES: &'static [&'static str] =
        &["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"];

    /// The sliding window of layer `layer` (None: it attends to its whole context).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let sliding = &self.variant.sliding_layers;
        self.sliding_window.filter(|_| sliding.is_empty() || sliding.get(layer) == Some(&true))
    }

    /// RoPE inverse frequencies of layer `layer`: Gemma 3's local layers have their own unscaled base.
    pub fn layer_rope_inv_freq(&self, layer: usize) -> Vec<f32> {
        match self.variant.rope_local_theta {
            Some(theta) if self.layer_window(layer).is_some() => {
                pagedllm_kernels::cpu::rope::default_inv_freq(self.head_dim, theta)
            }
            _ => self.rope_inv_freq(),
        }
    }

    /// RoPE inverse frequencies (`head_dim / 2`) with this model's scaling applied; shared by every backend.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        use pagedllm_kernels::cpu::rope;
        let (hd, theta) = (self.head_dim, self.rope_theta);
        match self.rope_scaling {
            RopeScaling::None => rope::default_inv_freq(hd, theta),
            RopeScaling::Linear { factor } => rope::linear_inv_freq(hd, theta, factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => rope::llama3_inv_freq(
                hd,
                theta,
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            ),
        }
    }

    /// K and V bytes of one token across all layers at f32 (the CPU KV cache dtype).
    pub fn kv_bytes_per_token_f32(&self) -> usize {
        2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * 4
    }
}
