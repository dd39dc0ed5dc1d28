//! GGUF -> model: `ModelConfig` from `{arch}.*` metadata, tensors renamed to HF names (llama.cpp
//! `tensor_mapping.py` / `LLM_TENSOR_NAMES`, read in reverse), Q/K rows un-permuted for `llama`, Phi-3's fused
//! tensors and LongRoPE factors and Gemma 2/3's conventions as `convert_hf_to_gguf.py` writes them, tokenizer data
//! from `tokenizer.ggml.*`, sampling defaults from `general.sampling.*`.
//!
//! A GGUF 2-D tensor with dims `[in, out]` (dims[0] contiguous) is HF's `[out, in]`: `WeightMatrix` rows = out,
//! cols = in. 1-D tensors become `rows = 1`.

use std::path::Path;

use crate::error::{EngineError, Result};
use crate::model::{DecoderVariant, HiddenActivation, ModelConfig, MoeConfig, RopeScaling, WeightStore};
use crate::tokenizer::{GgufTokenizerData, TokenizerSource};

use super::gguf_file::{GgufFile, GgufValue};
use super::qk_unpermute::{arch_is_permuted, unpermute_qk};
use super::{gguf_rope, push_unique, GenerationDefaults, LoadedModel, ModelFormat, ModelSourceInfo};

/// Architectures whose GGUF tensors this loader maps (Mistral GGUFs use "llama").
const GGUF_ARCHITECTURES: &[&str] =
    &["llama", "mistral", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "phi3", "gemma2", "gemma3"];

/// Loads a `.gguf` file.
pub fn load_gguf(path: &Path, name: String) -> Result<LoadedModel> {
    let file = GgufFile::open(path)?;
    let config = config_from_gguf(&file)?;
    super::hf_config::check_config_ranges(&config).map_err(|m| load_err(&file, m))?;
    let weights = weights_from_gguf(&file, &config)?;
    let tokenizer = tokenizer_from_gguf(&file)?;
    let generation_defaults = GenerationDefaults {
        temperature: file
            .get("general.sampling.temp")
            .and_then(GgufValue::as_f64)
            .map(|v| v as f32),
        top_p: file
            .get("general.sampling.top_p")
            .and_then(GgufValue::as_f64)
            .map(|v| v as f32),
        top_k: file
            .get("general.sampling.top_k")
            .and_then(GgufValue::as_i64)
            .map(|v| v as i32),
        repetition_penalty: file
            .get("general.sampling.penalty_repeat")
            .and_then(GgufValue::as_f64)
            .map(|v| v as f32),
        max_new_tokens: None,
        eos_token_ids: config.eos_token_ids.clone(),
    };
    Ok(LoadedModel {
        config,
        weights,
        tokenizer: tokenizer.map(TokenizerSource::Gguf),
        generation_defaults,
        source: ModelSourceInfo {
            path: path.to_path_buf(),
            format: ModelFormat::Gguf,
            name,
        },
    })
}

fn load_err(file: &GgufFile, msg: impl Into<String>) -> EngineError {
    EngineError::load(file.path.display(), msg)
}

