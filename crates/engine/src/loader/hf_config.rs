//! HF `config.json` -> `ModelConfig` and `generation_config.json` -> `GenerationDefaults`, with transformers'
//! defaults for absent keys (`LlamaConfig`, `MistralConfig`, `Qwen2Config`, `Gemma2Config`,
//! `Gemma3TextConfig`, `Phi3Config`): `num_key_value_heads` = heads, `head_dim` = hidden / heads, `rope_theta` = 10000
//! (Gemma 3: 1e6), `tie_word_embeddings` = false (Gemma: true), Qwen2 always has q/k/v bias. Gemma's
//! local/global layers come from `layer_types`, else from HF's older rule (Gemma 2: even layers slide; Gemma 3:
//! all but every `sliding_window_pattern`-th).

use serde::Deserialize;
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::model::{DecoderVariant, HiddenActivation, ModelConfig, MoeConfig, RopeScaling};

use super::{push_unique, GenerationDefaults};

/// `LlamaForCausalLM` etc. -> our architecture name.
const ARCHITECTURE_CLASSES: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "mistral"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("Qwen3ForCausalLM", "qwen3"),
    ("Qwen2MoeForCausalLM", "qwen2_moe"),
    ("Qwen3MoeForCausalLM", "qwen3_moe"),
    ("Gemma2ForCausalLM", "gemma2"),
    ("Gemma3ForCausalLM", "gemma3_text"),
    ("Phi3ForCausalLM", "phi3"),
];

/// A token id or a list of them (transformers accepts both for `eos_token_id`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![id],
            Self::Many(ids) => ids,
        }
    }
}

#[derive(Deserialize, Debug)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<Value>,
    /// transformers >= 5 writes RoPE settings here (`rope_type`, `rope_theta`, scaling fields) instead of
    /// `rope_theta` + `rope_scaling`.
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    vocab_size: Option<usize>,
    attention_bias: Option<bool>,
    sliding_window: Option<usize>,
    /// Qwen2/Qwen3 carry a `sliding_window` that only applies when this is true.
    use_sliding_window: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    // --- Gemma 2 / Gemma 3 ---
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f32>,
    /// Kept as JSON so an explicit `null` (no cap: `Some(Null)`) differs from an absent key (`None`: Gemma 2's
    /// default cap).
    #[serde(default, deserialize_with = "present")]
    attn_logit_softcapping: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    final_logit_softcapping: Option<Value>,
    /// `sliding_attention` / `full_attention` per layer (transformers >= 4.53).
    layer_types: Option<Vec<String>>,
    /// Gemma 3 before `layer_types`: every this-many-th layer is global.
    sliding_window_pattern: Option<usize>,
    rope_local_base_freq: Option<f32>,
    /// EmbeddingGemma's bidirectional attention (not a causal LM).
    use_bidirectional_attention: Option<bool>,
    // --- Phi-3 ---
    /// The fraction of each head that RoPE rotates (Phi-4-mini: 0.75).
    partial_rotary_factor: Option<f64>,
    /// LongRoPE's pretraining context (top level in transformers < 5; inside `rope_parameters` from 5 on).
    original_max_position_embeddings: Option<usize>,
    // --- Qwen2-MoE / Qwen3-MoE ---
    #[serde(alias = "num_local_experts")]
    num_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    moe_intermediate_size: Option<usize>,
    norm_topk_prob: Option<bool>,
    decoder_sparse_step: Option<usize>,
    mlp_only_layers: Option<Vec<usize>>,
    shared_expert_intermediate_size: Option<usize>,
    /// Qwen2-MoE's q/k/v bias switch (transformers >= 5; always on before).
    qkv_bias: Option<bool>,
}

/// A key that is present, even as `null` (serde's `Option` would read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Upper bounds on a model's dimensions, far above any real model (the largest today have hidden sizes of ~16k,
/// ~200 layers and vocabularies of ~260k). Buffers are later sized from these numbers (RoPE tables, activations,
/// the KV cache), so a corrupt or hostile file must not be able to ask for an absurd allocation through them.
pub const MAX_HIDDEN_SIZE: usize = 1 << 18;
pub const MAX_INTERMEDIATE_SIZE: usize = 1 << 20;
pub const MAX_LAYERS: usize = 1 << 12;
pub const MAX_HEADS: usize = 1 << 12;
pub const MAX_HEAD_DIM: usize = 1 << 12;
pub const MAX_VOCAB_SIZE: usize = 1 << 24;
pub const MAX_POSITION_EMBEDDINGS: usize = 1 << 26;

