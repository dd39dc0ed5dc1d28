//! Model definitions, each written once against the backend ops (`pagedllm_kernels::backend`), so every backend
//! runs the same forward. One decoder model file covers Llama 2/3/3.1, SmolLM2, Mistral, Qwen2, Qwen3, Gemma 2
//! and Gemma 3 (text) through `ModelConfig` switches; `WeightStore` is what loaders hand to it.

pub mod config;
pub mod device_weights;
pub mod llama;
mod mlp;
pub mod weights;

pub use config::{DecoderVariant, HiddenActivation, ModelConfig, MoeConfig, RopeScaling};
pub use weights::WeightStore;