fn req_u64(file: &GgufFile, key: &str) -> Result<u64> {
    match file.get(key) {
        None => Err(load_err(file, format!("missing metadata key `{key}`"))),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| load_err(file, format!("metadata `{key}` should be an integer, found {v:?}"))),
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
                "architecture `{arch}` is not supported in GGUF files (supported: {})",
                GGUF_ARCHITECTURES.join(", ")
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
        return Err(load_err(
            file,
            format!("head dimension {head_dim} must be a positive even number"),
        ));
    }
    let mut rotary_dim = None;
    if let Some(rot) = file.get(&k("rope.dimension_count")).and_then(GgufValue::as_u64) {
        let rot = rot as usize;
        // Phi-4-mini rotates 3/4 of each head; the other families rotate it whole.
        if arch == "phi3" && rot > 0 && rot % 2 == 0 && rot < head_dim {
            rotary_dim = Some(rot);
        } else if rot != head_dim {
            return Err(load_err(
                file,
                format!(
                    "partial rotary embeddings (rope.dimension_count {rot} != head_dim {head_dim}) are not supported \
                     for {arch}"
                ),
            ));
        }
    }
    let max_position_embeddings = req_u64(file, &k("context_length"))? as usize;
    let rope_theta = opt_f32(file, &k("rope.freq_base"))?.unwrap_or(10_000.0);
    let rope_scaling = match gguf_rope::longrope(file, &arch, rotary_dim.unwrap_or(head_dim), max_position_embeddings)? {
        Some(longrope) => longrope,
        None => gguf_rope::rope_scaling(file, &arch, head_dim, rope_theta)?,
    };
    if arch == "qwen2" && !matches!(rope_scaling, RopeScaling::None | RopeScaling::Linear { .. }) {
        return Err(load_err(
            file,
            format!("unexpected RoPE scaling {rope_scaling:?} for qwen2"),
        ));
    }

    let vocab_size = match file.tensor_info("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
        _ => file
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .map(|a| a.len())
            .ok_or_else(|| {
                load_err(
                    file,
                    "cannot tell the vocabulary size: no 2-D `token_embd.weight` and no tokens",
                )
            })?,
    };

    let num_hidden_layers = req_u64(file, &k("block_count"))? as usize;
    // llama.cpp's converter writes the window of Phi-3 (0: none, Phi-4) and Gemma; Mistral's is dropped.
    let sliding_window = match opt_u32(file, &k("attention.sliding_window"))? {
        Some(w) if w > 0 && matches!(arch.as_str(), "phi3" | "gemma2" | "gemma3") => Some(w as usize),
        _ => None,
    };
    let mut variant = if arch.starts_with("gemma") {
        gemma_variant(file, &arch, num_hidden_layers, hidden_size / num_attention_heads, head_dim)?
    } else {
        Default::default()
    };
    variant.rotary_dim = rotary_dim;

    let moe = if arch.ends_with("moe") { Some(moe_config(file, &arch, num_hidden_layers)?) } else { None };

    let bos_token_id = opt_u32(file, "tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids = Vec::new();
    push_unique(&mut eos_token_ids, opt_u32(file, "tokenizer.ggml.eos_token_id")?);
    push_unique(&mut eos_token_ids, opt_u32(file, "tokenizer.ggml.eot_token_id")?);

    Ok(ModelConfig {
        hidden_size,
        intermediate_size: req_u64(file, &k("feed_forward_length"))? as usize,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        vocab_size,
        rms_norm_eps: opt_f32(file, &k("attention.layer_norm_rms_epsilon"))?.ok_or_else(|| {
            load_err(
                file,
                format!("missing metadata key `{}`", k("attention.layer_norm_rms_epsilon")),
            )
        })?,
        rope_theta,
        rope_scaling,
        max_position_embeddings,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        attention_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        qk_norm: file.tensor_info("blk.0.attn_q_norm.weight").is_some(),
        sliding_window,
        variant,
        moe,
        bos_token_id,
        eos_token_ids,
        // Our names of Gemma 3's text model and the Qwen MoE families (HF's `model_type`s).
        architecture: match arch.as_str() {
            "gemma3" => "gemma3_text".into(),
            "qwen2moe" => "qwen2_moe".into(),
            "qwen3moe" => "qwen3_moe".into(),
            _ => arch,
        },
    })
}

