//! HF `config.json` -> `ModelConfig` and `generation_config.json` -> `GenerationDefaults`, with transformers'
//! defaults for absent keys (`LlamaConfig`, `MistralConfig`, `Qwen2Config`): `num_key_value_heads` = heads,
//! `head_dim` = hidden / heads, `rope_theta` = 10000, `tie_word_embeddings` = false, Qwen2 always has q/k/v bias.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::model::{ModelConfig, RopeScaling};

use super::{push_unique, GenerationDefaults};

/// `LlamaForCausalLM` etc. -> our architecture name.
const ARCHITECTURE_CLASSES: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "mistral"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("Qwen3ForCausalLM", "qwen3"),
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
    let sliding_window = match (arch.as_str(), raw.use_sliding_window) {
        ("mistral", _) => raw.sliding_window,
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
    let config = ModelConfig {
        hidden_size,
        intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
        num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        vocab_size: need(raw.vocab_size, "vocab_size")?,
        rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        rope_theta: raw
            .rope_theta
            .or_else(|| {
                let p = raw.rope_parameters.as_ref()?;
                p.get("rope_theta").and_then(Value::as_f64).map(|t| t as f32)
            })
            .unwrap_or(10_000.0),
        rope_scaling: rope_scaling(raw.rope_scaling.as_ref().or(raw.rope_parameters.as_ref())).map_err(err)?,
        max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        attention_bias: raw.attention_bias.unwrap_or(arch == "qwen2"),
        qk_norm: arch == "qwen3",
        sliding_window,
        bos_token_id: raw.bos_token_id,
        eos_token_ids: raw.eos_token_id.map(TokenIds::into_vec).unwrap_or_default(),
        architecture: arch,
    };
    check_config_ranges(&config).map_err(err)?;
    Ok(config)
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

/// `rope_scaling` or `rope_parameters` ({"rope_type" | "type": "llama3" | "linear" | "default", "factor", ...}).
fn rope_scaling(v: Option<&Value>) -> Result<RopeScaling, String> {
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
        other => Err(format!(
            "rope_scaling type `{other}` is not supported (supported: default, linear, llama3)"
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
