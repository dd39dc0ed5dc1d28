//! The vocabulary as llguidance sees it: every token id spelled as the exact bytes it adds to the output, in a
//! `toktrie::TokTrie`, behind the `TokenizerEnv` trait llguidance's parser factory takes.
//!
//! Spelling comes from the vocabulary pieces, never from decoding a token alone: a SentencePiece decoder strips the
//! leading space of the first token (`Strip` in the GGUF decoder, HF's `add_dummy_prefix` undo), so decoding
//! "▁hello" alone says "hello" and a grammar would let the model glue words together. The rules are those of
//! llguidance's `toktrie_hf_tokenizers::ByteTokenizer` (which we do not depend on because it pins another major
//! version of `tokenizers`):
//! - byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen): each piece char maps back to one byte through GPT-2's table;
//! - SentencePiece (byte fallback and/or a `Replace("▁", " ")` decoder): `<0xNN>` is byte NN, `▁` is a space;
//! - special tokens (control tokens such as `<|im_end|>`) are `0xFF` + their name, so grammar text can never
//!   produce them by accident; logits rows wider than the vocabulary get unreachable placeholders.

use std::sync::Arc;

use tokenizers::DecoderWrapper;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{EngineError, Result};
use crate::tokenizer::token_bytes::unicode_to_byte;
use crate::tokenizer::Tokenizer;

/// How the vocabulary spells bytes, read off the tokenizer's decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    ByteLevel,
    /// SentencePiece: `space` stands for ' ' (usually '▁'), `<0xNN>` pieces are raw bytes.
    SentencePiece { space: char },
}

fn detect(decoder: &DecoderWrapper, found: &mut Option<Spelling>) {
    match decoder {
        DecoderWrapper::ByteLevel(_) => *found = Some(Spelling::ByteLevel),
        DecoderWrapper::ByteFallback(_) => {
            if found.is_none() {
                *found = Some(Spelling::SentencePiece { space: '▁' });
            }
        }
        DecoderWrapper::Metaspace(m) => *found = Some(Spelling::SentencePiece { space: m.get_replacement() }),
        DecoderWrapper::Replace(r) => {
            // `Replace` keeps its pattern private; its serde form is {"pattern": {"String": "▁"}, "content": " "}.
            let v = serde_json::to_value(r).unwrap_or_default();
            let single = v["pattern"]["String"].as_str().and_then(|p| {
                let mut chars = p.chars();
                chars.next().filter(|_| chars.next().is_none())
            });
            if let (Some(space), Some(" ")) = (single, v["content"].as_str()) {
                *found = Some(Spelling::SentencePiece { space });
            }
        }
        DecoderWrapper::Sequence(seq) => {
            for d in seq.get_decoders() {
                detect(d, found);
            }
        }
        _ => {}
    }
}

/// The spelling rule of `tokenizer`, or an error when its decoder is neither byte-level nor SentencePiece.
pub fn spelling_of(tokenizer: &Tokenizer) -> Result<Spelling> {
    let mut found = None;
    if let Some(d) = tokenizer.hf().get_decoder() {
        detect(d, &mut found);
    }
    found.ok_or_else(|| {
        EngineError::Unsupported(
            "structured outputs need a byte-level BPE or SentencePiece tokenizer; this model's decoder is neither"
                .into(),
        )
    })
}

fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

/// The bytes of every token id below `n_vocab` (the logits row width, at least the tokenizer's vocabulary).
pub fn token_bytes_table(tokenizer: &Tokenizer, n_vocab: usize) -> Result<Vec<Vec<u8>>> {
    let spelling = spelling_of(tokenizer)?;
    let hf = tokenizer.hf();
    let added = hf.get_added_tokens_decoder();
    let byte_of = unicode_to_byte();
    let mut table = Vec::with_capacity(n_vocab.max(tokenizer.vocab_size()));
    for id in 0..n_vocab.max(tokenizer.vocab_size()) as u32 {
        let special_name = |name: &str| {
            let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            bytes.extend_from_slice(name.as_bytes());
            bytes
        };
        let bytes = match (added.get(&id), hf.id_to_token(id)) {
            // Control tokens, and added `<...>` tokens (llguidance's rule: they are never plain text).
            (Some(t), _) if t.special || (t.content.starts_with('<') && t.content.ends_with('>')) => {
                special_name(&t.content)
            }
            (Some(t), _) => t.content.as_bytes().to_vec(),
            (None, Some(piece)) => match spelling {
                Spelling::ByteLevel => match piece.chars().map(|c| byte_of.get(&c).copied()).collect() {
                    Some(bytes) => bytes,
                    // Not spellable in the byte table: keep it out of reach of every grammar.
                    None => special_name(&piece),
                },
                Spelling::SentencePiece { space } => match byte_fallback(&piece) {
                    Some(b) => vec![b],
                    None if tokenizer.is_special(id) || (piece.starts_with('<') && piece.ends_with('>')) => {
                        special_name(&piece)
                    }
                    None => piece.replace(space, " ").into_bytes(),
                },
            },
            (None, None) => special_name(&format!("<[{id}]>")),
        };
        table.push(bytes);
    }
    Ok(table)
}

