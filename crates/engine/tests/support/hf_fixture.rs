//! What the HF-reference tests share (`parity_hf.rs`, `beam_search.rs`): whether the default model is there,
//! loading a committed fixture made by a `scripts/make_*_reference.py` / `make_parity_fixture.py` run, and
//! reading its token id lists.
//!
//! The default model is fetched by `npm install`; without it these tests are skipped locally, but under CI (`CI`
//! set) its absence fails the test, so CI can never pass vacuously.

use std::path::Path;

/// Whether the default model file exists; panics under CI when it does not.
pub fn default_model_present() -> bool {
    let path = pagedllm_engine::loader::default_model_path();
    if Path::new(&path).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "default model missing at {} under CI",
        path.display()
    );
    eprintln!(
        "skipping: default model not found at {} (run `npm run fetch-model`)",
        path.display()
    );
    false
}

/// A fixture of `crates/engine/tests/fixtures/`, parsed.
pub fn load(file_name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file_name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array of token ids, got {v}"))
        .iter()
        .map(|x| x.as_u64().expect("a token id") as u32)
        .collect()
}