/// Qwen2-MoE / Qwen3-MoE from GGUF, as llama.cpp runs them (`src/models/qwen2moe.cpp`, `qwen3moe.cpp`): softmax
/// top-k, renormalized for qwen3moe and not for qwen2moe, whatever the checkpoint's `norm_topk_prob` was (the
/// converter does not write it); a layer is sparse when it has a router (`ffn_gate_inp`); qwen2moe's shared
/// expert size is `expert_shared_feed_forward_length`.
fn moe_config(file: &GgufFile, arch: &str, layers: usize) -> Result<MoeConfig> {
    let k = |suffix: &str| format!("{arch}.{suffix}");
    let num_experts = req_u64(file, &k("expert_count"))? as usize;
    let top_k = req_u64(file, &k("expert_used_count"))? as usize;
    if num_experts == 0 || num_experts > 1024 || top_k == 0 || top_k > num_experts {
        return Err(load_err(
            file,
            format!("expert_used_count {top_k} must be in 1..=expert_count ({num_experts}, at most 1024)"),
        ));
    }
    if let Some(scale) = opt_f32(file, &k("expert_weights_scale"))? {
        if scale != 0.0 && scale != 1.0 {
            return Err(load_err(file, format!("expert_weights_scale {scale} is not supported (only 1)")));
        }
    }
    let ff = req_u64(file, &k("feed_forward_length"))? as usize;
    let moe_intermediate_size = match file.get(&k("expert_feed_forward_length")) {
        Some(_) => req_u64(file, &k("expert_feed_forward_length"))? as usize,
        None => ff / top_k,
    };
    let shared = if arch == "qwen2moe" {
        Some(req_u64(file, &k("expert_shared_feed_forward_length"))? as usize).filter(|&s| s > 0)
    } else {
        None
    };
    let limit = super::hf_config::MAX_INTERMEDIATE_SIZE;
    if moe_intermediate_size == 0 || moe_intermediate_size > limit || shared.is_some_and(|s| s > limit) {
        return Err(load_err(
            file,
            format!("expert feed-forward length {moe_intermediate_size} / shared {shared:?} out of range"),
        ));
    }
    Ok(MoeConfig {
        num_experts,
        num_experts_per_tok: top_k,
        moe_intermediate_size,
        norm_topk_prob: arch == "qwen3moe",
        sparse_layers: (0..layers)
            .map(|i| file.tensor_info(&format!("blk.{i}.ffn_gate_inp.weight")).is_some())
            .collect(),
        shared_expert_intermediate_size: shared,
    })
}

/// Gemma 2 / 3 from GGUF, as llama.cpp runs them (`llama-model.cpp`): the converter stores the norms with HF's
/// `1 +` already added, writes the soft-caps and the window but not `query_pre_attn_scalar` (llama.cpp scales
/// by `hidden / heads` for the 27B models, 46 / 62 layers, else by `head_dim`, which is what their configs say),
/// and Gemma 3's layer pattern (every 6th layer global) and local RoPE base (1e4) are llama.cpp constants unless
/// the file names them (`attention.sliding_window_pattern`, `rope.freq_base_swa`).
fn gemma_variant(
    file: &GgufFile,
    arch: &str,
    layers: usize,
    hidden_per_head: usize,
    head_dim: usize,
) -> Result<DecoderVariant> {
    let k = |suffix: &str| format!("{arch}.{suffix}");
    let gemma2 = arch == "gemma2";
    let big = (gemma2 && layers == 46) || (!gemma2 && layers == 62);
    let sliding_layers = match file.get(&k("attention.sliding_window_pattern")) {
        None => (0..layers).map(|i| if gemma2 { i % 2 == 0 } else { (i + 1) % 6 != 0 }).collect(),
        Some(GgufValue::Array(flags)) if flags.len() == layers => flags
            .iter()
            .map(|f| f.as_bool().ok_or_else(|| load_err(file, format!("`{}` should hold booleans", k("attention.sliding_window_pattern")))))
            .collect::<Result<Vec<_>>>()?,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => (0..layers).map(|i| (i + 1) % n as usize != 0).collect(),
            _ => {
                return Err(load_err(
                    file,
                    format!("`{}` should be a positive period or one flag per layer, found {v:?}", k("attention.sliding_window_pattern")),
                ))
            }
        },
    };
    Ok(DecoderVariant {
        norm_unit_offset: false,
        scale_embeddings: true,
        sandwich_norms: true,
        activation: HiddenActivation::GeluTanh,
        query_pre_attn_scalar: Some(if big { hidden_per_head } else { head_dim } as f32),
        attn_logit_softcap: opt_f32(file, &k("attn_logit_softcapping"))?.filter(|c| *c > 0.0),
        final_logit_softcap: opt_f32(file, &k("final_logit_softcapping"))?.filter(|c| *c > 0.0),
        sliding_layers,
        rope_local_theta: if gemma2 { None } else { Some(opt_f32(file, &k("rope.freq_base_swa"))?.unwrap_or(10_000.0)) },
        rotary_dim: None,
    })
}

