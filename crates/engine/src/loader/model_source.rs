//! Model spec -> a file or directory to load: "" (the default model), a `.gguf` file, an HF model directory, or
//! an HF repo id `org/name` looked up in the HF hub cache (`models--org--name/snapshots/<rev>/`, the layout
//! `huggingface_hub` and `hf-hub` share) and, with the `hub` feature and `HF_HUB_OFFLINE` unset, downloaded.
//!
//! Env lookups happen only in the `*_dir`/`default_model_path` functions; everything below them takes paths
//! as arguments so tests can point at fake caches without touching process env.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

use super::ModelFormat;

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A resolved spec.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedSource {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub name: String,
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key).filter(|v| !v.is_empty()).map(PathBuf::from)
}

pub(crate) fn home_dir() -> PathBuf {
    env_path("HOME")
        .or_else(|| env_path("USERPROFILE"))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// pagedllm's cache: `$PAGEDLLM_CACHE_DIR`, else `$XDG_CACHE_HOME/pagedllm`, else `~/.cache/pagedllm`.
pub fn cache_dir() -> PathBuf {
    env_path("PAGEDLLM_CACHE_DIR")
        .or_else(|| env_path("XDG_CACHE_HOME").map(|p| p.join("pagedllm")))
        .unwrap_or_else(|| home_dir().join(".cache").join("pagedllm"))
}

/// `$PAGEDLLM_MODEL_PATH`, else `<cache_dir>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn default_model_path() -> PathBuf {
    env_path("PAGEDLLM_MODEL_PATH").unwrap_or_else(|| cache_dir().join("models").join(DEFAULT_MODEL_FILE))
}

/// The HF hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache_dir() -> PathBuf {
    env_path("HF_HUB_CACHE")
        .or_else(|| env_path("HF_HOME").map(|p| p.join("hub")))
        .unwrap_or_else(|| home_dir().join(".cache").join("huggingface").join("hub"))
}

fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Resolves a spec using the process environment.
pub fn resolve(spec: &str) -> Result<ResolvedSource> {
    let spec = spec.trim();
    if spec.is_empty() {
        return resolve_default(&default_model_path());
    }
    let path = match spec.strip_prefix("~/") {
        Some(rest) => home_dir().join(rest),
        None => PathBuf::from(spec),
    };
    if path.exists() {
        return resolve_path(&path);
    }
    if looks_like_repo_id(spec) {
        let cache = hf_hub_cache_dir();
        if let Some(snapshot) = resolve_repo_in_cache(&cache, spec) {
            return resolve_snapshot(&snapshot, spec);
        }
        if hub_offline() {
            return Err(EngineError::ModelNotFound(format!(
                "`{spec}` is not a path and not in the HF cache {} (HF_HUB_OFFLINE is set, so it was not downloaded)",
                cache.display()
            )));
        }
        return download(&cache, spec);
    }
    Err(EngineError::ModelNotFound(format!("{} does not exist", path.display())))
}

/// The default model at `path`; its absence tells the user how to fetch it.
pub fn resolve_default(path: &Path) -> Result<ResolvedSource> {
    if !path.exists() {
        return Err(EngineError::ModelNotFound(format!(
            "the default model {} is not there; run `npm run fetch-model` to download it (or set PAGEDLLM_MODEL_PATH)",
            path.display()
        )));
    }
    resolve_path(path)
}

#[cfg(feature = "hub")]
fn download(cache: &Path, repo_id: &str) -> Result<ResolvedSource> {
    let snapshot = super::hub_download::download_repo(cache, repo_id)?;
    resolve_snapshot(&snapshot, repo_id)
}

#[cfg(not(feature = "hub"))]
fn download(cache: &Path, repo_id: &str) -> Result<ResolvedSource> {
    Err(EngineError::ModelNotFound(format!(
        "`{repo_id}` is not a path and not in the HF cache {} (built without the `hub` feature, so it was not downloaded)",
        cache.display()
    )))
}

