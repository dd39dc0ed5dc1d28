//! The decoder of the Llama family (Llama 2/3/3.1, SmolLM2, Mistral, Qwen2, Qwen3), of Gemma 2 / Gemma 3 text and
//! of Phi-3 / Phi-4-mini (HF `modeling_phi3.py`: the Llama block with q|k|v and gate|up stored fused, partial
//! rotary and LongRoPE, all data in `ModelConfig`) and of Qwen2-MoE / Qwen3-MoE (the MLP of sparse layers is a
//! routed mixture of experts, `model::mlp`), after HF's `LlamaForCausalLM`: pre-norm blocks of RMSNorm -> GQA attention with rotate-half RoPE -> residual
//! -> RMSNorm -> GLU MLP -> residual, then a final norm and the LM head. The family's switches are data in
//! `ModelConfig`: q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3, Gemma 3), sliding-window attention
//! (Mistral: every layer; Gemma: the local layers of `layer_types`), tied embeddings, RoPE scaling, and
//! Gemma's `DecoderVariant` (after HF's `modeling_gemma2.py` / `modeling_gemma3.py`): `(1 + w)` norms (folded
//! into the weights here), embeddings times `sqrt(hidden)`, sandwich norms (each sub-layer's output is normed
//! before it joins the residual), GELU-tanh GLU, `query_pre_attn_scalar`, attention and final-logit
//! soft-capping, and a second RoPE table for Gemma 3's local layers.
//!
//! Written once against the backend ops (`pagedllm_kernels::backend::Backend`), so the CPU and the CUDA backend
//! run this same forward: q|k|v and gate|up are fused into one product each, bias + qk-norm + RoPE + the paged
//! KV write are one op, and the final norm and LM head run on the logits rows alone (`Rows::Logits`), which
//! saves a `[T x vocab]` product per prefill chunk. The forward reads nothing back from the device, so a
//! backend can capture it (CUDA graphs).

use pagedllm_kernels::backend::{
    Activation, AttentionSpec, Backend, HeadLayout, KvLayout, Norm, QkNorm, RopeId, RopeSpec, Rows, TensorId, VectorId,
    WeightId,
};
use pagedllm_kernels::WeightMatrix;

use super::config::{HiddenActivation, ModelConfig, RopeScaling};
use super::mlp::{Mlp, MlpActivations};
use super::weights::WeightStore;
use crate::error::{EngineError, Result};

struct Layer {
    input_norm: VectorId,
    /// `[q_dim + 2 kv_dim, hidden]`: q, k, v stacked.
    qkv: WeightId,
    /// Qwen2's q|k|v biases.
    qkv_bias: Option<VectorId>,
    /// Qwen3's per-head q/k norms.
    qk_norm: Option<QkNorm>,
    o_proj: WeightId,
    /// The norm before the MLP (Llama's `post_attention_layernorm`, Gemma's `pre_feedforward_layernorm`).
    mlp_norm: VectorId,
    /// Gemma's sandwich norms of the sub-layer outputs, before they join the residual: (attention output:
    /// `post_attention_layernorm`, MLP output: `post_feedforward_layernorm`).
    output_norms: Option<(VectorId, VectorId)>,
    /// Dense GLU or sparse experts (Qwen-MoE).
    mlp: Mlp,
    /// This layer's RoPE table (Gemma 3's local and global layers differ) and attention (window per layer).
    rope: RopeId,
    attention: AttentionSpec,
}

/// The activations one forward passes between ops (persistent buffers on the backend).
struct Activations {
    /// Residual stream `[T, hidden]`.
    residual: TensorId,
    /// Normed input of the current sub-layer.
    normed: TensorId,
    qkv: TensorId,
    attn: TensorId,
    /// Output of the last sub-layer, not yet added to the residual (added by the next fused add + norm).
    delta: TensorId,
    /// A sub-layer output after its sandwich norm (Gemma only: the norm's input and output must differ).
    normed_delta: Option<TensorId>,
    mlp: MlpActivations,
    /// Final-normed hidden states of the logits rows.
    last_hidden: TensorId,
}

pub struct LlamaModel {
    config: ModelConfig,
    heads: HeadLayout,
    embed_tokens: WeightId,
    /// `embed_tokens` itself when the embeddings are tied.
    lm_head: WeightId,
    norm: VectorId,
    layers: Vec<Layer>,
    /// Gemma's `sqrt(hidden)` on the embeddings.
    embed_scale: Option<f32>,
    activation: Activation,
    act: Activations,
}