/// Refuses configurations whose sizes are zero or beyond the bounds above (shared by config.json and GGUF).
pub fn check_config_ranges(c: &ModelConfig) -> std::result::Result<(), String> {
    let checks = [
        ("hidden_size", c.hidden_size, MAX_HIDDEN_SIZE),
        ("intermediate_size", c.intermediate_size, MAX_INTERMEDIATE_SIZE),
        ("num_hidden_layers", c.num_hidden_layers, MAX_LAYERS),
        ("num_attention_heads", c.num_attention_heads, MAX_HEADS),
        ("num_key_value_heads", c.num_key_value_heads, MAX_HEADS),
        ("head_dim", c.head_dim, MAX_HEAD_DIM),
        ("vocab_size", c.vocab_size, MAX_VOCAB_SIZE),
        ("max_position_embeddings", c.max_position_embeddings, MAX_POSITION_EMBEDDINGS),
    ];
    for (name, value, max) in checks {
        if value == 0 || value > max {
            return Err(format!("`{name}` is {value}; expected 1..={max} (corrupt or unsupported config)"));
        }
    }
    if !(c.rms_norm_eps.is_finite() && c.rope_theta.is_finite() && c.rope_theta > 0.0) {
        return Err(format!(
            "rms_norm_eps {} and rope_theta {} must be finite (rope_theta > 0)",
            c.rms_norm_eps, c.rope_theta
        ));
    }
    Ok(())
}

/// Parses `config.json` text. `path` is only used in error messages.
pub fn parse_config(path: &str, text: &str) -> Result<ModelConfig> {
    let err = |m: String| EngineError::load(path, m);
    let raw: RawConfig = serde_json::from_str(text).map_err(|e| err(format!("invalid config.json: {e}")))?;
    let arch = architecture(&raw).map_err(err)?;
    let need = |v: Option<usize>, key: &str| v.ok_or_else(|| err(format!("config.json has no `{key}`")));
    let hidden_size = need(raw.hidden_size, "hidden_size")?;
    let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
    let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
    if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return Err(err(format!(
            "invalid head counts: {num_attention_heads} attention heads, {num_key_value_heads} KV heads"
        )));
    }
    let head_dim = raw.head_dim.unwrap_or(hidden_size / num_attention_heads);
    let gemma = arch.starts_with("gemma");
    let sliding_window = match (arch.as_str(), raw.use_sliding_window) {
        ("mistral" | "gemma2" | "gemma3_text" | "phi3", _) => raw.sliding_window,
        (_, Some(true)) => {
            return Err(err(format!(
                "use_sliding_window = true (sliding-window attention on some {arch} layers) is not supported"
            )))
        }
        // Llama has no sliding window; Qwen's `sliding_window` is inert while `use_sliding_window` is false.
        _ => None,
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(err(format!("head dimension {head_dim} must be a positive even number")));
    }
    let num_hidden_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
    let mut variant = if gemma {
        gemma_variant(&raw, &arch, num_hidden_layers).map_err(err)?
    } else {
        match raw.hidden_act.as_deref() {
            None | Some("silu") => DecoderVariant::default(),
            Some(other) => return Err(err(format!("hidden_act `{other}` is not supported for {arch} (silu)"))),
        }
    };
    // Gemma 3 in transformers >= 5: `rope_parameters` per layer type; the global layers' entry is the model's.
    let rope_params = raw.rope_parameters.as_ref().map(|p| p.get("full_attention").unwrap_or(p));
    let max_position_embeddings = need(raw.max_position_embeddings, "max_position_embeddings")?;
    if arch == "phi3" {
        variant.rotary_dim = partial_rotary_dim(&raw, rope_params, head_dim).map_err(err)?;
    }
    let rope_context = RopeContext {
        rotary_dim: variant.rotary_dim.unwrap_or(head_dim),
        max_position_embeddings,
        original_max_position_embeddings: raw.original_max_position_embeddings,
    };
    let config = ModelConfig {
        hidden_size,
        intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        vocab_size: need(raw.vocab_size, "vocab_size")?,
        rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        rope_theta: raw
            .rope_theta
            .or_else(|| rope_params?.get("rope_theta").and_then(Value::as_f64).map(|t| t as f32))
            .unwrap_or(if arch == "gemma3_text" { 1_000_000.0 } else { 10_000.0 }),
        rope_scaling: rope_scaling(raw.rope_scaling.as_ref().or(rope_params), &rope_context).map_err(err)?,
        max_position_embeddings,
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(gemma),
        attention_bias: raw
            .attention_bias
            .or(if arch == "qwen2_moe" { raw.qkv_bias } else { None })
            .unwrap_or(arch == "qwen2" || arch == "qwen2_moe"),
        qk_norm: matches!(arch.as_str(), "qwen3" | "qwen3_moe" | "gemma3_text"),
        moe: if arch.ends_with("_moe") { Some(moe_config(&raw, &arch, num_hidden_layers).map_err(err)?) } else { None },
        sliding_window,
        variant,
        bos_token_id: raw.bos_token_id,
        eos_token_ids: raw.eos_token_id.map(TokenIds::into_vec).unwrap_or_default(),
        architecture: arch,
    };
    check_config_ranges(&config).map_err(err)?;
    Ok(config)
}

