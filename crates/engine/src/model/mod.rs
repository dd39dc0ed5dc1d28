//! Model definitions. One Llama-family model file covers Llama 2/3/3.1, SmolLM2, Mistral and Qwen2 through
//! `ModelConfig` switches; `WeightStore` is what loaders hand to it.

pub mod config;
pub mod device_weights;
pub mod llama;
pub mod weights;

pub use config::{ModelConfig, RopeScaling};
pub use weights::WeightStore;