fn matrix<'a>(ws: &'a WeightStore, name: &str, rows: usize, cols: usize) -> Result<&'a WeightMatrix> {
    let w = ws.matrix(name)?;
    if (w.rows, w.cols) != (rows, cols) {
        return Err(EngineError::load(
            &ws.source,
            format!(
                "tensor `{name}` has shape [{}, {}], expected [{rows}, {cols}]",
                w.rows, w.cols
            ),
        ));
    }
    Ok(w)
}

fn vector(ws: &WeightStore, name: &str, len: usize) -> Result<Vec<f32>> {
    let v = ws.vector(name)?;
    if v.len() != len {
        return Err(EngineError::load(
            &ws.source,
            format!("tensor `{name}` has {} elements, expected {len}", v.len()),
        ));
    }
    Ok(v)
}

/// A norm weight as the ops apply it (`y = normed * w`): Gemma's `(1 + w)` folded in.
fn norm_weight(ws: &WeightStore, name: &str, len: usize, unit_offset: bool) -> Result<Vec<f32>> {
    let mut v = vector(ws, name, len)?;
    if unit_offset {
        v.iter_mut().for_each(|w| *w += 1.0);
    }
    Ok(v)
}

fn backend_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Backend(e.to_string())
}

fn check_config(c: &ModelConfig) -> Result<()> {
    if !ModelConfig::SUPPORTED_ARCHITECTURES.contains(&c.architecture.as_str()) {
        return Err(EngineError::Unsupported(format!(
            "architecture `{}` (supported: {})",
            c.architecture,
            ModelConfig::SUPPORTED_ARCHITECTURES.join(", ")
        )));
    }
    let bad = |m: String| Err(EngineError::Unsupported(format!("model config: {m}")));
    if c.hidden_size == 0 || c.num_hidden_layers == 0 || c.vocab_size == 0 || c.intermediate_size == 0 {
        return bad("hidden_size, intermediate_size, num_hidden_layers and vocab_size must be positive".into());
    }
    if c.num_key_value_heads == 0 || c.num_attention_heads % c.num_key_value_heads != 0 {
        return bad(format!(
            "{} attention heads are not a multiple of {} KV heads",
            c.num_attention_heads, c.num_key_value_heads
        ));
    }
    if c.head_dim == 0 || c.head_dim % 2 != 0 || c.head_dim > 512 {
        return bad(format!("head_dim {} must be even and at most 512", c.head_dim));
    }
    let rot = c.rotary_dim();
    if rot == 0 || rot % 2 != 0 || rot > c.head_dim {
        return bad(format!("rotary dim {rot} must be even and in 2..={}", c.head_dim));
    }
    if let RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings,
        attention_factor,
        ..
    } = &c.rope_scaling
    {
        let ok = |f: &[f32]| f.len() == rot / 2 && f.iter().all(|x| x.is_finite() && *x > 0.0);
        if !ok(short_factor) || !ok(long_factor) {
            return bad(format!(
                "LongRoPE needs {} positive short and long factors (rotary dim {rot} / 2), found {} and {}",
                rot / 2,
                short_factor.len(),
                long_factor.len()
            ));
        }
        if *original_max_position_embeddings == 0 || !(attention_factor.is_finite() && *attention_factor > 0.0) {
            return bad(format!(
                "LongRoPE original_max_position_embeddings {original_max_position_embeddings} and attention factor \
                 {attention_factor} must be positive"
            ));
        }
    }
    let v = &c.variant;
    if !v.sliding_layers.is_empty() && v.sliding_layers.len() != c.num_hidden_layers {
        return bad(format!(
            "{} layer types for {} layers",
            v.sliding_layers.len(),
            c.num_hidden_layers
        ));
    }
    if let Some(m) = &c.moe {
        if m.sparse_layers.len() != c.num_hidden_layers
            || m.num_experts == 0
            || !(1..=m.num_experts).contains(&m.num_experts_per_tok)
            || m.moe_intermediate_size == 0
        {
            return bad(format!(
                "MoE with {} experts, {} per token, expert size {} and {} layer flags for {} layers",
                m.num_experts,
                m.num_experts_per_tok,
                m.moe_intermediate_size,
                m.sparse_layers.len(),
                c.num_hidden_layers
            ));
        }
    }
    let positive = |x: Option<f32>| x.is_none_or(|x| x.is_finite() && x > 0.0);
    if !(positive(v.query_pre_attn_scalar) && positive(v.attn_logit_softcap) && positive(v.final_logit_softcap))
        || !positive(v.rope_local_theta)
    {
        return bad(format!(
            "query_pre_attn_scalar, soft-caps and rope_local_base_freq must be positive: {v:?}"
        ));
    }
    Ok(())
}