/// Gemma 2 / Gemma 3's departures from the Llama block, from their config keys (HF's defaults where absent).
/// Qwen2-MoE / Qwen3-MoE's sparse MLP, with transformers' defaults (`Qwen3MoeConfig`: 128 experts, 8 per token,
/// `norm_topk_prob` false; `Qwen2MoeConfig`: 60 experts, 4 per token, a shared expert of 5632).
fn moe_config(raw: &RawConfig, arch: &str, layers: usize) -> Result<MoeConfig, String> {
    let qwen2 = arch == "qwen2_moe";
    let num_experts = raw.num_experts.unwrap_or(if qwen2 { 60 } else { 128 });
    let top_k = raw.num_experts_per_tok.unwrap_or(if qwen2 { 4 } else { 8 });
    if num_experts == 0 || num_experts > 1024 || top_k == 0 || top_k > num_experts {
        return Err(format!(
            "num_experts_per_tok {top_k} must be in 1..=num_experts ({num_experts}, at most 1024)"
        ));
    }
    let step = raw.decoder_sparse_step.unwrap_or(1);
    let dense = raw.mlp_only_layers.clone().unwrap_or_default();
    let moe_intermediate_size = raw.moe_intermediate_size.unwrap_or(if qwen2 { 1408 } else { 768 });
    let shared = if qwen2 { Some(raw.shared_expert_intermediate_size.unwrap_or(5632)) } else { None };
    if moe_intermediate_size == 0 || moe_intermediate_size > MAX_INTERMEDIATE_SIZE || shared.is_some_and(|s| s > MAX_INTERMEDIATE_SIZE) {
        return Err(format!("moe_intermediate_size {moe_intermediate_size} / shared expert size {shared:?} out of range"));
    }
    Ok(MoeConfig {
        num_experts,
        num_experts_per_tok: top_k,
        moe_intermediate_size,
        norm_topk_prob: raw.norm_topk_prob.unwrap_or(false),
        sparse_layers: (0..layers).map(|i| !dense.contains(&i) && step > 0 && (i + 1) % step == 0).collect(),
        shared_expert_intermediate_size: shared.filter(|&s| s > 0),
    })
}

