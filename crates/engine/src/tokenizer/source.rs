//! Where a tokenizer comes from: GGUF metadata (`tokenizer.ggml.*`) or HF files. Loaders produce this; the
//! tokenizer module builds a `tokenizers::Tokenizer` from it.

use std::path::PathBuf;

/// The `tokenizer.ggml.*` keys of a GGUF file, read by the GGUF loader.
#[derive(Clone, Debug, Default)]
pub struct GgufTokenizerData {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name ("smollm", "llama-bpe", "qwen2", ...).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    /// SentencePiece scores (llama model); empty for gpt2.
    pub scores: Vec<f32>,
    /// "a b" merge rules (gpt2 model).
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece "llama" model): prefix the first word with a space.
    /// `None` when the key is absent; llama.cpp then defaults to true for SentencePiece vocabularies.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

#[derive(Clone, Debug)]
pub enum TokenizerSource {
    Gguf(GgufTokenizerData),
    /// An HF model directory's `tokenizer.json` and (optional) `tokenizer_config.json`.
    HfFiles {
        tokenizer_json: PathBuf,
        tokenizer_config_json: Option<PathBuf>,
    },
}
