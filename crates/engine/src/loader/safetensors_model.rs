//! HF model directory -> model: `config.json`, `*.safetensors` (single file or sharded through
//! `model.safetensors.index.json`), optional `generation_config.json`, and `tokenizer.json` (+
//! `tokenizer_config.json`) as the tokenizer source.
//!
//! Each shard is memory-mapped and validated by `safetensors::SafeTensors::deserialize` (header bounds, dtype
//! sizes, no overlap); tensors become `Storage::Mapped` windows at their offset in the map (zero copy).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pagedllm_kernels::{GgmlType, Storage, WeightMatrix};
use safetensors::{Dtype, SafeTensors};

use crate::error::{EngineError, Result};
use crate::model::WeightStore;
use crate::tokenizer::TokenizerSource;

use super::hf_config::{parse_config, parse_generation_config};
use super::{push_unique, GenerationDefaults, LoadedModel, ModelFormat, ModelSourceInfo};

const SUPPORTED_DTYPES: &str = "F32, F16, BF16";

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| EngineError::Io {
        context: format!("reading {}", path.display()),
        source: e,
    })
}

/// Loads an HF model directory.
pub fn load_hf_dir(dir: &Path, name: String) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(EngineError::load(
            dir.display(),
            "no config.json in the model directory",
        ));
    }
    let mut config = parse_config(&config_path.display().to_string(), &read_text(&config_path)?)?;

    let mut weights = WeightStore {
        source: dir.display().to_string(),
        ..Default::default()
    };
    for shard in safetensors_files(dir)? {
        load_safetensors_file(&shard, &mut weights)?;
    }
    let embed = weights.matrix("model.embed_tokens.weight")?;
    // The embedding is what the model indexes and (when tied) projects onto, so its row count is the
    // vocabulary the logits cover.
    config.vocab_size = embed.rows;
    if embed.cols != config.hidden_size {
        return Err(EngineError::load(
            dir.display(),
            format!(
                "model.embed_tokens.weight has {} columns but hidden_size is {}",
                embed.cols, config.hidden_size
            ),
        ));
    }
    if !weights.contains("lm_head.weight") {
        config.tie_word_embeddings = true;
    }

    let gen_path = dir.join("generation_config.json");
    let mut generation_defaults = if gen_path.is_file() {
        parse_generation_config(&gen_path.display().to_string(), &read_text(&gen_path)?)?
    } else {
        GenerationDefaults::default()
    };
    // Stop on every eos either file names (Llama 3 instruct lists <|eot_id|> only in one of them).
    push_unique(
        &mut config.eos_token_ids,
        generation_defaults.eos_token_ids.iter().copied(),
    );
    generation_defaults.eos_token_ids = config.eos_token_ids.clone();

    let tokenizer_json = dir.join("tokenizer.json");
    let tokenizer = tokenizer_json.is_file().then(|| {
        let cfg = dir.join("tokenizer_config.json");
        TokenizerSource::HfFiles {
            tokenizer_json,
            tokenizer_config_json: cfg.is_file().then_some(cfg),
        }
    });

    Ok(LoadedModel {
        config,
        weights,
        tokenizer,
        generation_defaults,
        source: ModelSourceInfo {
            path: dir.to_path_buf(),
            format: ModelFormat::HfSafetensors,
            name,
        },
    })
}

/// The weight files: the shards named by `model.safetensors.index.json`, else `model.safetensors`, else every
/// `*.safetensors` in the directory.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let err = |m: String| EngineError::load(index.display(), m);
        let json: serde_json::Value =
            serde_json::from_str(&read_text(&index)?).map_err(|e| err(format!("invalid index: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| err("no `weight_map` object".into()))?;
        let mut files = BTreeSet::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| err(format!("weight_map entry for `{tensor}` is not a file name")))?;
            // Shard names are plain file names; refuse paths that would leave the model directory.
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(err(format!(
                    "weight_map names `{file}`, which is not a file in the model directory"
                )));
            }
            files.insert(file.to_string());
        }
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(err(format!("shard {} is missing", missing.display())));
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::Io {
            context: format!("listing {}", dir.display()),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::load(
            dir.display(),
            "no *.safetensors weight files in the model directory",
        ));
    }
    Ok(files)
}

fn ggml_dtype(dtype: Dtype) -> Option<GgmlType> {
    match dtype {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

/// Maps one safetensors file and adds its tensors to `store` as mapped windows.
fn load_safetensors_file(path: &Path, store: &mut WeightStore) -> Result<()> {
    let err = |m: String| EngineError::load(path.display(), m);
    let file = std::fs::File::open(path).map_err(|e| EngineError::Io {
        context: format!("opening {}", path.display()),
        source: e,
    })?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) < 8 {
        return Err(err(
            "file is truncated: shorter than the 8-byte safetensors header length".into(),
        ));
    }
    // SAFETY: read-only map; the weight file must not be truncated while the engine runs (as for every
    // mmap-based loader).
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| EngineError::Io {
        context: format!("memory-mapping {}", path.display()),
        source: e,
    })?);
    let tensors = SafeTensors::deserialize(&map[..]).map_err(|e| err(format!("invalid safetensors file: {e}")))?;
    let base = map.as_ptr() as usize;
    for (name, view) in tensors.iter() {
        let dtype = ggml_dtype(view.dtype()).ok_or_else(|| {
            err(format!(
                "tensor `{name}` has dtype {:?}, which is not supported (supported: {SUPPORTED_DTYPES})",
                view.dtype()
            ))
        })?;
        let shape = view.shape();
        let (rows, cols) = match shape {
            [] => (1, 1),
            [n] => (1, *n),
            [outer @ .., last] => (outer.iter().product(), *last),
        };
        let data = view.data();
        // The view borrows from the map, so its address minus the map's is its offset in the file.
        let offset = data.as_ptr() as usize - base;
        let storage = Storage::Mapped {
            map: map.clone(),
            offset,
            len: data.len(),
        };
        let w = WeightMatrix::new(dtype, rows, cols, storage).map_err(|m| err(format!("tensor `{name}`: {m}")))?;
        if store.contains(name) {
            return Err(err(format!("tensor `{name}` appears in more than one weight file")));
        }
        store.insert(name, w);
    }
    Ok(())
}