/// `TokenizerEnv` over our tokenizer: the trie above, and canonical tokenization for byte-level vocabularies
/// (SentencePiece's encoder would prepend a word-start space to every fragment, so it tokenizes greedily instead).
pub struct EngineTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
    spelling: Spelling,
}

impl EngineTokEnv {
    /// `n_vocab` is the model's logits width; `eos_token_ids` the ids that end a sequence (the grammar allows them
    /// once it is complete).
    pub fn new(tokenizer: Arc<Tokenizer>, n_vocab: usize, eos_token_ids: &[u32]) -> Result<Self> {
        let spelling = spelling_of(&tokenizer)?;
        let words = token_bytes_table(&tokenizer, n_vocab)?;
        let eos = eos_token_ids
            .first()
            .copied()
            .or(tokenizer.eos_token_id())
            .ok_or_else(|| EngineError::Unsupported("structured outputs need an EOS token; this model has none".into()))?;
        let info = TokRxInfo::new(words.len() as u32, eos);
        let mut trie = TokTrie::from(&info, &words);
        let valid: Vec<u32> = eos_token_ids.iter().copied().filter(|&t| (t as usize) < words.len()).collect();
        if valid.len() > 1 {
            trie = trie.with_eos_tokens(&valid);
        }
        Ok(Self {
            trie,
            tokenizer,
            spelling,
        })
    }

    pub fn into_tok_env(self) -> TokEnv {
        Arc::new(self)
    }
}

impl TokenizerEnv for EngineTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match (self.spelling, std::str::from_utf8(s)) {
            (Spelling::ByteLevel, Ok(text)) => match self.tokenizer.encode(text, false) {
                Ok(ids) => ids,
                Err(_) => self.trie.greedy_tokenize(s),
            },
            _ => self.trie.greedy_tokenize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::reference_tests::{smollm2, spm_synthetic};

    #[test]
    fn sentencepiece_word_starts_keep_their_space() {
        let (tok, _) = spm_synthetic();
        assert!(matches!(spelling_of(&tok).unwrap(), Spelling::SentencePiece { space: '▁' }));
        let table = token_bytes_table(&tok, tok.vocab_size()).unwrap();
        let mut word_starts = 0;
        for id in 0..tok.vocab_size() as u32 {
            let piece = tok.id_to_token(id).unwrap();
            if let Some(rest) = piece.strip_prefix('▁') {
                if !tok.is_special(id) {
                    // The piece "▁ab" adds " ab" to the text, whatever decoding it alone would say.
                    assert_eq!(table[id as usize], format!(" {}", rest.replace('▁', " ")).into_bytes(), "{piece}");
                    word_starts += 1;
                }
            }
            if let Some(b) = byte_fallback(&piece) {
                assert_eq!(table[id as usize], vec![b]);
            }
        }
        assert!(word_starts > 0, "the fixture has word-start pieces");
        // BOS / EOS are control tokens: unreachable from text.
        assert_eq!(table[1][0], TokTrie::SPECIAL_TOKEN_MARKER);
        assert_eq!(table[2][0], TokTrie::SPECIAL_TOKEN_MARKER);
    }

    #[test]
    fn byte_level_pieces_spell_what_encoding_reads() {
        let Some(tok) = smollm2() else {
            eprintln!("skipped: the default model is not downloaded");
            return;
        };
        assert_eq!(spelling_of(&tok).unwrap(), Spelling::ByteLevel);
        let table = token_bytes_table(&tok, tok.vocab_size()).unwrap();
        for text in [" hello world", "{\"a\": 1}", "naïve 🌟", "\n\n  x"] {
            let ids = tok.encode(text, false).unwrap();
            let joined: Vec<u8> = ids.iter().flat_map(|&id| table[id as usize].clone()).collect();
            assert_eq!(joined, text.as_bytes(), "{text:?}");
        }
        let im_end = tok.token_to_id("<|im_end|>").unwrap();
        assert_eq!(table[im_end as usize][0], TokTrie::SPECIAL_TOKEN_MARKER);
    }

    #[test]
    fn rows_wider_than_the_vocabulary_are_unreachable() {
        let (tok, _) = spm_synthetic();
        let n = tok.vocab_size() + 3;
        let table = token_bytes_table(&tok, n).unwrap();
        assert_eq!(table.len(), n);
        assert!(table[n - 1].starts_with(&[TokTrie::SPECIAL_TOKEN_MARKER]));
    }
}
