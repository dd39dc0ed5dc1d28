//! Builds a `tokenizers::Tokenizer` from a GGUF file's `tokenizer.ggml.*` metadata, following llama.cpp's
//! `llama-vocab.cpp` (which pre-tokenizer a `tokenizer.ggml.pre` name selects) and HF transformers' GGUF
//! conversion (`gguf_tokenizer_mapping.py`: control tokens become special added tokens, user-defined tokens plain
//! added tokens, SentencePiece merges recovered from the scores).
//!
//! Supported `tokenizer.ggml.model` values:
//! - `gpt2`: byte-level BPE. The vocabulary is already spelled in GPT-2's `bytes_to_unicode` alphabet; merges are
//!   "a b" lines. The split regex comes from `tokenizer.ggml.pre` (see [`PRE_TOKENIZERS`]); an unknown name is an
//!   error (rather than silently tokenizing with the wrong regex, which gives plausible but wrong ids). A missing
//!   `pre` key means llama.cpp's "default", which we treat as GPT-2's regex.
//! - `llama`: SentencePiece BPE with `<0xNN>` byte fallback, `▁` (U+2581) for spaces and a prefix space on the
//!   first word when `tokenizer.ggml.add_space_prefix` is true (llama.cpp's default when the key is absent).
//!
//! BOS/EOS are not added here; [`super::Tokenizer::encode`] adds them per `add_bos_token`/`add_eos_token`.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::source::GgufTokenizerData;
use crate::error::{EngineError, Result};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_attr` predecessor enum).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Llama 3's split regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`, HF Llama-3 `tokenizer.json`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a family of `tokenizer.ggml.pre` names splits text before BPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreTokenizerKind {
    /// GPT-2's byte-level regex.
    Gpt2,
    /// Every digit on its own, then GPT-2's regex (llama.cpp's STARCODER/SMOLLM group; SmolLM2's tokenizer.json is
    /// `Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]`).
    DigitsThenGpt2,
    /// Llama 3's regex; llama.cpp also sets `ignore_merges` for this family (whole words found in the vocabulary
    /// skip BPE), as does Llama 3's tokenizer.json.
    Llama3,
    Qwen2,
}

/// `tokenizer.ggml.pre` names we support, grouped as llama.cpp's `llama_vocab::impl::load` groups them.
const PRE_TOKENIZERS: &[(&str, PreTokenizerKind)] = &[
    ("default", PreTokenizerKind::Gpt2),
    ("gpt2", PreTokenizerKind::Gpt2),
    ("gpt-2", PreTokenizerKind::Gpt2),
    ("phi-2", PreTokenizerKind::Gpt2),
    ("roberta-bpe", PreTokenizerKind::Gpt2),
    ("smollm", PreTokenizerKind::DigitsThenGpt2),
    ("starcoder", PreTokenizerKind::DigitsThenGpt2),
    ("refact", PreTokenizerKind::DigitsThenGpt2),
    ("codeshell", PreTokenizerKind::DigitsThenGpt2),
    ("llama3", PreTokenizerKind::Llama3),
    ("llama-v3", PreTokenizerKind::Llama3),
    ("llama-bpe", PreTokenizerKind::Llama3),
    ("falcon3", PreTokenizerKind::Llama3),
    ("pixtral", PreTokenizerKind::Llama3),
    ("dbrx", PreTokenizerKind::Llama3),
    ("smaug-bpe", PreTokenizerKind::Llama3),
    ("qwen2", PreTokenizerKind::Qwen2),
    ("deepseek-r1-qwen", PreTokenizerKind::Qwen2),
];

pub(crate) const SUPPORTED_MODELS: &[&str] = &["gpt2", "llama"];

fn tok_err(message: impl Into<String>) -> EngineError {
    EngineError::Tokenizer(message.into())
}

/// Builds the tokenizer (model, pre-tokenizer, decoder, added tokens) the GGUF metadata describes.
pub(crate) fn build_gguf_tokenizer(data: &GgufTokenizerData) -> Result<tokenizers::Tokenizer> {
    if data.tokens.is_empty() {
        return Err(tok_err("GGUF has no tokenizer.ggml.tokens"));
    }
    if !data.token_types.is_empty() && data.token_types.len() != data.tokens.len() {
        return Err(tok_err(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
            data.token_types.len(),
            data.tokens.len()
        )));
    }
    let mut tokenizer = match data.model.as_str() {
        "gpt2" => build_byte_level_bpe(data)?,
        "llama" => build_sentencepiece_bpe(data)?,
        other => {
            return Err(tok_err(format!(
                "unsupported tokenizer.ggml.model {other:?}; supported: {}",
                SUPPORTED_MODELS.join(", ")
            )))
        }
    };
    add_control_and_user_tokens(&mut tokenizer, data);
    Ok(tokenizer)
}

