//! `ModelConfig`: the switches that tell Llama-family models apart (Llama 2/3/3.1, SmolLM2, Mistral, Qwen2, Qwen3).
//! Filled from GGUF metadata or an HF `config.json` by the loaders; read by the model and the memory planner.

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
    /// Mistral: sliding-window attention over the last this many positions (None: full attention).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// The architectures the Llama model file implements.
    pub const SUPPORTED_ARCHITECTURES: &'static [&'static str] = &["llama", "mistral", "qwen2", "qwen3"];

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
