//! The engine's tokenizer: a `tokenizers::Tokenizer` (built from GGUF metadata or loaded from HF files) plus the
//! facts the engine and chat templates need (BOS/EOS ids and strings, which ids are special, the chat template).
//!
//! BOS/EOS policy, matching what each source's reference implementation does:
//! - GGUF: the built tokenizer has no post-processor; `encode(.., add_special_tokens=true)` prepends BOS when
//!   `tokenizer.ggml.add_bos_token` is set and appends EOS when `add_eos_token` is (llama.cpp's `llama_tokenize`).
//! - HF files: a `tokenizer.json` post-processor (e.g. Llama's TemplateProcessing) decides; if there is none, the
//!   `add_bos_token`/`add_eos_token` flags of `tokenizer_config.json` (default false) are applied the same way.
//!
//! Immutable after construction, hence `Send + Sync`; share it as `Arc<Tokenizer>`.

use std::collections::HashSet;

use super::gguf_tokenizer::build_gguf_tokenizer;
use super::hf_config::load_hf_tokenizer_config;
use super::source::TokenizerSource;
use crate::error::{EngineError, Result};

/// Loads a `tokenizer.json`. The `tokenizers` crate unwraps some inner deserialization results (a malformed
/// `decoder` section panics, found by `reader_fuzz_tests`), so the text is first checked to be JSON at all and the
/// load runs under `catch_unwind`: a corrupt file is a `Tokenizer` error, never a panic.
fn load_tokenizer_json(path: &std::path::Path) -> Result<tokenizers::Tokenizer> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| tok_err(format!("cannot read {shown}: {e}")))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| tok_err(format!("cannot load {shown}: invalid JSON: {e}")))?;
    match std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>()) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(tok_err(format!("cannot load {shown}: {e}"))),
        Err(_) => Err(tok_err(format!("cannot load {shown}: the tokenizers library rejected it (malformed section)"))),
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    /// Add BOS/EOS ourselves when asked for special tokens (false when a post-processor does it).
    add_bos: bool,
    add_eos: bool,
    special_ids: HashSet<u32>,
    chat_template: Option<String>,
}

fn tok_err(message: impl Into<String>) -> EngineError {
    EngineError::Tokenizer(message.into())
}

impl Tokenizer {
    pub fn from_source(source: &TokenizerSource) -> Result<Self> {
        match source {
            TokenizerSource::Gguf(data) => {
                let inner = build_gguf_tokenizer(data)?;
                let check = |name: &str, id: Option<u32>| match id {
                    Some(id) if id as usize >= data.tokens.len() => Err(tok_err(format!(
                        "tokenizer.ggml.{name}_token_id {id} is outside the vocabulary of {} tokens",
                        data.tokens.len()
                    ))),
                    _ => Ok(id),
                };
                Ok(Self::assemble(
                    inner,
                    check("bos", data.bos_token_id)?,
                    check("eos", data.eos_token_id)?,
                    data.add_bos_token,
                    data.add_eos_token,
                    data.chat_template.clone(),
                ))
            }
            TokenizerSource::HfFiles {
                tokenizer_json,
                tokenizer_config_json,
            } => {
                let inner = load_tokenizer_json(tokenizer_json)?;
                let config = load_hf_tokenizer_config(tokenizer_config_json.as_deref(), tokenizer_json)?;
                let id_of = |token: &Option<String>, what: &str| -> Result<Option<u32>> {
                    token
                        .as_deref()
                        .map(|t| {
                            inner.token_to_id(t).ok_or_else(|| {
                                tok_err(format!(
                                    "{what} {t:?} from tokenizer_config.json is not in the vocabulary"
                                ))
                            })
                        })
                        .transpose()
                };
                let bos = id_of(&config.bos_token, "bos_token")?;
                let eos = id_of(&config.eos_token, "eos_token")?;
                let manual = inner.get_post_processor().is_none();
                let add_bos = manual && config.add_bos_token.unwrap_or(false);
                let add_eos = manual && config.add_eos_token.unwrap_or(false);
                Ok(Self::assemble(inner, bos, eos, add_bos, add_eos, config.chat_template))
            }
        }
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        bos_token_id: Option<u32>,
        eos_token_id: Option<u32>,
        add_bos: bool,
        add_eos: bool,
        chat_template: Option<String>,
    ) -> Self {
        // Ids, not distinct spellings, size the embedding: max id + 1 (the crate's count dedups strings).
        let vocab_size = inner.get_vocab(true).values().max().map_or(0, |&max| max as usize + 1);
        let special_ids = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        Self {
            inner,
            vocab_size,
            bos_token_id,
            eos_token_id,
            add_bos: add_bos && bos_token_id.is_some(),
            add_eos: add_eos && eos_token_id.is_some(),
            special_ids,
            chat_template,
        }
    }

