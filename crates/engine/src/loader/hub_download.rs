//! Downloads an HF repo's safetensors checkpoint into the HF hub cache with `hf-hub`'s blocking (ureq) API, so
//! the result lands in the same `models--org--name/snapshots/<commit>/` layout `resolve_repo_in_cache` reads.
//! Only the files a safetensors model needs are fetched (not every file of the repo).
//!
//! Not exercised by tests: the build machines have no network access.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};

use crate::error::{EngineError, Result};

/// Fetched when present; their absence is not an error (tokenizer-less checkpoints need token-id prompts).
const OPTIONAL_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

fn not_found(repo_id: &str, what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::ModelNotFound(format!(
        "`{repo_id}` is not a local path or in the HF cache, and downloading its {what} from the Hugging Face Hub failed: {e}"
    ))
}

/// Downloads `repo_id` (revision `main`) and returns its snapshot directory.
pub fn download_repo(cache_root: &Path, repo_id: &str) -> Result<PathBuf> {
    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(cache_root.to_path_buf())
        .with_progress(false)
        .with_retries(2);
    // hf-hub reads only the `$HF_HOME/token` file; huggingface_hub also honours `HF_TOKEN`, which wins.
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        builder = builder.with_token(Some(token.trim().to_string()));
    }
    let api = builder.build().map_err(|e| not_found(repo_id, "the repository", e))?;
    let repo = api.model(repo_id.to_string());
    // config.json first: a repo without it is not a model we can load, and fetching it proves the repo exists.
    let config = repo
        .get("config.json")
        .map_err(|e| not_found(repo_id, "config.json", e))?;
    let snapshot = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| EngineError::Internal("config.json has no parent".into()))?;
    for file in OPTIONAL_FILES {
        // A missing optional file is a 404; anything else (network) will surface on the weights below.
        let _ = repo.get(file);
    }
    for shard in weight_files(&repo, repo_id)? {
        repo.get(&shard).map_err(|e| not_found(repo_id, &shard, e))?;
    }
    Ok(snapshot)
}

/// `model.safetensors.index.json`'s shards, else `model.safetensors`.
fn weight_files(repo: &ApiRepo, repo_id: &str) -> Result<Vec<String>> {
    let Ok(index) = repo.get("model.safetensors.index.json") else {
        return Ok(vec!["model.safetensors".to_string()]);
    };
    let text = std::fs::read_to_string(&index).map_err(|e| EngineError::Io {
        context: format!("reading {}", index.display()),
        source: e,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::load(index.display(), format!("invalid index: {e}")))?;
    let shards: BTreeSet<String> = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| m.values().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if shards.is_empty() {
        return Err(EngineError::load(
            index.display(),
            format!("`{repo_id}`'s index names no weight files"),
        ));
    }
    Ok(shards.into_iter().collect())
}