fn gemma_variant(raw: &RawConfig, arch: &str, layers: usize) -> Result<DecoderVariant, String> {
    let gemma2 = arch == "gemma2";
    if raw.use_bidirectional_attention == Some(true) {
        return Err("use_bidirectional_attention = true (an embedding model, not a causal LM) is not supported".into());
    }
    let act = raw
        .hidden_activation
        .as_deref()
        .or(raw.hidden_act.as_deref())
        .unwrap_or("gelu_pytorch_tanh");
    let activation = match act {
        "gelu_pytorch_tanh" | "gelu_tanh" => HiddenActivation::GeluTanh,
        other => return Err(format!("hidden_activation `{other}` is not supported for {arch} (gelu_pytorch_tanh)")),
    };
    let sliding_layers = match &raw.layer_types {
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(format!("layer type `{other}` is not supported (sliding_attention, full_attention)")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None if gemma2 => (0..layers).map(|i| i % 2 == 0).collect(),
        None => {
            let pattern = raw.sliding_window_pattern.unwrap_or(6).max(1);
            (0..layers).map(|i| (i + 1) % pattern != 0).collect()
        }
    };
    if sliding_layers.len() != layers {
        return Err(format!("{} layer_types for {layers} layers", sliding_layers.len()));
    }
    // transformers >= 5 keeps the local base inside `rope_parameters.sliding_attention`.
    let local_theta = raw.rope_local_base_freq.or_else(|| {
        let p = raw.rope_parameters.as_ref()?.get("sliding_attention")?;
        p.get("rope_theta").and_then(Value::as_f64).map(|t| t as f32)
    });
    Ok(DecoderVariant {
        norm_unit_offset: true,
        scale_embeddings: true,
        sandwich_norms: true,
        activation,
        query_pre_attn_scalar: Some(raw.query_pre_attn_scalar.unwrap_or(256.0)),
        // Gemma 2's defaults are 50 / 30; Gemma 3 has none. An explicit null turns them off.
        attn_logit_softcap: softcap(&raw.attn_logit_softcapping, "attn_logit_softcapping", gemma2.then_some(50.0))?,
        final_logit_softcap: softcap(&raw.final_logit_softcapping, "final_logit_softcapping", gemma2.then_some(30.0))?,
        sliding_layers,
        rope_local_theta: if gemma2 { None } else { Some(local_theta.unwrap_or(10_000.0)) },
        rotary_dim: None,
    })
}

/// A soft-cap key: absent -> `default`, null -> none, a positive number -> it.
fn softcap(v: &Option<Value>, key: &str, default: Option<f32>) -> Result<Option<f32>, String> {
    match v {
        None => Ok(default),
        Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(c) if c.is_finite() && c > 0.0 => Ok(Some(c as f32)),
            _ => Err(format!("`{key}` must be a positive number or null, found {v}")),
        },
    }
}

fn architecture(raw: &RawConfig) -> Result<String, String> {
    for class in &raw.architectures {
        if let Some((_, arch)) = ARCHITECTURE_CLASSES.iter().find(|(c, _)| c == class) {
            return Ok(arch.to_string());
        }
    }
    if let Some(mt) = raw.model_type.as_deref() {
        if ModelConfig::SUPPORTED_ARCHITECTURES.contains(&mt) {
            return Ok(mt.to_string());
        }
    }
    let found = if raw.architectures.is_empty() {
        format!("{:?}", raw.model_type)
    } else {
        raw.architectures.join(", ")
    };
    Err(format!(
        "architecture {found} is not supported (supported: {}; i.e. {})",
        ModelConfig::SUPPORTED_ARCHITECTURES.join(", "),
        ARCHITECTURE_CLASSES
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Phi-3's `partial_rotary_factor` (top level, or in transformers 5's `rope_parameters`) as a dim count, HF's
/// `int(head_dim * factor)`; None when the whole head rotates.
fn partial_rotary_dim(raw: &RawConfig, rope_params: Option<&Value>, head_dim: usize) -> Result<Option<usize>, String> {
    let factor = raw
        .partial_rotary_factor
        .or_else(|| rope_params?.get("partial_rotary_factor")?.as_f64());
    let Some(f) = factor else { return Ok(None) };
    if !(f > 0.0 && f <= 1.0) {
        return Err(format!("partial_rotary_factor {f} must be in (0, 1]"));
    }
    let dim = (head_dim as f64 * f) as usize;
    if dim == 0 || dim % 2 != 0 {
        return Err(format!(
            "partial_rotary_factor {f} of head_dim {head_dim} gives {dim} rotary dims; an even positive count is needed"
        ));
    }
    Ok((dim != head_dim).then_some(dim))
}

/// What LongRoPE's parameters depend on besides its own keys.
struct RopeContext {
    rotary_dim: usize,
    max_position_embeddings: usize,
    /// The top-level key (transformers < 5 writes it there).
    original_max_position_embeddings: Option<usize>,
}

/// `longrope` / `su` (HF `_compute_longrope_parameters`, transformers 5 precedence): `factor` from the key, else
/// `max_position_embeddings / original_max_position_embeddings`; `attention_factor` from the key, else
/// `sqrt(1 + ln(factor) / ln(original))` (1 when `factor <= 1`).
fn longrope(obj: &serde_json::Map<String, Value>, ctx: &RopeContext) -> Result<RopeScaling, String> {
    let factors = |key: &str| -> Result<Vec<f32>, String> {
        let list = obj
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("rope_scaling of type `longrope` has no `{key}` list"))?;
        let values: Option<Vec<f32>> = list.iter().map(|v| v.as_f64().map(|x| x as f32)).collect();
        match values {
            Some(v) if v.len() == ctx.rotary_dim / 2 && v.iter().all(|x| x.is_finite() && *x > 0.0) => Ok(v),
            _ => Err(format!(
                "rope_scaling `{key}` must hold {} positive numbers (rotary dim {} / 2), found {}",
                ctx.rotary_dim / 2,
                ctx.rotary_dim,
                Value::Array(list.clone())
            )),
        }
    };
    let (short_factor, long_factor) = (factors("short_factor")?, factors("long_factor")?);
    let original = obj
        .get("original_max_position_embeddings")
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .or(ctx.original_max_position_embeddings)
        .unwrap_or(ctx.max_position_embeddings);
    if original < 2 {
        return Err(format!("LongRoPE original_max_position_embeddings {original} must be at least 2"));
    }
    let factor = obj
        .get("factor")
        .and_then(Value::as_f64)
        .unwrap_or(ctx.max_position_embeddings as f64 / original as f64);
    let attention_factor = match obj.get("attention_factor").and_then(Value::as_f64) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    if !(attention_factor.is_finite() && attention_factor > 0.0) {
        return Err(format!("LongRoPE attention_factor {attention_factor} must be positive"));
    }
    Ok(RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: original,
        attention_factor: attention_factor as f32,
        // vLLM's default (max_model_len = the model's context); the engine sets it from its own limit.
        use_long: ctx.max_position_embeddings > original,
    })
}