/// The HF name of a GGUF tensor of architecture `arch`, or `None` for tensors the model does not use (e.g.
/// `rope_freqs.weight` and Phi-3's `rope_factors_*.weight`, whose content `gguf_rope` turns into `RopeScaling`).
/// Phi-3 keeps q|k|v fused (`attn_qkv`) and stores gate|up fused as `ffn_up`; Gemma's `ffn_norm` is the norm
/// before the MLP (`pre_feedforward_layernorm`), its sandwich norms are `post_attention_norm` / `post_ffw_norm`.
pub fn hf_tensor_name(arch: &str, gguf: &str) -> Option<String> {
    let gemma = arch.starts_with("gemma");
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
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_qkv" => "self_attn.qkv_proj",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "post_attention_norm" if gemma => "post_attention_layernorm",
        "post_ffw_norm" if gemma => "post_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if arch == "phi3" => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        // Qwen-MoE: the router, the experts stacked `[experts * rows, cols]` (no `.weight`: the model slices
        // them, see `model::mlp`), the shared expert and its gate.
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" if kind == "weight" => {
            let proj = &base[4..base.len() - 5];
            return Some(format!("model.layers.{layer}.mlp.experts.{proj}_proj"));
        }
        "ffn_gate_shexp" => "mlp.shared_expert.gate_proj",
        "ffn_up_shexp" => "mlp.shared_expert.up_proj",
        "ffn_down_shexp" => "mlp.shared_expert.down_proj",
        "ffn_gate_inp_shexp" => "mlp.shared_expert_gate",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

fn weights_from_gguf(file: &GgufFile, config: &ModelConfig) -> Result<WeightStore> {
    let mut store = WeightStore {
        source: file.path.display().to_string(),
        ..Default::default()
    };
    let permuted = arch_is_permuted(&config.architecture);
    for info in &file.tensors {
        let Some(hf_name) = hf_tensor_name(&config.architecture, &info.name) else {
            continue;
        };
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
                w = unpermute_qk(&w, n_head).map_err(|m| {
                    load_err(
                        file,
                        format!("tensor `{}`: undoing the Q/K permutation: {m}", info.name),
                    )
                })?;
            }
        }
        store.insert(hf_name, w);
    }
    for required in ["model.embed_tokens.weight", "model.norm.weight"] {
        if !store.contains(required) {
            return Err(load_err(
                file,
                format!("missing tensor `{required}` (GGUF name differs; see hf_tensor_name)"),
            ));
        }
    }
    Ok(store)
}

fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let Some(v) = file.get(key) else { return Ok(Vec::new()) };
    let items = v
        .as_array()
        .ok_or_else(|| load_err(file, format!("metadata `{key}` should be an array")))?;
    items
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| load_err(file, format!("`{key}` should hold strings")))
        })
        .collect()
}

fn number_array<T>(file: &GgufFile, key: &str, conv: impl Fn(&GgufValue) -> Option<T>) -> Result<Vec<T>> {
    let Some(v) = file.get(key) else { return Ok(Vec::new()) };
    let items = v
        .as_array()
        .ok_or_else(|| load_err(file, format!("metadata `{key}` should be an array")))?;
    items
        .iter()
        .map(|x| conv(x).ok_or_else(|| load_err(file, format!("`{key}` should hold numbers"))))
        .collect()
}