    /// Token ids of `text`. Special-token spellings in `text` (e.g. "<|im_start|>") always map to their ids, as in
    /// HF and llama.cpp with `parse_special`; `add_special_tokens` adds BOS/EOS per the source's policy.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| tok_err(format!("cannot encode text: {e}")))?;
        let body = encoding.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_special_tokens && self.add_bos {
            ids.extend(self.bos_token_id);
        }
        ids.extend_from_slice(body);
        if add_special_tokens && self.add_eos {
            ids.extend(self.eos_token_id);
        }
        Ok(ids)
    }

    /// Text of `ids`. An id outside the vocabulary is an error (the underlying crate would silently drop it).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(tok_err(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.vocab_size
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err(format!("cannot decode tokens: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    /// The vocabulary spelling of `id` (byte-level or `▁` form, not decoded text).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    /// The raw bytes `id` stands for (a byte-level token may be part of a UTF-8 character; see [`token_bytes`]).
    ///
    /// [`token_bytes`]: super::token_bytes
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        let decoded = self.decode(&[id], false)?;
        Ok(super::token_bytes::token_bytes(
            &decoded,
            self.id_to_token(id).as_deref(),
        ))
    }
    /// Whether `id` is a special (control) token, i.e. dropped by `decode(.., skip_special_tokens=true)`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }
    /// The underlying `tokenizers` tokenizer (its decoder and added tokens tell `structured::token_env` how to
    /// spell each token as bytes).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// BOS as text, for chat templates' `bos_token` variable.
    pub fn bos_token(&self) -> Option<String> {
        self.bos_token_id.and_then(|id| self.id_to_token(id))
    }
    /// EOS as text, for chat templates' `eos_token` variable.
    pub fn eos_token(&self) -> Option<String> {
        self.eos_token_id.and_then(|id| self.id_to_token(id))
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::GgufTokenizerData;

    fn small_gguf() -> GgufTokenizerData {
        GgufTokenizerData {
            model: "gpt2".into(),
            pre: Some("gpt2".into()),
            tokens: ["<s>", "</s>", "h", "i", "hi", "Ġ", "Ġhi"].map(String::from).to_vec(),
            token_types: vec![3, 3, 1, 1, 1, 1, 1],
            merges: vec!["h i".into(), "Ġ hi".into()],
            bos_token_id: Some(0),
            eos_token_id: Some(1),
            add_bos_token: true,
            chat_template: Some("{{ bos_token }}{{ messages[0].content }}".into()),
            ..Default::default()
        }
    }

    #[test]
    fn gguf_add_bos_token_is_honoured() {
        let tok = Tokenizer::from_source(&TokenizerSource::Gguf(small_gguf())).unwrap();
        assert_eq!(tok.encode("hi hi</s>", true).unwrap(), vec![0, 4, 6, 1]);
        assert_eq!(tok.encode("hi hi", false).unwrap(), vec![4, 6]);
        assert_eq!(tok.decode(&[0, 4, 6, 1], true).unwrap(), "hi hi");
        assert_eq!((tok.bos_token().as_deref(), tok.vocab_size()), (Some("<s>"), 7));
        let mut bad = small_gguf();
        bad.eos_token_id = Some(99);
        assert!(Tokenizer::from_source(&TokenizerSource::Gguf(bad))
            .unwrap_err()
            .to_string()
            .contains("99"));
    }

    #[test]
    fn hf_files_load_with_config() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer_json = dir.path().join("tokenizer.json");
        build_gguf_tokenizer(&small_gguf())
            .unwrap()
            .save(&tokenizer_json, false)
            .unwrap();
        let config = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &config,
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": true, "chat_template": "T"}"#,
        )
        .unwrap();
        let source = TokenizerSource::HfFiles {
            tokenizer_json: tokenizer_json.clone(),
            tokenizer_config_json: Some(config),
        };
        let tok = Tokenizer::from_source(&source).unwrap();
        assert_eq!(
            (tok.bos_token_id(), tok.eos_token_id(), tok.chat_template()),
            (Some(0), Some(1), Some("T"))
        );
        // No post-processor in tokenizer.json, so the config's add_bos_token applies.
        assert_eq!(tok.encode("hi", true).unwrap(), vec![0, 4]);
        assert!(tok.is_special(0) && !tok.is_special(4));
        let missing = TokenizerSource::HfFiles {
            tokenizer_json: dir.path().join("nope.json"),
            tokenizer_config_json: None,
        };
        assert!(matches!(Tokenizer::from_source(&missing), Err(EngineError::Tokenizer(m)) if m.contains("nope.json")));
    }
}