fn vocab_from_tokens(tokens: &[String]) -> Vocab {
    // A later duplicate spelling wins, as in transformers' `{token: index for index, token in enumerate(tokens)}`.
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect()
}

fn build_bpe(builder: tokenizers::models::bpe::BpeBuilder) -> Result<BPE> {
    builder
        .build()
        .map_err(|e| tok_err(format!("cannot build BPE model from GGUF vocabulary: {e}")))
}

fn build_byte_level_bpe(data: &GgufTokenizerData) -> Result<tokenizers::Tokenizer> {
    let pre_name = data.pre.as_deref().unwrap_or("default");
    let kind = PRE_TOKENIZERS
        .iter()
        .find(|(name, _)| *name == pre_name)
        .map(|(_, kind)| *kind)
        .ok_or_else(|| {
            let names: Vec<&str> = PRE_TOKENIZERS.iter().map(|(name, _)| *name).collect();
            tok_err(format!(
                "unsupported tokenizer.ggml.pre {pre_name:?}; supported: {}",
                names.join(", ")
            ))
        })?;
    let merges = data
        .merges
        .iter()
        .map(|line| {
            line.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    tok_err(format!(
                        "malformed tokenizer.ggml.merges entry {line:?} (expected \"a b\")"
                    ))
                })
        })
        .collect::<Result<Merges>>()?;
    let bpe = build_bpe(
        BPE::builder()
            .vocab_and_merges(vocab_from_tokens(&data.tokens), merges)
            .ignore_merges(kind == PreTokenizerKind::Llama3),
    )?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(kind)?));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    Ok(tokenizer)
}

fn byte_level_pre_tokenizer(kind: PreTokenizerKind) -> Result<PreTokenizerWrapper> {
    let regex_split = |pattern: &str| -> Result<PreTokenizerSequence> {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(format!("bad split regex: {e}")))?;
        Ok(PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ]))
    };
    Ok(match kind {
        PreTokenizerKind::Gpt2 => ByteLevel::new(false, true, true).into(),
        PreTokenizerKind::DigitsThenGpt2 => {
            PreTokenizerSequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        PreTokenizerKind::Llama3 => regex_split(LLAMA3_SPLIT)?.into(),
        PreTokenizerKind::Qwen2 => regex_split(QWEN2_SPLIT)?.into(),
    })
}

