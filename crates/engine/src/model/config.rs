//! `ModelConfig`: the switches that tell the decoder families apart (Llama 2/3/3.1, SmolLM2, Mistral, Qwen2,
//! Qwen3, Gemma 2, Gemma 3 text, Phi-3 / Phi-4-mini). Filled from GGUF metadata or an HF `config.json` by the loaders; read by the
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
    /// Phi-3's LongRoPE (HF `longrope`, formerly `su`; `_compute_longrope_parameters`): per-frequency rescale
    /// factors, `short_factor` for sequences within `original_max_position_embeddings` and `long_factor` beyond,
    /// with cos and sin times `attention_factor` (default `sqrt(1 + ln(s) / ln(original))`, `s` = the context
    /// extension factor).
    ///
    /// Which list a model runs on is `use_long`, fixed per engine as vLLM does (`Phi3LongRoPEScaledRotaryEmbedding`:
    /// `use_long_rope = max_model_len > original_max_position_embeddings`): the engine sets it from its
    /// `max_model_len` (`ModelConfig::set_max_model_len`). HF switches per forward (long once the last position
    /// passes the original context) and Phi3's `generate` recomputes the whole KV cache when a sequence crosses it;
    /// a fixed choice keeps every cached key valid (prefix cache included) and the forward free of host decisions,
    /// and equals HF exactly for sequences past the original context (engine on the long factors) and for engines
    /// limited to it (short factors). vLLM's older rule (long for the whole batch once any position passes) made a
    /// request's keys depend on its batch-mates; a per-position rule would mix keys of two RoPEs in one sequence,
    /// which HF never computes.
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position_embeddings: usize,
        attention_factor: f32,
        use_long: bool,
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
    /// Phi-3 family: RoPE on the first this-many dims of each head only (`int(head_dim * partial_rotary_factor)`,
    /// Phi-4-mini: 96 of 128); None: the whole head.
    #[serde(default)]
    pub rotary_dim: Option<usize>,
}

/// A sparse mixture-of-experts MLP (HF `Qwen3MoeSparseMoeBlock`, `Qwen2MoeSparseMoeBlock`): a router picks
/// `num_experts_per_tok` of `num_experts` GLU experts per token by softmax probability; their outputs are summed
/// weighted by those probabilities (renormalized to sum 1 when `norm_topk_prob`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    /// Each expert's intermediate size (`moe_intermediate_size`).
    pub moe_intermediate_size: usize,
    pub norm_topk_prob: bool,
    /// `true` where layer `i` has the sparse MLP (HF: not in `mlp_only_layers` and `(i + 1) %
    /// decoder_sparse_step == 0`); the others have a dense MLP of `intermediate_size`.
    pub sparse_layers: Vec<bool>,
    /// Qwen2-MoE's shared expert (`shared_expert_intermediate_size`), added to every token's output times
    /// `sigmoid(shared_expert_gate · x)`; None: no shared expert (Qwen3-MoE).
    #[serde(default)]
    pub shared_expert_intermediate_size: Option<usize>,
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
    /// Qwen3-MoE / Qwen2-MoE: the sparse MLP and which layers have it.
    #[serde(default)]
    pub moe: Option<MoeConfig>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// The architectures the Llama model file implements.
    pub const SUPPORTED_ARCHITECTURES: &'static [&'static str] =
        &["llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma2", "gemma3_text", "phi3"];

    /// The sparse MLP of layer `layer`, if it has one.
    pub fn layer_moe(&self, layer: usize) -> Option<&MoeConfig> {
        self.moe.as_ref().filter(|m| m.sparse_layers.get(layer) == Some(&true))
    }

    /// The leading dims of each head that RoPE rotates.
    pub fn rotary_dim(&self) -> usize {
        self.variant.rotary_dim.unwrap_or(self.head_dim)
    }

    /// Fixes what depends on the engine's context limit: LongRoPE's factor list (see `RopeScaling::LongRope`).
    pub fn set_max_model_len(&mut self, max_model_len: usize) {
        if let RopeScaling::LongRope {
            original_max_position_embeddings,
            use_long,
            ..
        } = &mut self.rope_scaling
        {
            *use_long = max_model_len > *original_max_position_embeddings;
        }
    }

    /// What multiplies RoPE's cos and sin (LongRoPE's attention factor; 1 otherwise).
    pub fn rope_attention_factor(&self) -> f32 {
        match self.rope_scaling {
            RopeScaling::LongRope { attention_factor, .. } => attention_factor,
            _ => 1.0,
        }
    }

    /// The sliding window of layer `layer` (None: it attends to its whole context).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let sliding = &self.variant.sliding_layers;
        self.sliding_window.filter(|_| sliding.is_empty() || sliding.get(layer) == Some(&true))
    }

    /// RoPE inverse frequencies of layer `layer`: Gemma 3's local layers have their own unscaled base.
    pub fn layer_rope_inv_freq(&self, layer: usize) -> Vec<f32> {
        match self.variant.rope_local_theta {
            Some(theta) if self.layer_window(layer).is_some() => {
                pagedllm_kernels::cpu::rope::default_inv_freq(self.rotary_dim(), theta)
            }
            _ => self.rope_inv_freq(),
        }
    }

    /// RoPE inverse frequencies (`rotary_dim / 2`) with this model's scaling applied; shared by every backend.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        use pagedllm_kernels::cpu::rope;
        let (hd, theta) = (self.rotary_dim(), self.rope_theta);
        match &self.rope_scaling {
            RopeScaling::None => rope::default_inv_freq(hd, theta),
            RopeScaling::Linear { factor } => rope::linear_inv_freq(hd, theta, *factor),
            &RopeScaling::Llama3 {
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
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                use_long,
                ..
            } => rope::longrope_inv_freq(hd, theta, if *use_long { long_factor } else { short_factor }),
        }
    }

    /// K and V bytes of one token across all layers at f32 (the CPU KV cache dtype).
    pub fn kv_bytes_per_token_f32(&self) -> usize {
        2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * 4
    }
}