impl LlamaModel {
    /// What a backend's KV cache must hold for this config.
    pub fn kv_layout(c: &ModelConfig) -> KvLayout {
        KvLayout {
            num_layers: c.num_hidden_layers,
            heads: HeadLayout {
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
            },
        }
    }

    /// Checks every HF-named tensor of `weights` against `config` and uploads it to `backend`.
    pub fn load<B: Backend>(config: &ModelConfig, weights: &WeightStore, b: &mut B) -> Result<Self> {
        check_config(config)?;
        let c = config;
        let heads = Self::kv_layout(c).heads;
        let (hidden, hd) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (heads.q_dim(), heads.kv_dim());
        let embed = matrix(weights, "model.embed_tokens.weight", c.vocab_size, hidden)?;
        let embed_tokens = b.upload_matrix(&[embed]).map_err(backend_err)?;
        let v = &c.variant;
        let norm_vec = |b: &mut B, name: &str, len: usize| -> Result<VectorId> {
            b.upload_vector(&[&norm_weight(weights, name, len, v.norm_unit_offset)?])
                .map_err(backend_err)
        };
        let eps = Norm {
            eps: c.rms_norm_eps,
            f32_weights: v.sandwich_norms,
        };
        // One RoPE table per distinct frequency list (Gemma 3: local and global).
        let mut ropes: Vec<(Vec<f32>, RopeId)> = Vec::new();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let inv_freq = c.layer_rope_inv_freq(i);
            let rope = match ropes.iter().find(|(f, _)| *f == inv_freq) {
                Some(&(_, id)) => id,
                None => {
                    let spec = RopeSpec {
                        inv_freq: inv_freq.clone(),
                        attention_factor: c.rope_attention_factor(),
                    };
                    let id = b.upload_rope(&spec).map_err(backend_err)?;
                    ropes.push((inv_freq, id));
                    id
                }
            };
            let attention = AttentionSpec {
                scale: 1.0 / v.query_pre_attn_scalar.unwrap_or(hd as f32).sqrt(),
                sliding_window: c.layer_window(i).map(|w| w.min(u32::MAX as usize) as u32),
                softcap: v.attn_logit_softcap,
            };
            let p = format!("model.layers.{i}");
            let attn = |n: &str| format!("{p}.self_attn.{n}");
            // Phi-3 stores q|k|v and gate|up fused, in the order the ops use (`qkv_proj`, `gate_up_proj`).
            let fused_qkv = attn("qkv_proj.weight");
            let qkv = if weights.contains(&fused_qkv) {
                b.upload_matrix(&[matrix(weights, &fused_qkv, q_dim + 2 * kv_dim, hidden)?])
            } else {
                b.upload_matrix(&[
                    matrix(weights, &attn("q_proj.weight"), q_dim, hidden)?,
                    matrix(weights, &attn("k_proj.weight"), kv_dim, hidden)?,
                    matrix(weights, &attn("v_proj.weight"), kv_dim, hidden)?,
                ])
            }
            .map_err(backend_err)?;
            let qkv_bias = if c.attention_bias {
                let (bq, bk, bv) = (
                    vector(weights, &attn("q_proj.bias"), q_dim)?,
                    vector(weights, &attn("k_proj.bias"), kv_dim)?,
                    vector(weights, &attn("v_proj.bias"), kv_dim)?,
                );
                Some(b.upload_vector(&[&bq, &bk, &bv]).map_err(backend_err)?)
            } else {
                None
            };
            let qk_norm = if c.qk_norm {
                Some(QkNorm {
                    q: norm_vec(b, &attn("q_norm.weight"), hd)?,
                    k: norm_vec(b, &attn("k_norm.weight"), hd)?,
                    norm: eps,
                })
            } else {
                None
            };
            let activation = Self::activation(c);
            let mlp = Mlp::load(c, weights, b, i, activation)?;
            let layer_norm = |b: &mut B, n: &str| norm_vec(b, &format!("{p}.{n}.weight"), hidden);
            let (mlp_norm, output_norms) = if v.sandwich_norms {
                let post_attention = layer_norm(b, "post_attention_layernorm")?;
                let post_feedforward = layer_norm(b, "post_feedforward_layernorm")?;
                (layer_norm(b, "pre_feedforward_layernorm")?, Some((post_attention, post_feedforward)))
            } else {
                (layer_norm(b, "post_attention_layernorm")?, None)
            };
            layers.push(Layer {
                input_norm: norm_vec(b, &format!("{p}.input_layernorm.weight"), hidden)?,
                qkv,
                qkv_bias,
                qk_norm,
                o_proj: b
                    .upload_matrix(&[matrix(weights, &attn("o_proj.weight"), hidden, q_dim)?])
                    .map_err(backend_err)?,
                mlp_norm,
                output_norms,
                mlp,
                rope,
                attention,
            });
        }
        let norm = norm_vec(b, "model.norm.weight", hidden)?;
        // As HF does when the file has no head: the embeddings are the head.
        let lm_head = if c.tie_word_embeddings || !weights.contains("lm_head.weight") {
            embed_tokens
        } else {
            let w = matrix(weights, "lm_head.weight", c.vocab_size, hidden)?;
            b.upload_matrix(&[w]).map_err(backend_err)?
        };
        let mlp = MlpActivations::alloc(c, b)?;
        let mut alloc = |rows: Rows, width: usize| b.alloc_activation(rows, width).map_err(backend_err);
        let act = Activations {
            residual: alloc(Rows::Tokens, hidden)?,
            normed: alloc(Rows::Tokens, hidden)?,
            qkv: alloc(Rows::Tokens, heads.qkv_dim())?,
            attn: alloc(Rows::Tokens, q_dim)?,
            delta: alloc(Rows::Tokens, hidden)?,
            normed_delta: if v.sandwich_norms { Some(alloc(Rows::Tokens, hidden)?) } else { None },
            mlp,
            last_hidden: alloc(Rows::Logits, hidden)?,
        };
        Ok(Self {
            config: c.clone(),
            heads,
            embed_tokens,
            lm_head,
            norm,
            layers,
            // HF: `hidden_size ** 0.5` (as a tensor of the model's dtype; the backend rounds it likewise).
            embed_scale: v.scale_embeddings.then(|| (hidden as f32).sqrt()),
            activation: Self::activation(c),
            act,
        })
    }

    fn activation(c: &ModelConfig) -> Activation {
        match c.variant.activation {
            HiddenActivation::Silu => Activation::Silu,
            HiddenActivation::GeluTanh => Activation::GeluTanh,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// One step over the batch the backend holds (see `Backend::run_step`): K/V into the paged cache, the
    /// logits of the batch's logits rows left with the backend.
    pub fn forward<B: Backend>(&self, b: &mut B) -> std::result::Result<(), B::Error> {
        let a = &self.act;
        let eps = Norm {
            eps: self.config.rms_norm_eps,
            // Gemma (HF and GGUF alike): its RMSNorm multiplies in f32.
            f32_weights: self.config.variant.sandwich_norms,
        };
        b.embed(self.embed_tokens, self.embed_scale, a.residual)?;
        // What the next fused add + norm adds to the residual: a sub-layer's output, sandwich-normed (Gemma).
        let mut pending: Option<TensorId> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            // Layer 0 normalizes the embeddings; later layers first add the previous MLP output.
            b.add_rms_norm(a.residual, pending, layer.input_norm, eps, a.normed)?;
            b.linear(a.normed, layer.qkv, a.qkv)?;
            b.rope_kv_write(l, a.qkv, self.heads, layer.qkv_bias, layer.qk_norm, layer.rope)?;
            b.attention(l, a.qkv, self.heads, layer.attention, a.attn)?;
            b.linear(a.attn, layer.o_proj, a.delta)?;
            let attn_out = self.output_norm(b, layer.output_norms.map(|n| n.0), eps)?;
            b.add_rms_norm(a.residual, Some(attn_out), layer.mlp_norm, eps, a.normed)?;
            layer.mlp.forward(b, &a.mlp, self.activation, a.normed, a.delta)?;
            pending = Some(self.output_norm(b, layer.output_norms.map(|n| n.1), eps)?);
        }
        // Only the logits rows get the last residual add, the final norm and the LM head.
        b.add_rms_norm(a.residual, pending, self.norm, eps, a.last_hidden)?;
        b.lm_head(a.last_hidden, self.lm_head, self.config.variant.final_logit_softcap)
    }

    /// The sub-layer output in `delta`, through its sandwich norm when the layer has one (Gemma): the tensor
    /// to add to the residual.
    fn output_norm<B: Backend>(
        &self,
        b: &mut B,
        norm: Option<VectorId>,
        eps: Norm,
    ) -> std::result::Result<TensorId, B::Error> {
        let a = &self.act;
        match (norm, a.normed_delta) {
            (Some(w), Some(out)) => {
                b.add_rms_norm(a.delta, None, w, eps, out)?;
                Ok(out)
            }
            _ => Ok(a.delta),
        }
    }
}

#[cfg(test)]
#[path = "llama_tests.rs"]
mod tests;
