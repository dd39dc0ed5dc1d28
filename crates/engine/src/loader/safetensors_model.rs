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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::load_model;
    use rand::{Rng, SeedableRng};
    use safetensors::tensor::TensorView;

    const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 128, "vocab_size": 6, "eos_token_id": 2, "bos_token_id": 1,
        "torch_dtype": "bfloat16"}"#;

    /// (name, dtype, shape, bytes)
    type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

    fn tensors(seed: u64) -> Vec<Tensor> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut t = |name: &str, dtype: Dtype, shape: &[usize]| -> Tensor {
            let n: usize = shape.iter().product();
            let bytes: Vec<u8> = match dtype {
                Dtype::F32 => (0..n)
                    .flat_map(|_| rng.random_range(-1.0f32..1.0).to_le_bytes())
                    .collect(),
                _ => (0..n)
                    .flat_map(|_| half::bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_le_bytes())
                    .collect(),
            };
            (name.to_string(), dtype, shape.to_vec(), bytes)
        };
        vec![
            t("model.embed_tokens.weight", Dtype::BF16, &[6, 8]),
            t("model.norm.weight", Dtype::F32, &[8]),
            t("model.layers.0.input_layernorm.weight", Dtype::F32, &[8]),
            t("model.layers.0.self_attn.q_proj.weight", Dtype::BF16, &[8, 8]),
            t("model.layers.0.self_attn.k_proj.weight", Dtype::BF16, &[4, 8]),
            t("model.layers.0.mlp.down_proj.weight", Dtype::F32, &[8, 16]),
        ]
    }

    fn serialize(ts: &[Tensor]) -> Vec<u8> {
        let views: Vec<(String, TensorView)> = ts
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    /// A sharded HF directory: the first half of the tensors in shard 1, the rest in shard 2.
    fn write_dir(dir: &Path, ts: &[Tensor]) {
        std::fs::write(dir.join("config.json"), CONFIG).unwrap();
        let (a, b) = ts.split_at(ts.len() / 2);
        let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
        std::fs::write(dir.join(names[0]), serialize(a)).unwrap();
        std::fs::write(dir.join(names[1]), serialize(b)).unwrap();
        let map: serde_json::Map<String, serde_json::Value> = a
            .iter()
            .map(|t| (t.0.clone(), names[0].into()))
            .chain(b.iter().map(|t| (t.0.clone(), names[1].into())))
            .collect();
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }

    #[test]
    fn sharded_dir_loads_zero_copy_with_config_tokenizer_and_generation_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("TinyLlama");
        std::fs::create_dir(&dir).unwrap();
        let ts = tensors(3);
        write_dir(&dir, &ts);
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"temperature": 0.6, "eos_token_id": [2, 5]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();

        let m = load_model(dir.to_str().unwrap()).unwrap();
        assert_eq!(
            (m.source.format, m.source.name.as_str()),
            (ModelFormat::HfSafetensors, "TinyLlama")
        );
        assert_eq!(
            (m.config.architecture.as_str(), m.config.head_dim, m.config.vocab_size),
            ("llama", 4, 6)
        );
        assert!(m.config.tie_word_embeddings, "no lm_head.weight => tied");
        assert_eq!(m.config.eos_token_ids, vec![2, 5]);
        assert_eq!(m.generation_defaults.temperature, Some(0.6));
        assert_eq!(m.generation_defaults.eos_token_ids, vec![2, 5]);
        match &m.tokenizer {
            Some(TokenizerSource::HfFiles {
                tokenizer_json,
                tokenizer_config_json: None,
            }) => {
                assert_eq!(tokenizer_json, &dir.join("tokenizer.json"))
            }
            other => panic!("unexpected tokenizer {other:?}"),
        }
        assert_eq!(m.weights.tensors.len(), ts.len());
        for (name, dtype, shape, bytes) in &ts {
            let w = m.weights.matrix(name).unwrap();
            let want_dtype = if *dtype == Dtype::F32 {
                GgmlType::F32
            } else {
                GgmlType::BF16
            };
            let (rows, cols) = if shape.len() == 1 {
                (1, shape[0])
            } else {
                (shape[0], shape[1])
            };
            assert_eq!((w.dtype, w.rows, w.cols), (want_dtype, rows, cols), "{name}");
            assert!(matches!(w.storage, Storage::Mapped { .. }));
            assert_eq!(w.storage.bytes(), &bytes[..], "{name}");
        }
    }

    #[test]
    fn single_file_without_tokenizer() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ts = tensors(4);
        ts.push(("lm_head.weight".into(), Dtype::F32, vec![6, 8], vec![0; 6 * 8 * 4]));
        std::fs::write(tmp.path().join("config.json"), CONFIG).unwrap();
        std::fs::write(tmp.path().join("model.safetensors"), serialize(&ts)).unwrap();
        let m = load_hf_dir(tmp.path(), "x".into()).unwrap();
        assert!(m.tokenizer.is_none());
        assert!(!m.config.tie_word_embeddings);
        assert_eq!(
            m.generation_defaults,
            GenerationDefaults {
                eos_token_ids: vec![2],
                ..Default::default()
            }
        );
    }

    fn load_err(dir: &Path) -> String {
        let e = load_hf_dir(dir, "x".into()).unwrap_err();
        assert!(matches!(e, EngineError::ModelLoad { .. }), "{e}");
        e.to_string()
    }

    #[test]
    fn corrupt_or_unsupported_files_are_named_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("config.json"), CONFIG).unwrap();
        let file = dir.join("model.safetensors");
        let good = serialize(&tensors(5));

        // Header length pointing past the end, garbage JSON header, truncated data, tiny file.
        let mut bad = good.clone();
        bad[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        for bytes in [
            bad,
            [&16u64.to_le_bytes()[..], b"{not json at all"].concat(),
            good[..good.len() - 3].to_vec(),
            vec![1, 2],
        ] {
            std::fs::write(&file, &bytes).unwrap();
            let e = load_err(dir);
            assert!(e.contains("model.safetensors"), "{e}");
        }

        let ints = vec![(
            "model.embed_tokens.weight".to_string(),
            Dtype::I64,
            vec![6, 8],
            vec![0u8; 6 * 8 * 8],
        )];
        std::fs::write(&file, serialize(&ints)).unwrap();
        let e = load_err(dir);
        assert!(e.contains("I64") && e.contains(SUPPORTED_DTYPES), "{e}");

        std::fs::remove_file(&file).unwrap();
        assert!(load_err(dir).contains("no *.safetensors"));
        std::fs::remove_file(dir.join("config.json")).unwrap();
        assert!(load_err(dir).contains("config.json"));
    }

    #[test]
    fn index_problems_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_dir(dir, &tensors(6));
        std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
        assert!(load_err(dir).contains("model-00002-of-00002.safetensors is missing"));

        // The same tensor in two shards.
        let ts = tensors(6);
        write_dir(dir, &ts);
        std::fs::write(dir.join("model-00002-of-00002.safetensors"), serialize(&ts)).unwrap();
        assert!(load_err(dir).contains("more than one weight file"));

        let index = r#"{"weight_map": {"a": "../escape.safetensors"}}"#;
        std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
        assert!(load_err(dir).contains("not a file in the model directory"));
    }
}
