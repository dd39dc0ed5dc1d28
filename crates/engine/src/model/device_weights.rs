//! What a GPU backend needs from the model before its weights arrive: the float type `auto` picks and the
//! model's shape in the backend's terms. (Each weight is encoded for the GPU by the backend itself, from the
//! same `WeightMatrix` the CPU reads.)

use pagedllm_kernels::cuda::{ActivationDtype, ModelShape};
use pagedllm_kernels::GgmlType;

use super::config::ModelConfig;
use super::llama::LlamaModel;
use super::weights::WeightStore;

/// The CUDA backend's view of a model: its KV layout and vocabulary.
pub fn model_shape(c: &ModelConfig) -> ModelShape {
    ModelShape {
        layout: LlamaModel::kv_layout(c),
        vocab_size: c.vocab_size,
    }
}

/// The GPU type `auto` picks for a checkpoint: f16 when its embedding table is stored in f16 (an f16 model),
/// else bf16 (bf16 and f32 checkpoints, GGUF), as vLLM's `--dtype auto` follows the checkpoint's dtype.
pub fn auto_dtype(weights: &WeightStore) -> ActivationDtype {
    match weights.matrix("model.embed_tokens.weight") {
        Ok(w) if w.dtype == GgmlType::F16 => ActivationDtype::F16,
        _ => ActivationDtype::Bf16,
    }
}