/// `tokenizer.ggml.*` -> `GgufTokenizerData`; `None` when the file carries no vocabulary.
fn tokenizer_from_gguf(file: &GgufFile) -> Result<Option<GgufTokenizerData>> {
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .unwrap_or("llama")
        .to_string();
    let token_types = number_array(file, "tokenizer.ggml.token_type", |v| v.as_i64().map(|x| x as i32))?;
    let scores = number_array(file, "tokenizer.ggml.scores", |v| v.as_f64().map(|x| x as f32))?;
    for (what, len) in [("token_type", token_types.len()), ("scores", scores.len())] {
        if len != 0 && len != tokens.len() {
            return Err(load_err(
                file,
                format!("tokenizer.ggml.{what} has {len} entries for {} tokens", tokens.len()),
            ));
        }
    }
    let flag = |key: &str| file.get(key).and_then(GgufValue::as_bool);
    Ok(Some(GgufTokenizerData {
        pre: file
            .get("tokenizer.ggml.pre")
            .and_then(GgufValue::as_str)
            .map(str::to_string),
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
        add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
        chat_template: file
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
            .map(str::to_string),
        model,
        tokens,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::gguf_writer::{s, strs, write_file, GgufWriter};
    use crate::loader::qk_unpermute::python_permute;
    use pagedllm_kernels::{GgmlType, Storage};
    use rand::{Rng, SeedableRng};

    const HIDDEN: usize = 32;
    const HEADS: usize = 4;
    const KV_HEADS: usize = 2;
    const HEAD_DIM: usize = 8;
    const FFN: usize = 64;
    const VOCAB: usize = 10;

    /// HF-order ("original") rows of the Q and K matrices of each layer, as written before permuting.
    struct Tiny {
        writer: GgufWriter,
        q_rows: Vec<Vec<Vec<u8>>>,
        k_rows: Vec<Vec<Vec<u8>>>,
        embed: Vec<f32>,
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A 2-layer model: Q8_0 q_proj, F16 k_proj, F32 everything else, plus tokenizer metadata.
    fn tiny(arch: &str, permute: bool, with_output: bool, with_bias: bool) -> Tiny {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut rand_f32 = |n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
        let mut w = GgufWriter::new();
        let k = |s: &str| format!("{arch}.{s}");
        w.kv("general.architecture", s(arch))
            .kv(&k("block_count"), GgufValue::U32(2))
            .kv(&k("context_length"), GgufValue::U32(64))
            .kv(&k("embedding_length"), GgufValue::U32(HIDDEN as u32))
            .kv(&k("feed_forward_length"), GgufValue::U32(FFN as u32))
            .kv(&k("attention.head_count"), GgufValue::U32(HEADS as u32))
            .kv(&k("attention.head_count_kv"), GgufValue::U32(KV_HEADS as u32))
            .kv(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5))
            .kv(&k("rope.dimension_count"), GgufValue::U32(HEAD_DIM as u32))
            .kv("general.sampling.temp", GgufValue::F32(0.7))
            .kv("general.sampling.top_k", GgufValue::I32(40))
            .kv("tokenizer.ggml.model", s("gpt2"))
            .kv("tokenizer.ggml.pre", s("smollm"))
            .kv(
                "tokenizer.ggml.tokens",
                strs(&["<unk>", "<s>", "</s>", "<eot>", "a", "b", "ab", "c", "Ġ", "Ġa"]),
            )
            .kv(
                "tokenizer.ggml.token_type",
                GgufValue::Array([2, 3, 3, 3, 1, 1, 1, 1, 1, 1].map(GgufValue::I32).to_vec()),
            )
            .kv("tokenizer.ggml.merges", strs(&["a b", "Ġ a"]))
            .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
            .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(2))
            .kv("tokenizer.ggml.eot_token_id", GgufValue::U32(3))
            .kv("tokenizer.ggml.unknown_token_id", GgufValue::U32(0))
            .kv("tokenizer.ggml.padding_token_id", GgufValue::U32(2))
            .kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(false))
            .kv("tokenizer.chat_template", s("{{ messages }}"));
        let embed = rand_f32(HIDDEN * VOCAB);
        w.tensor_f32("token_embd.weight", &[HIDDEN as u64, VOCAB as u64], &embed);
        w.tensor_f32("output_norm.weight", &[HIDDEN as u64], &rand_f32(HIDDEN));
        if with_output {
            w.tensor_f32(
                "output.weight",
                &[HIDDEN as u64, VOCAB as u64],
                &rand_f32(HIDDEN * VOCAB),
            );
        }
        let (mut q_rows, mut k_rows) = (Vec::new(), Vec::new());
        for l in 0..2 {
            let b = |n: &str| format!("blk.{l}.{n}");
            // Q8_0 rows: 34 random bytes per 32 weights (raw bytes are all the loader looks at).
            let q: Vec<Vec<u8>> = (0..HEADS * HEAD_DIM)
                .map(|_| (0..34).map(|_| rng.random()).collect())
                .collect();
            let kk: Vec<Vec<u8>> = (0..KV_HEADS * HEAD_DIM)
                .map(|_| (0..HIDDEN * 2).map(|_| rng.random()).collect())
                .collect();
            let (q_file, k_file) = if permute {
                (python_permute(&q, HEADS), python_permute(&kk, KV_HEADS))
            } else {
                (q.clone(), kk.clone())
            };
            w.tensor(
                &b("attn_q.weight"),
                &[HIDDEN as u64, (HEADS * HEAD_DIM) as u64],
                8,
                q_file.concat(),
            );
            w.tensor(
                &b("attn_k.weight"),
                &[HIDDEN as u64, (KV_HEADS * HEAD_DIM) as u64],
                1,
                k_file.concat(),
            );
            let mut rand_f32 = |n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
            w.tensor_f32(
                &b("attn_v.weight"),
                &[HIDDEN as u64, (KV_HEADS * HEAD_DIM) as u64],
                &rand_f32(HIDDEN * 16),
            );
            w.tensor_f32(
                &b("attn_output.weight"),
                &[HIDDEN as u64, HIDDEN as u64],
                &rand_f32(HIDDEN * HIDDEN),
            );
            w.tensor_f32(&b("attn_norm.weight"), &[HIDDEN as u64], &rand_f32(HIDDEN));
            w.tensor_f32(&b("ffn_norm.weight"), &[HIDDEN as u64], &rand_f32(HIDDEN));
            w.tensor_f32(
                &b("ffn_gate.weight"),
                &[HIDDEN as u64, FFN as u64],
                &rand_f32(HIDDEN * FFN),
            );
            w.tensor_f32(
                &b("ffn_up.weight"),
                &[HIDDEN as u64, FFN as u64],
                &rand_f32(HIDDEN * FFN),
            );
            w.tensor_f32(
                &b("ffn_down.weight"),
                &[FFN as u64, HIDDEN as u64],
                &rand_f32(HIDDEN * FFN),
            );
            if with_bias {
                w.tensor_f32(&b("attn_q.bias"), &[32], &(0..32).map(|i| i as f32).collect::<Vec<_>>());
                w.tensor_f32(&b("attn_k.bias"), &[16], &rand_f32(16));
                w.tensor_f32(&b("attn_v.bias"), &[16], &rand_f32(16));
            }
            q_rows.push(q);
            k_rows.push(kk);
        }
        Tiny {
            writer: w,
            q_rows,
            k_rows,
            embed,
        }
    }

    fn load(t: &Tiny) -> (tempfile::TempDir, Result<LoadedModel>) {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_file(tmp.path(), "tiny.gguf", &t.writer.to_bytes());
        let m = load_gguf(&path, "tiny".into());
        (tmp, m)
    }

    #[test]
    fn tiny_llama_config_names_values_and_unpermuted_qk() {
        let t = tiny("llama", true, false, false);
        let (_tmp, m) = load(&t);
        let m = m.unwrap();
        let c = &m.config;
        assert_eq!(c.architecture, "llama");
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.num_key_value_heads
            ),
            (HIDDEN, FFN, 2, HEADS, KV_HEADS)
        );
        assert_eq!(
            (c.head_dim, c.vocab_size, c.max_position_embeddings),
            (HEAD_DIM, VOCAB, 64)
        );
        assert_eq!(
            (c.rms_norm_eps, c.rope_theta, c.rope_scaling.clone()),
            (1e-5, 10_000.0, RopeScaling::None)
        );
        assert!(c.tie_word_embeddings && !c.attention_bias);
        assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2, 3]));
        assert_eq!(m.generation_defaults.eos_token_ids, vec![2, 3]);
        assert_eq!(
            (m.generation_defaults.temperature, m.generation_defaults.top_k),
            (Some(0.7), Some(40))
        );
        assert_eq!(m.source.format, ModelFormat::Gguf);

        let w = &m.weights;
        assert_eq!(w.tensors.len(), 2 + 2 * 9);
        assert!(!w.contains("lm_head.weight"));
        let embed = w.matrix("model.embed_tokens.weight").unwrap();
        assert_eq!((embed.rows, embed.cols, embed.dtype), (VOCAB, HIDDEN, GgmlType::F32));
        assert!(matches!(embed.storage, Storage::Mapped { .. }));
        assert_eq!(embed.storage.bytes(), &f32_bytes(&t.embed)[..]);
        let norm = w.matrix("model.layers.1.post_attention_layernorm.weight").unwrap();
        assert_eq!((norm.rows, norm.cols), (1, HIDDEN));
        let down = w.matrix("model.layers.0.mlp.down_proj.weight").unwrap();
        assert_eq!((down.rows, down.cols), (HIDDEN, FFN));
        for l in 0..2 {
            let q = w.matrix(&format!("model.layers.{l}.self_attn.q_proj.weight")).unwrap();
            assert_eq!((q.rows, q.cols, q.dtype), (HEADS * HEAD_DIM, HIDDEN, GgmlType::Q8_0));
            assert!(matches!(q.storage, Storage::Owned(_)));
            let k = w.matrix(&format!("model.layers.{l}.self_attn.k_proj.weight")).unwrap();
            assert_eq!((k.rows, k.cols, k.dtype), (KV_HEADS * HEAD_DIM, HIDDEN, GgmlType::F16));
            for r in 0..q.rows {
                assert_eq!(q.row(r), &t.q_rows[l][r][..], "layer {l} q row {r}");
            }
            for r in 0..k.rows {
                assert_eq!(k.row(r), &t.k_rows[l][r][..], "layer {l} k row {r}");
            }
            for name in ["v_proj", "o_proj"] {
                assert!(w.contains(&format!("model.layers.{l}.self_attn.{name}.weight")));
            }
        }

        let Some(TokenizerSource::Gguf(tok)) = &m.tokenizer else {
            panic!("no GGUF tokenizer")
        };
        assert_eq!((tok.model.as_str(), tok.pre.as_deref()), ("gpt2", Some("smollm")));
        assert_eq!(tok.tokens.len(), VOCAB);
        assert_eq!(tok.tokens[9], "Ġa");
        assert_eq!(tok.token_types[1], 3);
        assert!(tok.scores.is_empty());
        assert_eq!(tok.merges, vec!["a b", "Ġ a"]);
        assert_eq!(
            (
                tok.bos_token_id,
                tok.eos_token_id,
                tok.unknown_token_id,
                tok.padding_token_id
            ),
            (Some(1), Some(2), Some(0), Some(2))
        );
        assert!(!tok.add_bos_token && !tok.add_eos_token);
        assert_eq!(tok.chat_template.as_deref(), Some("{{ messages }}"));
    }

    #[test]
    fn qwen2_is_not_unpermuted_and_has_bias_and_untied_head() {
        let t = tiny("qwen2", false, true, true);
        let (_tmp, m) = load(&t);
        let m = m.unwrap();
        assert!(m.config.attention_bias && !m.config.tie_word_embeddings);
        let w = &m.weights;
        assert!(w.contains("lm_head.weight"));
        let q = w.matrix("model.layers.0.self_attn.q_proj.weight").unwrap();
        assert!(matches!(q.storage, Storage::Mapped { .. }));
        for r in 0..q.rows {
            assert_eq!(q.row(r), &t.q_rows[0][r][..]);
        }
        let bias = w.matrix("model.layers.1.self_attn.q_proj.bias").unwrap();
        assert_eq!((bias.rows, bias.cols), (1, 32));
        assert_eq!(
            bias.storage.bytes(),
            &f32_bytes(&(0..32).map(|i| i as f32).collect::<Vec<_>>())[..]
        );
    }

    #[test]
    fn llama_bias_is_unpermuted_too() {
        let t = tiny("llama", true, false, true);
        let (_tmp, m) = load(&t);
        let bias = m
            .unwrap()
            .weights
            .matrix("model.layers.0.self_attn.q_proj.bias")
            .unwrap()
            .clone();
        // The file holds 0..32 in order, i.e. permuted positions; undoing puts element 2i+j at j*half+i.
        let got: Vec<f32> = bias
            .storage
            .bytes()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(&got[..8], &[0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
    }

    #[test]
    fn unsupported_architecture_lists_supported() {
        let t = tiny("gpt2", false, true, false);
        let (tmp, m) = load(&t);
        let e = m.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, EngineError::ModelLoad { .. }));
        assert!(msg.contains("`gpt2`") && msg.contains("llama, mistral, qwen2"), "{msg}");
        assert!(
            msg.contains(&tmp.path().join("tiny.gguf").display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn missing_key_and_rope_scaling_metadata() {
        let mut t = tiny("llama", true, false, false);
        t.writer.metadata.retain(|(k, _)| k != "llama.feed_forward_length");
        let e = load(&t).1.unwrap_err().to_string();
        assert!(e.contains("llama.feed_forward_length"), "{e}");

        let mut t = tiny("llama", true, false, false);
        t.writer
            .kv("llama.rope.scaling.type", s("linear"))
            .kv("llama.rope.scaling.factor", GgufValue::F32(4.0));
        t.writer.kv("llama.rope.freq_base", GgufValue::F32(5e5));
        let c = load(&t).1.unwrap().config;
        assert_eq!(
            (c.rope_scaling, c.rope_theta),
            (RopeScaling::Linear { factor: 4.0 }, 5e5)
        );

        let mut t = tiny("llama", true, false, false);
        t.writer.kv("llama.rope.scaling.type", s("yarn"));
        let e = load(&t).1.unwrap_err().to_string();
        assert!(e.contains("yarn"), "{e}");
    }

    #[test]
    fn llama3_scaling_from_rope_freqs_tensor() {
        let mut t = tiny("llama", true, false, false);
        t.writer.kv("llama.rope.freq_base", GgufValue::F32(5e5));
        let ff = super::gguf_rope::llama3_freq_factors(HEAD_DIM, 5e5, 8.0, 1.0, 4.0, 8192);
        t.writer.tensor_f32("rope_freqs.weight", &[(HEAD_DIM / 2) as u64], &ff);
        let m = load(&t).1.unwrap();
        assert!(
            matches!(m.config.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0),
            "{:?}",
            m.config.rope_scaling
        );
        assert!(!m.weights.contains("rope_freqs.weight"));
    }

    #[test]
    fn tensor_name_mapping() {
        assert_eq!(
            hf_tensor_name("llama", "blk.12.ffn_gate.weight").as_deref(),
            Some("model.layers.12.mlp.gate_proj.weight")
        );
        assert_eq!(
            hf_tensor_name("llama", "blk.0.attn_v.bias").as_deref(),
            Some("model.layers.0.self_attn.v_proj.bias")
        );
        assert_eq!(hf_tensor_name("llama", "output.weight").as_deref(), Some("lm_head.weight"));
        for unused in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_q.scale",
            "blk.0.unknown.weight",
        ] {
            assert_eq!(hf_tensor_name("llama", unused), None, "{unused}");
        }
    }

    /// The real default model, when it has been fetched.
    #[test]
    fn real_default_model() {
        let path = crate::loader::model_source::home_dir()
            .join(".cache/pagedllm/models")
            .join(crate::loader::model_source::DEFAULT_MODEL_FILE);
        if !path.is_file() {
            eprintln!("skipping real_default_model: {} is not present", path.display());
            return;
        }
        let m = crate::loader::load_model(path.to_str().unwrap()).unwrap();
        let c = &m.config;
        assert_eq!(m.source.name, "SmolLM2-135M-Instruct");
        assert_eq!(c.architecture, "llama");
        assert_eq!(
            (
                c.hidden_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim
            ),
            (576, 30, 9, 3, 64)
        );
        assert_eq!(
            (c.intermediate_size, c.vocab_size, c.rope_theta, c.rms_norm_eps),
            (1536, 49152, 1e5, 1e-5)
        );
        assert!(c.tie_word_embeddings && !c.attention_bias);
        assert_eq!(c.eos_token_ids, vec![2]);
        let w = &m.weights;
        assert_eq!(w.matrix("model.embed_tokens.weight").unwrap().dtype, GgmlType::Q8_0);
        for l in 0..30 {
            for (name, rows, cols) in [
                ("self_attn.q_proj", 576, 576),
                ("self_attn.k_proj", 192, 576),
                ("self_attn.v_proj", 192, 576),
                ("self_attn.o_proj", 576, 576),
                ("mlp.gate_proj", 1536, 576),
                ("mlp.up_proj", 1536, 576),
                ("mlp.down_proj", 576, 1536),
            ] {
                let t = w.matrix(&format!("model.layers.{l}.{name}.weight")).unwrap();
                assert_eq!(
                    (t.dtype, t.rows, t.cols),
                    (GgmlType::Q4_1, rows, cols),
                    "layer {l} {name}"
                );
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                assert_eq!(
                    w.matrix(&format!("model.layers.{l}.{norm}.weight")).unwrap().dtype,
                    GgmlType::F32
                );
            }
        }
        assert_eq!(w.tensors.len(), 272);
        let Some(TokenizerSource::Gguf(tok)) = &m.tokenizer else {
            panic!("no tokenizer")
        };
        assert_eq!(
            (tok.tokens.len(), tok.model.as_str(), tok.pre.as_deref()),
            (49152, "gpt2", Some("smollm"))
        );
        assert!(!tok.merges.is_empty());
        assert!(tok.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")));
    }
}
