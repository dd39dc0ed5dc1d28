//! GGUF -> model: `ModelConfig` from `{arch}.*` metadata, tensors renamed to HF names (llama.cpp
//! `tensor_mapping.py` / `LLM_TENSOR_NAMES`, read in reverse), Q/K rows un-permuted for `llama`, tokenizer data
//! from `tokenizer.ggml.*`, sampling defaults from `general.sampling.*`.
//!
//! A GGUF 2-D tensor with dims `[in, out]` (dims[0] contiguous) is HF's `[out, in]`: `WeightMatrix` rows = out,
//! cols = in. 1-D tensors become `rows = 1`.

use std::path::Path;

use crate::error::{EngineError, Result};
use crate::model::{ModelConfig, RopeScaling, WeightStore};
use crate::tokenizer::{GgufTokenizerData, TokenizerSource};

use super::gguf_file::{GgufFile, GgufValue};
use super::qk_unpermute::{arch_is_permuted, unpermute_qk};
use super::{gguf_rope, push_unique, GenerationDefaults, LoadedModel, ModelFormat, ModelSourceInfo};

/// Architectures whose GGUF tensors this loader maps (Mistral GGUFs use "llama").
const GGUF_ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2"];

/// Loads a `.gguf` file.
pub fn load_gguf(path: &Path, name: String) -> Result<LoadedModel> {
    let file = GgufFile::open(path)?;
    let config = config_from_gguf(&file)?;
    let weights = weights_from_gguf(&file, &config)?;
    let tokenizer = tokenizer_from_gguf(&file)?;
    let generation_defaults = GenerationDefaults {
        temperature: file.get("general.sampling.temp").and_then(GgufValue::as_f64).map(|v| v as f32),
        top_p: file.get("general.sampling.top_p").and_then(GgufValue::as_f64).map(|v| v as f32),
        top_k: file.get("general.sampling.top_k").and_then(GgufValue::as_i64).map(|v| v as i32),
        repetition_penalty: file.get("general.sampling.penalty_repeat").and_then(GgufValue::as_f64).map(|v| v as f32),
        max_new_tokens: None,
        eos_token_ids: config.eos_token_ids.clone(),
    };
    Ok(LoadedModel {
        config,
        weights,
        tokenizer: tokenizer.map(TokenizerSource::Gguf),
        generation_defaults,
        source: ModelSourceInfo { path: path.to_path_buf(), format: ModelFormat::Gguf, name },
    })
}

fn load_err(file: &GgufFile, msg: impl Into<String>) -> EngineError {
    EngineError::load(file.path.display(), msg)
}

fn req_u64(file: &GgufFile, key: &str) -> Result<u64> {
    match file.get(key) {
        None => Err(load_err(file, format!("missing metadata key `{key}`"))),
        Some(v) => v.as_u64().ok_or_else(|| load_err(file, format!("metadata `{key}` should be an integer, found {v:?}"))),
    }
}

fn opt_f32(file: &GgufFile, key: &str) -> Result<Option<f32>> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| load_err(file, format!("metadata `{key}` should be a number, found {v:?}"))),
    }
}

fn opt_u32(file: &GgufFile, key: &str) -> Result<Option<u32>> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| load_err(file, format!("metadata `{key}` should be a token id, found {v:?}"))),
    }
}

fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| load_err(file, "missing metadata key `general.architecture`"))?
        .to_string();
    if !GGUF_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(load_err(
            file,
            format!(
                "architecture `{arch}` is not supported (supported: {})",
                ModelConfig::SUPPORTED_ARCHITECTURES.join(", ")
            ),
        ));
    }
    let k = |suffix: &str| format!("{arch}.{suffix}");
    let hidden_size = req_u64(file, &k("embedding_length"))? as usize;
    let num_attention_heads = req_u64(file, &k("attention.head_count"))? as usize;
    let num_key_value_heads = match file.get(&k("attention.head_count_kv")) {
        None => num_attention_heads,
        Some(_) => req_u64(file, &k("attention.head_count_kv"))? as usize,
    };
    if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return Err(load_err(
            file,
            format!("invalid head counts: {num_attention_heads} attention heads, {num_key_value_heads} KV heads"),
        ));
    }
    let head_dim = match file.get(&k("attention.key_length")) {
        Some(_) => req_u64(file, &k("attention.key_length"))? as usize,
        None => hidden_size / num_attention_heads,
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(load_err(file, format!("head dimension {head_dim} must be a positive even number")));
    }
    if let Some(rot) = file.get(&k("rope.dimension_count")).and_then(GgufValue::as_u64) {
        if rot as usize != head_dim {
            return Err(load_err(
                file,
                format!("partial rotary embeddings (rope.dimension_count {rot} != head_dim {head_dim}) are not supported"),
            ));
        }
    }
    let rope_theta = opt_f32(file, &k("rope.freq_base"))?.unwrap_or(10_000.0);
    let rope_scaling = gguf_rope::rope_scaling(file, &arch, head_dim, rope_theta)?;
    if arch == "qwen2" && !matches!(rope_scaling, RopeScaling::None | RopeScaling::Linear { .. }) {
        return Err(load_err(file, format!("unexpected RoPE scaling {rope_scaling:?} for qwen2")));
    }

    let vocab_size = match file.tensor_info("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
        _ => file
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .map(|a| a.len())
            .ok_or_else(|| load_err(file, "cannot tell the vocabulary size: no 2-D `token_embd.weight` and no tokens"))?,
    };

    let bos_token_id = opt_u32(file, "tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids = Vec::new();
    push_unique(&mut eos_token_ids, opt_u32(file, "tokenizer.ggml.eos_token_id")?);
    push_unique(&mut eos_token_ids, opt_u32(file, "tokenizer.ggml.eot_token_id")?);

    Ok(ModelConfig {
        hidden_size,
        intermediate_size: req_u64(file, &k("feed_forward_length"))? as usize,
        num_hidden_layers: req_u64(file, &k("block_count"))? as usize,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        vocab_size,
        rms_norm_eps: opt_f32(file, &k("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| load_err(file, format!("missing metadata key `{}`", k("attention.layer_norm_rms_epsilon"))))?,
        rope_theta,
        rope_scaling,
        max_position_embeddings: req_u64(file, &k("context_length"))? as usize,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        attention_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        bos_token_id,
        eos_token_ids,
        architecture: arch,
    })
}

/// The HF name of a GGUF tensor, or `None` for tensors the model does not use (e.g. `rope_freqs.weight`, whose
/// content `gguf_rope` turns into `RopeScaling`).
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match base {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

fn weights_from_gguf(file: &GgufFile, config: &ModelConfig) -> Result<WeightStore> {
    let mut store = WeightStore { source: file.path.display().to_string(), ..Default::default() };
    let permuted = arch_is_permuted(&config.architecture);
    for info in &file.tensors {
        let Some(hf_name) = hf_tensor_name(&info.name) else { continue };
        let mut w = file.tensor_matrix(info)?;
        if permuted {
            let heads = if hf_name.contains(".self_attn.q_proj.") {
                Some(config.num_attention_heads)
            } else if hf_name.contains(".self_attn.k_proj.") {
                Some(config.num_key_value_heads)
            } else {
                None
            };
            if let Some(n_head) = heads {
                w = unpermute_qk(&w, n_head)
                    .map_err(|m| load_err(file, format!("tensor `{}`: undoing the Q/K permutation: {m}", info.name)))?;
            }
        }
        store.insert(hf_name, w);
    }
    for required in ["model.embed_tokens.weight", "model.norm.weight"] {
        if !store.contains(required) {
            return Err(load_err(file, format!("missing tensor `{required}` (GGUF name differs; see hf_tensor_name)")));
        }
    }
    Ok(store)
}

fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let Some(v) = file.get(key) else { return Ok(Vec::new()) };
    let items = v.as_array().ok_or_else(|| load_err(file, format!("metadata `{key}` should be an array")))?;
    items
        .iter()
        .map(|x| x.as_str().map(str::to_string).ok_or_else(|| load_err(file, format!("`{key}` should hold strings"))))
        .collect()
}

fn number_array<T>(file: &GgufFile, key: &str, conv: impl Fn(&GgufValue) -> Option<T>) -> Result<Vec<T>> {
    let Some(v) = file.get(key) else { return Ok(Vec::new()) };
    let items = v.as_array().ok_or_else(|| load_err(file, format!("metadata `{key}` should be an array")))?;
    items.iter().map(|x| conv(x).ok_or_else(|| load_err(file, format!("`{key}` should hold numbers")))).collect()
}

/// `tokenizer.ggml.*` -> `GgufTokenizerData`; `None` when the file carries no vocabulary.
fn tokenizer_from_gguf(file: &GgufFile) -> Result<Option<GgufTokenizerData>> {
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let model = file.get("tokenizer.ggml.model").and_then(GgufValue::as_str).unwrap_or("llama").to_string();
    let token_types = number_array(file, "tokenizer.ggml.token_type", |v| v.as_i64().map(|x| x as i32))?;
    let scores = number_array(file, "tokenizer.ggml.scores", |v| v.as_f64().map(|x| x as f32))?;
    for (what, len) in [("token_type", token_types.len()), ("scores", scores.len())] {
        if len != 0 && len != tokens.len() {
            return Err(load_err(file, format!("tokenizer.ggml.{what} has {len} entries for {} tokens", tokens.len())));
        }
    }
    let flag = |key: &str| file.get(key).and_then(GgufValue::as_bool);
    Ok(Some(GgufTokenizerData {
        pre: file.get("tokenizer.ggml.pre").and_then(GgufValue::as_str).map(str::to_string),
        token_types,
        scores,
        merges: string_array(file, "tokenizer.ggml.merges")?,
        bos_token_id: opt_u32(file, "tokenizer.ggml.bos_token_id")?,
        eos_token_id: opt_u32(file, "tokenizer.ggml.eos_token_id")?,
        unknown_token_id: opt_u32(file, "tokenizer.ggml.unknown_token_id")?,
        padding_token_id: opt_u32(file, "tokenizer.ggml.padding_token_id")?,
        // llama.cpp's defaults when the flags are absent: SentencePiece vocabularies add BOS, BPE ones do not.
        add_bos_token: flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama"),
        add_eos_token: flag("tokenizer.ggml.add_eos_token").unwrap_or(false),
        chat_template: file.get("tokenizer.chat_template").and_then(GgufValue::as_str).map(str::to_string),
        model,
        tokens,
    }))
}
