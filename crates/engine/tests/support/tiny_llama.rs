//! A random 2-layer Llama checkpoint for engine tests (head_dim 64, the smallest the CUDA kernels take), written
//! as config.json + model.safetensors in f32; no tokenizer, so prompts are token ids (`seeded_sampling.rs` adds a
//! byte-level tokenizer for its grammar-constrained rows).

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};

pub const HIDDEN: usize = 128;
pub const FFN: usize = 256;
pub const VOCAB: usize = 512;
pub const HEAD_DIM: usize = 64;
pub const LAYERS: usize = 2;

/// A random 2-layer Llama checkpoint (config.json + model.safetensors in f32); no tokenizer: prompts are ids.
pub fn write_tiny_llama(dir: &Path) {
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut random = |name: &str, shape: Vec<usize>, scale: f32| {
        let n = shape.iter().product();
        let values = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        tensors.push((name.to_string(), shape, values));
    };
    let kv = HEAD_DIM; // one KV head
    random("model.embed_tokens.weight", vec![VOCAB, HIDDEN], 1.0);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        random(&format!("{p}.self_attn.q_proj.weight"), vec![HIDDEN, HIDDEN], 0.15);
        random(&format!("{p}.self_attn.k_proj.weight"), vec![kv, HIDDEN], 0.15);
        random(&format!("{p}.self_attn.v_proj.weight"), vec![kv, HIDDEN], 0.15);
        random(&format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN], 0.15);
        random(&format!("{p}.mlp.gate_proj.weight"), vec![FFN, HIDDEN], 0.15);
        random(&format!("{p}.mlp.up_proj.weight"), vec![FFN, HIDDEN], 0.15);
        random(&format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FFN], 0.1);
    }
    // Logits of a few units: distributions neither flat nor one-hot, so sampling has real choices to make.
    random("lm_head.weight", vec![VOCAB, HIDDEN], 0.3);
    let mut norms: Vec<String> = vec!["model.norm.weight".into()];
    for l in 0..LAYERS {
        norms.push(format!("model.layers.{l}.input_layernorm.weight"));
        norms.push(format!("model.layers.{l}.post_attention_layernorm.weight"));
    }
    for name in norms {
        tensors.push((name, vec![HIDDEN], vec![1.0; HIDDEN]));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: HashMap<String, TensorView<'_>> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}