/// `rope_scaling` or `rope_parameters` ({"rope_type" | "type": "llama3" | "linear" | "longrope" | "default",
/// "factor", ...}).
fn rope_scaling(v: Option<&Value>, ctx: &RopeContext) -> Result<RopeScaling, String> {
    let Some(obj) = v.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let obj = obj
        .as_object()
        .ok_or_else(|| format!("rope_scaling should be an object, found {obj}"))?;
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| obj.get(k).and_then(Value::as_f64);
    let need = |k: &str| num(k).ok_or_else(|| format!("rope_scaling of type `{kind}` has no numeric `{k}`"));
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: need("factor")? as f32,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: need("factor")? as f32,
            low_freq_factor: need("low_freq_factor")? as f32,
            high_freq_factor: need("high_freq_factor")? as f32,
            original_max_position_embeddings: need("original_max_position_embeddings")? as usize,
        }),
        "longrope" | "su" => longrope(obj, ctx),
        other => Err(format!(
            "rope_scaling type `{other}` is not supported (supported: default, linear, llama3, longrope)"
        )),
    }
}

#[derive(Deserialize, Debug, Default)]
struct RawGenerationConfig {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    repetition_penalty: Option<f32>,
    max_new_tokens: Option<usize>,
    eos_token_id: Option<TokenIds>,
}

