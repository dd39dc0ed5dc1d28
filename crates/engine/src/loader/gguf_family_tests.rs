//! GGUF files of the tiny HF family fixtures (`tests/fixtures/families/<family>/`), written the way llama.cpp's
//! `convert_hf_to_gguf.py` writes those families (`Phi3MiniModel`, `Gemma2Model`, `Gemma3Model`; names from
//! `gguf-py/gguf/constants.py`): Phi-3 keeps `attn_qkv` fused, stores gate|up fused as `ffn_up` and LongRoPE's
//! factor lists as `rope_factors_long/short` tensors with `rope.scaling.original_context_length` and
//! `rope.scaling.attn_factor`; Gemma's norm weights are stored with HF's `1 +` added, its MLP norms are
//! `ffn_norm` / `post_ffw_norm` and the soft-caps and window are metadata. Each file is loaded back through
//! `load_model` and run: the greedy tokens must be HF's on the safetensors checkpoint (`ref-fp32.json`), so the
//! GGUF mapping is checked end to end against transformers, not against itself.
//!
//! One departure, for Gemma 3: llama.cpp fixes its layer pattern at "every 6th layer global", while the tiny
//! fixture alternates (2 layers: local, global); the file says so with the per-layer
//! `attention.sliding_window_pattern` flags llama.cpp uses for other interleaved models.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::gguf_file::GgufValue;
use super::gguf_writer::{s, write_file, GgufWriter};
use crate::engine::{LLMEngine, Prompt, RequestInput};
use crate::{EngineConfig, SamplingParams};

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(family)
}

/// The converter's tensor name for an HF name (the inverse of `gguf_model::hf_tensor_name`).
fn gguf_name(arch: &str, hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap_or_else(|| panic!("unexpected tensor {hf}"));
    let (layer, rest) = rest.split_once('.').unwrap();
    let (base, kind) = rest.rsplit_once('.').unwrap();
    let gemma = arch.starts_with("gemma");
    let g = match base {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "mlp.gate" => "ffn_gate_inp",
        "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{g}.{kind}")
}

fn num(c: &Value, key: &str) -> f64 {
    c[key].as_f64().unwrap_or_else(|| panic!("config.json has no number `{key}`"))
}

fn u32v(c: &Value, key: &str) -> GgufValue {
    GgufValue::U32(num(c, key) as u32)
}

