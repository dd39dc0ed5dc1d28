//! Model loaders: turn a model spec (a `.gguf` file, an HF model directory, an HF repo id, or "" for the
//! default model) into everything the engine needs: `ModelConfig`, a `WeightStore` under HF tensor names (GGUF
//! names renamed and llama.cpp's Q/K permutation undone), a `TokenizerSource`, and generation defaults.
//!
//! Weights are never inflated: GGUF tensors and safetensors tensors are `Storage::Mapped` windows into a shared
//! memory map (only GGUF Q/K matrices, whose rows are re-ordered, are owned copies). Bad input of any kind is an
//! `EngineError` (`ModelNotFound` for a missing path/repo, `ModelLoad` naming the file and the defect otherwise).
//!
//! Layout: `model_source` (spec -> path), `gguf_file` (container parser), `gguf_model` (GGUF -> model),
//! `gguf_rope` (Llama 3 RoPE scaling recovered from `rope_freqs`), `qk_unpermute`, `hf_config` (config.json,
//! generation_config.json), `safetensors_model` (HF directory -> model), `hub_download` (HF Hub fetch, `hub` feature).

#[cfg(test)]
mod gguf_family_tests;
pub mod gguf_file;
mod gguf_model;
mod gguf_rope;
#[cfg(test)]
pub(crate) mod gguf_writer;
#[cfg(test)]
mod reader_fuzz_tests;
pub mod hf_config;
#[cfg(feature = "hub")]
mod hub_download;
pub mod model_source;
mod qk_unpermute;
mod safetensors_model;

use std::path::PathBuf;

use crate::error::Result;
use crate::model::{ModelConfig, WeightStore};
use crate::tokenizer::TokenizerSource;

pub use gguf_model::load_gguf;
pub use model_source::{cache_dir, default_model_path, hf_hub_cache_dir, resolve_repo_in_cache};
pub use safetensors_model::load_hf_dir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    HfSafetensors,
}

/// Where a loaded model came from.
#[derive(Clone, Debug)]
pub struct ModelSourceInfo {
    /// The `.gguf` file or the HF model directory.
    pub path: PathBuf,
    pub format: ModelFormat,
    /// A display name: the GGUF file name without extension and quant tag (`SmolLM2-135M-Instruct`), the
    /// directory name, or the repo id.
    pub name: String,
}

/// Sampling defaults the model ships with (HF `generation_config.json`, GGUF `general.sampling.*`). `None` =
/// not specified by the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
    /// Tokens that end generation (same set as `ModelConfig::eos_token_ids`).
    pub eos_token_ids: Vec<u32>,
}

#[derive(Clone)]
pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: WeightStore,
    /// `None` for checkpoints without tokenizer files (the engine then needs token-id prompts).
    pub tokenizer: Option<TokenizerSource>,
    pub generation_defaults: GenerationDefaults,
    pub source: ModelSourceInfo,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("config", &self.config)
            .field("tensors", &self.weights.tensors.len())
            .field("tokenizer", &self.tokenizer.as_ref().map(|_| "present"))
            .field("generation_defaults", &self.generation_defaults)
            .field("source", &self.source)
            .finish()
    }
}

/// Loads a model. `spec`: "" for the default model (`default_model_path()`), a `.gguf` file, an HF model
/// directory (config.json + *.safetensors), or an HF repo id `org/name` (HF cache, else downloaded when the
/// `hub` feature is on and `HF_HUB_OFFLINE` is unset).
pub fn load_model(spec: &str) -> Result<LoadedModel> {
    let resolved = model_source::resolve(spec)?;
    match resolved.format {
        ModelFormat::Gguf => load_gguf(&resolved.path, resolved.name),
        ModelFormat::HfSafetensors => load_hf_dir(&resolved.path, resolved.name),
    }
}

/// Appends ids not already present, keeping the first-seen order (eos lists are merged from several keys).
pub(crate) fn push_unique(ids: &mut Vec<u32>, more: impl IntoIterator<Item = u32>) {
    for id in more {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}