/// Parses `generation_config.json` text. Keys transformers would ignore (`do_sample`, ...) are ignored here
/// too, as vLLM does when it takes defaults from this file.
pub fn parse_generation_config(path: &str, text: &str) -> Result<GenerationDefaults> {
    let raw: RawGenerationConfig = serde_json::from_str(text)
        .map_err(|e| EngineError::load(path, format!("invalid generation_config.json: {e}")))?;
    let mut eos = Vec::new();
    push_unique(&mut eos, raw.eos_token_id.map(TokenIds::into_vec).unwrap_or_default());
    Ok(GenerationDefaults {
        temperature: raw.temperature,
        top_p: raw.top_p,
        top_k: raw.top_k,
        repetition_penalty: raw.repetition_penalty,
        max_new_tokens: raw.max_new_tokens,
        eos_token_ids: eos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA31: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": true, "vocab_size": 128256, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"
    }"#;

    #[test]
    fn llama31_config() {
        let c = parse_config("x", LLAMA31).unwrap();
        assert_eq!(c.architecture, "llama");
        assert_eq!(
            (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (2048, 32, 8, 64)
        );
        assert_eq!(
            c.rope_scaling,
            RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            }
        );
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert!(c.tie_word_embeddings && !c.attention_bias);
        assert_eq!(c.rope_theta, 500000.0);
    }

    #[test]
    fn qwen2_defaults_and_int_eos() {
        let text = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "max_position_embeddings": 32768, "vocab_size": 151936, "eos_token_id": 151645,
            "rope_scaling": null}"#;
        let c = parse_config("x", text).unwrap();
        assert_eq!(c.architecture, "qwen2");
        assert!(c.attention_bias);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.eos_token_ids, vec![151645]);
        assert_eq!(c.rope_scaling, RopeScaling::None);
    }

    #[test]
    fn mistral_by_class_and_linear_scaling_and_defaults() {
        let text = r#"{"architectures": ["MistralForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 512, "vocab_size": 100,
            "rope_scaling": {"type": "linear", "factor": 2.0}}"#;
        let c = parse_config("x", text).unwrap();
        assert_eq!(c.architecture, "mistral");
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn transformers5_rope_parameters() {
        // What transformers 5 saves: theta and scaling inside `rope_parameters`, no `rope_theta`.
        let text = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
            "vocab_size": 128256, "max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#;
        let c = parse_config("config.json", text).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
        let text = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
            "max_position_embeddings": 32768, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}"#;
        let c = parse_config("config.json", text).unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling), (1_000_000.0, RopeScaling::None));
    }

    #[test]
    fn unsupported_architecture_and_rope_type_are_named() {
        let e = parse_config(
            "cfg.json",
            r#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("GPT2LMHeadModel") && e.contains("llama, mistral, qwen2") && e.contains("cfg.json"),
            "{e}"
        );
        let text = LLAMA31.replace("\"llama3\"", "\"yarn\"");
        let e = parse_config("x", &text).unwrap_err().to_string();
        assert!(e.contains("yarn") && e.contains("llama3"), "{e}");
        let e = parse_config("x", "{not json").unwrap_err().to_string();
        assert!(e.contains("invalid config.json"), "{e}");
        let e = parse_config("x", &LLAMA31.replace("\"hidden_size\"", "\"hidden\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }

    /// Gemma 2 9B's config.json (as on the Hub, trimmed of keys we ignore).
    const GEMMA2_9B: &str = r#"{"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584, "intermediate_size": 14336,
        "max_position_embeddings": 8192, "num_attention_heads": 16, "num_hidden_layers": 42,
        "num_key_value_heads": 8, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "sliding_window": 4096, "vocab_size": 256000, "bos_token_id": 2, "eos_token_id": 1}"#;

    #[test]
    fn gemma2_config_and_defaults() {
        let c = parse_config("x", GEMMA2_9B).unwrap();
        assert_eq!(c.architecture, "gemma2");
        let v = &c.variant;
        assert!(v.norm_unit_offset && v.scale_embeddings && v.sandwich_norms && c.tie_word_embeddings);
        assert_eq!(v.activation, HiddenActivation::GeluTanh);
        assert_eq!((v.attn_logit_softcap, v.final_logit_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(v.query_pre_attn_scalar, Some(256.0));
        // No `layer_types`: HF's rule, even layers slide.
        assert_eq!(v.sliding_layers.len(), 42);
        assert_eq!((c.layer_window(0), c.layer_window(1), c.layer_window(40)), (Some(4096), None, Some(4096)));
        assert_eq!(v.rope_local_theta, None);
        assert!(!c.qk_norm);
        // Absent soft-cap keys take Gemma 2's defaults; explicit nulls turn them off.
        let absent = GEMMA2_9B.replace("\"attn_logit_softcapping\": 50.0, \"final_logit_softcapping\": 30.0,", "");
        let c = parse_config("x", &absent).unwrap();
        assert_eq!((c.variant.attn_logit_softcap, c.variant.final_logit_softcap), (Some(50.0), Some(30.0)));
        let nulls = GEMMA2_9B.replace("50.0", "null").replace("30.0", "null");
        let c = parse_config("x", &nulls).unwrap();
        assert_eq!((c.variant.attn_logit_softcap, c.variant.final_logit_softcap), (None, None));
        let e = parse_config("x", &GEMMA2_9B.replace("50.0", "-1")).unwrap_err().to_string();
        assert!(e.contains("attn_logit_softcapping"), "{e}");
        let e = parse_config("x", &GEMMA2_9B.replace("gelu_pytorch_tanh", "relu")).unwrap_err().to_string();
        assert!(e.contains("relu"), "{e}");
    }

    #[test]
    fn gemma3_text_config_pattern_and_two_rope_bases() {
        // Gemma 3 1B as transformers 4.5x saved it: `sliding_window_pattern` and `rope_local_base_freq`.
        let old = r#"{"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "head_dim": 256,
            "hidden_size": 1152, "intermediate_size": 6912, "max_position_embeddings": 32768,
            "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
            "query_pre_attn_scalar": 256, "rope_local_base_freq": 10000, "rope_scaling": null,
            "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "vocab_size": 262144,
            "final_logit_softcapping": null, "attn_logit_softcapping": null}"#;
        let c = parse_config("x", old).unwrap();
        assert_eq!(c.architecture, "gemma3_text");
        assert!(c.qk_norm && c.variant.sandwich_norms && c.variant.final_logit_softcap.is_none());
        let global: Vec<usize> = (0..26).filter(|&i| c.layer_window(i).is_none()).collect();
        assert_eq!(global, vec![5, 11, 17, 23]);
        assert_eq!(c.variant.rope_local_theta, Some(10_000.0));
        assert_eq!(c.rope_theta, 1_000_000.0);
        let (local, glob) = (c.layer_rope_inv_freq(0), c.layer_rope_inv_freq(5));
        let close = |a: f32, b: f64| ((a as f64 - b) / b).abs() < 1e-6;
        assert!(close(local[1], 10_000f64.powf(-2.0 / 256.0)), "{}", local[1]);
        assert!(close(glob[1], 1_000_000f64.powf(-2.0 / 256.0)), "{}", glob[1]);
        // transformers 5: `layer_types` and `rope_parameters` per layer type, linear scaling on global layers.
        let new = r#"{"architectures": ["Gemma3ForCausalLM"], "head_dim": 16, "hidden_size": 64,
            "intermediate_size": 128, "max_position_embeddings": 256, "num_attention_heads": 4,
            "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 512, "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"factor": 8.0, "rope_theta": 1000000.0, "rope_type": "linear"},
                                "sliding_attention": {"rope_theta": 20000.0, "rope_type": "default"}}}"#;
        let c = parse_config("x", new).unwrap();
        assert_eq!((c.layer_window(0), c.layer_window(1)), (Some(8), None));
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!((c.rope_theta, c.variant.rope_local_theta), (1_000_000.0, Some(20_000.0)));
        // The local table ignores the global layers' scaling.
        assert_eq!(c.layer_rope_inv_freq(0)[0], 1.0);
        assert_eq!(c.layer_rope_inv_freq(1)[0], 1.0 / 8.0);
        let e = parse_config("x", &new.replace("\"full_attention\"]", "\"chunked_attention\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("chunked_attention"), "{e}");
        // The multimodal wrapper is not the text model.
        let e = parse_config("x", r#"{"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Gemma3ForConditionalGeneration") && e.contains("Gemma3ForCausalLM"), "{e}");
    }

    #[test]
    fn generation_config() {
        let g = parse_generation_config(
            "g",
            r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1,
                "max_new_tokens": 256, "eos_token_id": [2, 7, 2], "transformers_version": "4.45"}"#,
        )
        .unwrap();
        assert_eq!(
            g,
            GenerationDefaults {
                temperature: Some(0.6),
                top_p: Some(0.9),
                top_k: Some(50),
                repetition_penalty: Some(1.1),
                max_new_tokens: Some(256),
                eos_token_ids: vec![2, 7],
            }
        );
        assert_eq!(
            parse_generation_config("g", r#"{"eos_token_id": 5}"#)
                .unwrap()
                .eos_token_ids,
            vec![5]
        );
        assert!(parse_generation_config("g", "[]").is_err());
    }
}

#[cfg(test)]
#[path = "hf_config_phi3_tests.rs"]
mod phi3_tests;