fn build_sentencepiece_bpe(data: &GgufTokenizerData) -> Result<tokenizers::Tokenizer> {
    if data.scores.len() != data.tokens.len() {
        return Err(tok_err(format!(
            "tokenizer.ggml.model \"llama\" needs one score per token: {} scores for {} tokens",
            data.scores.len(),
            data.tokens.len()
        )));
    }
    let merges = if data.merges.is_empty() {
        merges_from_scores(&data.tokens, &data.scores)
    } else {
        data.merges
            .iter()
            .filter_map(|line| line.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect()
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab_from_tokens(&data.tokens), merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = data.unknown_token_id.and_then(|id| data.tokens.get(id as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = build_bpe(builder)?;
    let add_prefix = data.add_space_prefix.unwrap_or(true);
    let prepend = if add_prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', prepend, false)));
    let replace = Replace::new("▁", " ").map_err(|e| tok_err(format!("decoder: {e}")))?;
    let mut decoders: Vec<DecoderWrapper> = vec![replace.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// SentencePiece GGUFs carry scores, not merges. Every split of a token into two vocabulary pieces is a merge
/// ranked by the merged token's score (best first; ties by longer left then right piece), exactly as transformers'
/// `generate_merges` orders them, so both produce the same ids.
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Merges {
    let vocab = vocab_from_tokens(tokens);
    let mut candidates: Vec<(String, String, f32, usize, usize)> = Vec::new();
    // transformers iterates `dict(zip(tokens, scores))`: first position of a spelling, last score for it.
    let mut seen = std::collections::HashMap::new();
    let mut order = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        if seen.insert(token.as_str(), score).is_none() {
            order.push(token.as_str());
        }
    }
    for merged in order {
        let score = seen[merged];
        let mut local: Vec<(u32, u32, &str, &str)> = merged
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = merged.split_at(at);
                Some((*vocab.get(left)?, *vocab.get(right)?, left, right))
            })
            .collect();
        local.sort_by_key(|&(l, r, _, _)| (l, r));
        for (_, _, left, right) in local {
            let (ll, rl) = (left.chars().count(), right.chars().count());
            candidates.push((left.to_string(), right.to_string(), score, ll, rl));
        }
    }
    // Stable sort, descending: equal keys keep their order like Python's `sorted(..., reverse=True)`.
    candidates.sort_by(|a, b| {
        (b.2, b.3, b.4)
            .partial_cmp(&(a.2, a.3, a.4))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    candidates.into_iter().map(|(l, r, ..)| (l, r)).collect()
}

/// Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added tokens, so
/// "<|im_start|>" in a prompt is matched whole instead of being split by BPE. In a byte-level vocabulary a control
/// token spelled outside the byte alphabet is a llama.cpp mislabel and is skipped (as transformers does).
fn add_control_and_user_tokens(tokenizer: &mut tokenizers::Tokenizer, data: &GgufTokenizerData) {
    let byte_level = data.model == "gpt2";
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (token, &kind) in data.tokens.iter().zip(&data.token_types) {
        match kind {
            TOKEN_TYPE_CONTROL if !byte_level || token.chars().all(is_byte_level_char) => {
                special.push(AddedToken::from(token.clone(), true).normalized(false))
            }
            TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(token.clone(), false).normalized(false)),
            _ => {}
        }
    }
    // Both tokens already exist in the model's vocabulary, so these calls only register them for whole-token
    // matching and reuse the existing ids.
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&user);
}

/// Whether `c` is one of the 256 characters of GPT-2's `bytes_to_unicode` alphabet.
fn is_byte_level_char(c: char) -> bool {
    let c = c as u32;
    (0x21..=0x7E).contains(&c)
        || (0xA1..=0xAC).contains(&c)
        || (0xAE..=0xFF).contains(&c)
        || (0x100..=0x143).contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2_data(pre: Option<&str>) -> GgufTokenizerData {
        let tokens: Vec<String> = ["a", "b", "ab", "Ġ", "Ġab", "<|end|>", "1", "2", "12"]
            .map(String::from)
            .to_vec();
        GgufTokenizerData {
            model: "gpt2".into(),
            pre: pre.map(String::from),
            token_types: vec![1, 1, 1, 1, 1, 3, 1, 1, 1],
            merges: vec!["a b".into(), "Ġ ab".into(), "1 2".into()],
            tokens,
            ..Default::default()
        }
    }

    #[test]
    fn unknown_model_and_pre_are_errors_listing_supported_names() {
        let mut data = gpt2_data(Some("smollm"));
        data.model = "bert".into();
        let err = build_gguf_tokenizer(&data).unwrap_err().to_string();
        assert!(
            err.contains("\"bert\"") && err.contains("gpt2") && err.contains("llama"),
            "{err}"
        );
        let err = build_gguf_tokenizer(&gpt2_data(Some("mystery-pre")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mystery-pre") && err.contains("smollm") && err.contains("qwen2"),
            "{err}"
        );
    }

    #[test]
    fn digits_split_only_for_digit_pre_tokenizers() {
        let ids = |pre| {
            let tok = build_gguf_tokenizer(&gpt2_data(Some(pre))).unwrap();
            tok.encode("ab ab 12<|end|>", false).unwrap().get_ids().to_vec()
        };
        // gpt2/llama3 keep " 12" together ("Ġ" + "12"); smollm/qwen2 isolate each digit.
        assert_eq!(ids("gpt2"), vec![2, 4, 3, 8, 5]);
        assert_eq!(ids("llama-bpe"), vec![2, 4, 3, 8, 5]);
        assert_eq!(ids("smollm"), vec![2, 4, 3, 6, 7, 5]);
        assert_eq!(ids("qwen2"), vec![2, 4, 3, 6, 7, 5]);
    }

    #[test]
    fn malformed_merge_is_an_error() {
        let mut data = gpt2_data(None);
        data.merges.push("nospace".into());
        assert!(build_gguf_tokenizer(&data).unwrap_err().to_string().contains("nospace"));
    }

    #[test]
    fn byte_level_alphabet_has_256_chars() {
        assert_eq!(
            (0u32..0x200)
                .filter_map(char::from_u32)
                .filter(|&c| is_byte_level_char(c))
                .count(),
            256
        );
    }
}