/// `org/name`: exactly one slash, both parts non-empty, HF's allowed characters, and not a model file name (a
/// mistyped `dir/model.gguf` should be reported as a missing path, not looked up on the Hub).
fn looks_like_repo_id(spec: &str) -> bool {
    if [".gguf", ".safetensors", ".json"].iter().any(|ext| spec.ends_with(ext)) {
        return false;
    }
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(spec.split_once('/'), Some((org, name)) if ok(org) && ok(name))
}

/// The snapshot directory of `repo_id` in an HF hub cache: the commit named by `refs/main`, else the only or most
/// recently modified snapshot. `None` when the repo is not cached.
pub fn resolve_repo_in_cache(cache_root: &Path, repo_id: &str) -> Option<PathBuf> {
    let repo_dir = cache_root.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshots = repo_dir.join("snapshots");
    if let Ok(commit) = std::fs::read_to_string(repo_dir.join("refs").join("main")) {
        let dir = snapshots.join(commit.trim());
        if !commit.trim().is_empty() && dir.is_dir() {
            return Some(dir);
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// A cached or downloaded snapshot: an HF directory if it has config.json, else its single `.gguf` file.
fn resolve_snapshot(snapshot: &Path, repo_id: &str) -> Result<ResolvedSource> {
    let mut resolved = resolve_dir(snapshot)?;
    resolved.name = repo_id.to_string();
    Ok(resolved)
}

/// An existing path: a GGUF file, or a directory (HF model directory, or a folder holding exactly one `.gguf`).
pub fn resolve_path(path: &Path) -> Result<ResolvedSource> {
    if path.is_dir() {
        return resolve_dir(path);
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if file_name.ends_with(".safetensors") || file_name == "config.json" {
        if let Some(parent) = path.parent().filter(|p| p.join("config.json").is_file()) {
            return resolve_dir(parent);
        }
    }
    // Anything else that is a file is read as GGUF; the parser reports a non-GGUF file by its magic bytes.
    Ok(ResolvedSource {
        path: path.to_path_buf(),
        format: ModelFormat::Gguf,
        name: gguf_display_name(&file_name),
    })
}

fn resolve_dir(dir: &Path) -> Result<ResolvedSource> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.join("config.json").is_file() {
        return Ok(ResolvedSource {
            path: dir.to_path_buf(),
            format: ModelFormat::HfSafetensors,
            name,
        });
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::Io {
            context: format!("listing {}", dir.display()),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => resolve_path(one),
        [] => Err(EngineError::load(
            dir.display(),
            "directory has neither config.json nor a .gguf file",
        )),
        many => Err(EngineError::load(
            dir.display(),
            format!(
                "directory holds several .gguf files ({}); pass the one to load",
                many.iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// `SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`: drops the extension and a trailing quant tag.
fn gguf_display_name(file_name: &str) -> String {
    let stem = file_name.strip_suffix(".gguf").unwrap_or(file_name);
    let is_quant_tag = |t: &str| {
        let upper = t.to_ascii_uppercase();
        (upper.starts_with('Q') || upper.starts_with("IQ") || upper.starts_with('F') || upper.starts_with("BF"))
            && t.chars().any(|c| c.is_ascii_digit())
            && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match stem.rsplit_once(['.', '-']) {
        Some((base, tag)) if !base.is_empty() && is_quant_tag(tag) => base.to_string(),
        _ => stem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"{}").unwrap();
    }

    #[test]
    fn repo_in_cache_prefers_refs_main_then_newest_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--HuggingFaceTB--SmolLM2-135M-Instruct");
        touch(&repo.join("snapshots/aaa/config.json"));
        touch(&repo.join("snapshots/bbb/config.json"));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "aaa\n").unwrap();
        let id = "HuggingFaceTB/SmolLM2-135M-Instruct";
        assert_eq!(resolve_repo_in_cache(tmp.path(), id), Some(repo.join("snapshots/aaa")));

        // A stale ref falls back to the newest snapshot.
        std::fs::write(repo.join("refs/main"), "gone").unwrap();
        let newer = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::open(repo.join("snapshots/bbb"))
            .unwrap()
            .set_modified(newer)
            .unwrap();
        assert_eq!(resolve_repo_in_cache(tmp.path(), id), Some(repo.join("snapshots/bbb")));

        assert_eq!(resolve_repo_in_cache(tmp.path(), "other/model"), None);
        let r = resolve_snapshot(&repo.join("snapshots/aaa"), id).unwrap();
        assert_eq!((r.format, r.name.as_str()), (ModelFormat::HfSafetensors, id));
    }

    #[test]
    fn snapshot_with_one_gguf_resolves_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        touch(&tmp.path().join("snap/Model-Q8_0.gguf"));
        let r = resolve_snapshot(&tmp.path().join("snap"), "org/Model-GGUF").unwrap();
        assert_eq!(r.format, ModelFormat::Gguf);
        assert_eq!(r.path, tmp.path().join("snap/Model-Q8_0.gguf"));
        touch(&tmp.path().join("snap/Model-Q4_K_M.gguf"));
        let e = resolve_snapshot(&tmp.path().join("snap"), "org/Model-GGUF")
            .unwrap_err()
            .to_string();
        assert!(e.contains("several .gguf") && e.contains("Model-Q4_K_M.gguf"), "{e}");
    }

    #[test]
    fn missing_paths_are_model_not_found_naming_them() {
        let tmp = tempfile::tempdir().unwrap();
        for missing in [tmp.path().join("nope.gguf"), tmp.path().join("a/b/c")] {
            match resolve(missing.to_str().unwrap()) {
                Err(EngineError::ModelNotFound(m)) => assert!(m.contains(missing.to_str().unwrap()), "{m}"),
                other => panic!("expected ModelNotFound, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_default_model_says_how_to_fetch_it() {
        let missing = Path::new("/nonexistent/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        match resolve_default(missing) {
            Err(EngineError::ModelNotFound(m)) => {
                assert!(
                    m.contains(missing.to_str().unwrap()) && m.contains("npm run fetch-model"),
                    "{m}"
                )
            }
            other => panic!("expected ModelNotFound, got {other:?}"),
        }
    }

    #[test]
    fn repo_id_shape() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(looks_like_repo_id("Qwen/Qwen2.5-0.5B-Instruct"));
        for bad in [
            "model.gguf",
            "models/x.gguf",
            "dir/model.safetensors",
            "/abs/path",
            "a/b/c",
            "./x",
            "org/",
            "org/na me",
            "../x",
        ] {
            assert!(!looks_like_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn display_names() {
        assert_eq!(
            gguf_display_name("SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct"
        );
        assert_eq!(
            gguf_display_name("Llama-3.2-1B-Instruct-Q4_K_M.gguf"),
            "Llama-3.2-1B-Instruct"
        );
        assert_eq!(
            gguf_display_name("qwen2-0_5b-instruct-fp16.gguf"),
            "qwen2-0_5b-instruct"
        );
        assert_eq!(gguf_display_name("tiny.gguf"), "tiny");
        assert_eq!(gguf_display_name("model-135M.gguf"), "model-135M");
    }

    #[test]
    fn existing_paths_resolve_by_kind() {
        let tmp = tempfile::tempdir().unwrap();
        touch(&tmp.path().join("hf/config.json"));
        touch(&tmp.path().join("hf/model.safetensors"));
        let r = resolve_path(&tmp.path().join("hf")).unwrap();
        assert_eq!((r.format, r.name.as_str()), (ModelFormat::HfSafetensors, "hf"));
        assert_eq!(resolve_path(&tmp.path().join("hf/model.safetensors")).unwrap(), r);
        touch(&tmp.path().join("m.Q8_0.gguf"));
        let r = resolve_path(&tmp.path().join("m.Q8_0.gguf")).unwrap();
        assert_eq!((r.format, r.name.as_str()), (ModelFormat::Gguf, "m"));
        std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
        assert!(resolve_path(&tmp.path().join("empty")).is_err());
    }
}