/// Writes `family`'s fixture as the converter would (F32 tensors) into `dir`; returns the file.
fn convert(family: &str, arch: &str, dir: &Path) -> PathBuf {
    let src = fixture(family);
    let c: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let loaded = super::load_hf_dir(&src, family.into()).unwrap();
    let k = |key: &str| format!("{arch}.{key}");
    let mut w = GgufWriter::new();
    w.kv("general.architecture", s(arch))
        .kv(&k("context_length"), u32v(&c, "max_position_embeddings"))
        .kv(&k("embedding_length"), u32v(&c, "hidden_size"))
        .kv(&k("feed_forward_length"), u32v(&c, "intermediate_size"))
        .kv(&k("block_count"), u32v(&c, "num_hidden_layers"))
        .kv(&k("attention.head_count"), u32v(&c, "num_attention_heads"))
        .kv(&k("attention.head_count_kv"), u32v(&c, "num_key_value_heads"))
        .kv(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(num(&c, "rms_norm_eps") as f32))
        .kv("tokenizer.ggml.bos_token_id", u32v(&c, "bos_token_id"))
        .kv("tokenizer.ggml.eos_token_id", u32v(&c, "eos_token_id"));
    let rope = &c["rope_parameters"];
    match arch {
        "phi3" => {
            let rot_pct = num(&c, "partial_rotary_factor");
            let rope_dims = (rot_pct * num(&c, "hidden_size")) as u32 / num(&c, "num_attention_heads") as u32;
            let orig = num(&c, "original_max_position_embeddings");
            let scale = num(&c, "max_position_embeddings") / orig;
            let factors = |key: &str| -> Vec<f32> {
                rope[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
            };
            w.kv(&k("rope.dimension_count"), GgufValue::U32(rope_dims))
                .kv(&k("rope.freq_base"), GgufValue::F32(rope["rope_theta"].as_f64().unwrap() as f32))
                .kv(&k("rope.scaling.original_context_length"), GgufValue::U32(orig as u32))
                .kv(&k("rope.scaling.attn_factor"), GgufValue::F32((1.0 + scale.ln() / orig.ln()).sqrt() as f32))
                .kv(&k("attention.sliding_window"), u32v(&c, "sliding_window"));
            let half = [rope_dims as u64 / 2];
            w.tensor_f32("rope_factors_long.weight", &half, &factors("long_factor"));
            w.tensor_f32("rope_factors_short.weight", &half, &factors("short_factor"));
        }
        "gemma2" | "gemma3" => {
            w.kv(&k("attention.key_length"), u32v(&c, "head_dim"))
                .kv(&k("attention.value_length"), u32v(&c, "head_dim"))
                .kv(&k("attention.sliding_window"), u32v(&c, "sliding_window"));
            if arch == "gemma2" {
                w.kv(&k("attn_logit_softcapping"), GgufValue::F32(num(&c, "attn_logit_softcapping") as f32))
                    .kv(&k("final_logit_softcapping"), GgufValue::F32(num(&c, "final_logit_softcapping") as f32))
                    .kv(&k("rope.freq_base"), GgufValue::F32(rope["rope_theta"].as_f64().unwrap() as f32));
            } else {
                let global = &rope["full_attention"];
                let flags = c["layer_types"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| GgufValue::Bool(t == "sliding_attention"))
                    .collect();
                w.kv(&k("rope.freq_base"), GgufValue::F32(global["rope_theta"].as_f64().unwrap() as f32))
                    .kv(&k("rope.scaling.type"), s("linear"))
                    .kv(&k("rope.scaling.factor"), GgufValue::F32(global["factor"].as_f64().unwrap() as f32))
                    .kv(&k("attention.sliding_window_pattern"), GgufValue::Array(flags));
            }
        }
        "qwen3moe" | "qwen2moe" => {
            // transformers 5 names the count `num_local_experts` for Qwen3-MoE, `num_experts` for Qwen2-MoE.
            let experts_key = if c.get("num_local_experts").is_some() { "num_local_experts" } else { "num_experts" };
            w.kv(&k("attention.key_length"), u32v(&c, "head_dim"))
                .kv(&k("attention.value_length"), u32v(&c, "head_dim"))
                .kv(&k("rope.freq_base"), GgufValue::F32(rope["rope_theta"].as_f64().unwrap() as f32))
                .kv(&k("expert_count"), u32v(&c, experts_key))
                .kv(&k("expert_used_count"), u32v(&c, "num_experts_per_tok"))
                .kv(&k("expert_feed_forward_length"), u32v(&c, "moe_intermediate_size"));
            if arch == "qwen2moe" {
                w.kv(&k("expert_shared_feed_forward_length"), u32v(&c, "shared_expert_intermediate_size"));
            }
            // The experts of each layer stacked into one 3-D tensor `[cols, rows, experts]` per projection.
            let layers = num(&c, "num_hidden_layers") as usize;
            let experts = num(&c, experts_key) as usize;
            for l in 0..layers {
                for proj in ["gate", "up", "down"] {
                    let name = |e: usize| format!("model.layers.{l}.mlp.experts.{e}.{proj}_proj.weight");
                    if !loaded.weights.contains(&name(0)) {
                        continue;
                    }
                    let m0 = loaded.weights.matrix(&name(0)).unwrap();
                    let values: Vec<f32> = (0..experts).flat_map(|e| loaded.weights.vector(&name(e)).unwrap()).collect();
                    let dims = [m0.cols as u64, m0.rows as u64, experts as u64];
                    w.tensor_f32(&format!("blk.{l}.ffn_{proj}_exps.weight"), &dims, &values);
                }
            }
        }
        other => panic!("no converter rules for {other}"),
    }
    let mut names: Vec<&String> = loaded.weights.tensors.keys().filter(|n| !n.contains(".experts.")).collect();
    names.sort();
    for name in names {
        let m = loaded.weights.matrix(name).unwrap();
        let mut values = loaded.weights.vector(name).unwrap();
        // Gemma's RMSNorms multiply by (1 + w); the converter stores 1 + w.
        if arch.starts_with("gemma") && name.ends_with("norm.weight") {
            values.iter_mut().for_each(|v| *v += 1.0);
        }
        // The converter drops Gemma's lm_head (tied).
        if arch.starts_with("gemma") && name == "lm_head.weight" {
            continue;
        }
        // 1-D tensors (norms; Qwen2-MoE's shared-expert gate, `{n_embd}`) keep one dim.
        let dims: Vec<u64> = if m.rows == 1 { vec![m.cols as u64] } else { vec![m.cols as u64, m.rows as u64] };
        w.tensor_f32(&gguf_name(arch, name), &dims, &values);
    }
    write_file(dir, &format!("{family}.gguf"), &w.to_bytes())
}

#[derive(serde::Deserialize)]
struct Item {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Reference {
    items: Vec<Item>,
}

fn greedy_matches_hf(family: &str, arch: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let path = convert(family, arch, tmp.path());
    let m = super::load_model(path.to_str().unwrap()).unwrap();
    assert_eq!(m.source.format, super::ModelFormat::Gguf);
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fixture(family).join("ref-fp32.json")).unwrap()).unwrap();
    let config = EngineConfig {
        kv_cache_bytes: 16 << 20,
        ..EngineConfig::default()
    };
    let engine = LLMEngine::start(path.to_str().unwrap(), config).unwrap();
    let streams: Vec<_> = reference
        .items
        .iter()
        .map(|item| {
            let params = SamplingParams {
                temperature: 0.0,
                max_tokens: Some(item.greedy.len()),
                ignore_eos: true,
                ..Default::default()
            };
            engine
                .add_request(RequestInput {
                    request_id: None,
                    prompt: Prompt::TokenIds(item.prompt.clone()),
                    params,
                    priority: 0,
                    cache_salt: None,
                    add_special_tokens: false,
                })
                .unwrap()
        })
        .collect();
    for (i, (item, mut stream)) in reference.items.iter().zip(streams).enumerate() {
        let mut tokens = Vec::new();
        while let Some(out) = stream.blocking_next() {
            for o in out.unwrap().outputs {
                tokens.extend(o.token_ids);
            }
        }
        assert_eq!(tokens, item.greedy, "{family} GGUF prompt {i}: greedy tokens differ from HF's");
    }
    engine.shutdown();
}

#[test]
fn phi3_gguf_with_fused_tensors_and_rope_factor_tensors_matches_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let m = super::load_model(convert("phi3", "phi3", tmp.path()).to_str().unwrap()).unwrap();
    let c = &m.config;
    assert_eq!((c.architecture.as_str(), c.rotary_dim(), c.sliding_window), ("phi3", 12, Some(8)));
    assert!(m.weights.contains("model.layers.1.self_attn.qkv_proj.weight"));
    assert!(m.weights.contains("model.layers.1.mlp.gate_up_proj.weight"));
    match &c.rope_scaling {
        crate::model::RopeScaling::LongRope {
            long_factor,
            original_max_position_embeddings,
            use_long,
            ..
        } => assert_eq!((long_factor.len(), *original_max_position_embeddings, *use_long), (6, 8, true)),
        other => panic!("expected LongRoPE, got {other:?}"),
    }
    greedy_matches_hf("phi3", "phi3");
}

#[test]
fn gemma2_gguf_with_shifted_norms_and_softcaps_matches_hf() {
    greedy_matches_hf("gemma2", "gemma2");
}

#[test]
fn gemma3_gguf_matches_hf() {
    greedy_matches_hf("gemma3", "gemma3");
}

/// Qwen3-MoE: the router as `ffn_gate_inp`, each projection's experts stacked in one 3-D `ffn_*_exps` tensor,
/// llama.cpp's renormalized top-k (the fixture has `norm_topk_prob: true`).
#[test]
fn qwen3moe_gguf_with_stacked_experts_matches_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let m = super::load_model(convert("qwen3_moe", "qwen3moe", tmp.path()).to_str().unwrap()).unwrap();
    let moe = m.config.moe.as_ref().expect("a MoE config");
    assert_eq!(m.config.architecture, "qwen3_moe");
    assert_eq!((moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size, moe.norm_topk_prob), (4, 2, 32, true));
    assert!(m.weights.contains("model.layers.1.mlp.experts.down_proj"));
    greedy_matches_hf("qwen3_moe", "qwen3moe");
}

/// Qwen2-MoE: the shared expert (`ffn_*_shexp`) and its 1-D gate (`ffn_gate_inp_shexp`); the fixture's dense
/// layer 1 has no router, and that is how the loader tells it from the sparse layer 0.
#[test]
fn qwen2moe_gguf_with_shared_expert_and_a_dense_layer_matches_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let m = super::load_model(convert("qwen2_moe", "qwen2moe", tmp.path()).to_str().unwrap()).unwrap();
    let moe = m.config.moe.as_ref().expect("a MoE config");
    assert_eq!((moe.sparse_layers.as_slice(), moe.shared_expert_intermediate_size, moe.norm_topk_prob), (&[true, false][..], Some(48), false));
    greedy_matches_hf("qwen2_moe", "qwen2moe");
}
