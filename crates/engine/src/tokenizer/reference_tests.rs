//! Tests against independent references: ids and renders produced by HF transformers
//! (`scripts/make_tokenizer_fixture.py` writes `crates/engine/tests/fixtures/tokenizer/*.json`).
//!
//! SmolLM2's tokenizer is read from the real GGUF in the model cache with a minimal metadata reader that lives here
//! (tests must not depend on the engine's GGUF loader); without the file those tests print a notice and return.
//! The SentencePiece tests use a small synthetic vocabulary stored in the fixture and always run.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use super::{ChatTemplate, GgufTokenizerData, IncrementalDetokenizer, Tokenizer, TokenizerSource};

const SMOLLM2_EXPECTED: &str = include_str!("../../tests/fixtures/tokenizer/smollm2_expected.json");
const SPM_SYNTHETIC: &str = include_str!("../../tests/fixtures/tokenizer/spm_synthetic.json");

/// GGUF metadata values, as far as tokenizer keys need them.
#[derive(Debug)]
enum Meta {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

fn read_exact<const N: usize>(r: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_string(r: &mut impl Read) -> std::io::Result<String> {
    let len = u64::from_le_bytes(read_exact(r)?) as usize;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn read_value(r: &mut impl Read, kind: u32) -> std::io::Result<Meta> {
    Ok(match kind {
        0 => Meta::Int(u8::from_le_bytes(read_exact(r)?) as i64),
        1 => Meta::Int(i8::from_le_bytes(read_exact(r)?) as i64),
        2 => Meta::Int(u16::from_le_bytes(read_exact(r)?) as i64),
        3 => Meta::Int(i16::from_le_bytes(read_exact(r)?) as i64),
        4 => Meta::Int(u32::from_le_bytes(read_exact(r)?) as i64),
        5 => Meta::Int(i32::from_le_bytes(read_exact(r)?) as i64),
        6 => Meta::Float(f32::from_le_bytes(read_exact(r)?) as f64),
        7 => Meta::Bool(read_exact::<1>(r)?[0] != 0),
        8 => Meta::Str(read_string(r)?),
        9 => {
            let item_kind = u32::from_le_bytes(read_exact(r)?);
            let count = u64::from_le_bytes(read_exact(r)?);
            Meta::Array(
                (0..count)
                    .map(|_| read_value(r, item_kind))
                    .collect::<std::io::Result<_>>()?,
            )
        }
        10 => Meta::Int(u64::from_le_bytes(read_exact(r)?) as i64),
        11 => Meta::Int(i64::from_le_bytes(read_exact(r)?)),
        12 => Meta::Float(f64::from_le_bytes(read_exact(r)?)),
        other => return Err(std::io::Error::other(format!("unknown GGUF value type {other}"))),
    })
}

/// Reads the metadata key/values of a GGUF v2/v3 file (tensor infos and data are not touched).
fn read_gguf_metadata(path: &PathBuf) -> std::io::Result<HashMap<String, Meta>> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    assert_eq!(&read_exact::<4>(&mut r)?, b"GGUF", "not a GGUF file");
    let _version = u32::from_le_bytes(read_exact(&mut r)?);
    let _tensor_count = u64::from_le_bytes(read_exact(&mut r)?);
    let kv_count = u64::from_le_bytes(read_exact(&mut r)?);
    let mut meta = HashMap::new();
    for _ in 0..kv_count {
        let key = read_string(&mut r)?;
        let kind = u32::from_le_bytes(read_exact(&mut r)?);
        meta.insert(key, read_value(&mut r, kind)?);
    }
    Ok(meta)
}

fn gguf_tokenizer_data(meta: &HashMap<String, Meta>) -> GgufTokenizerData {
    let get = |key: &str| meta.get(&format!("tokenizer.{key}"));
    let string = |key: &str| match get(key) {
        Some(Meta::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let int = |key: &str| match get(key) {
        Some(Meta::Int(i)) => Some(*i),
        _ => None,
    };
    let flag = |key: &str| match get(key) {
        Some(Meta::Bool(b)) => Some(*b),
        _ => None,
    };
    let array = |key: &str| match get(key) {
        Some(Meta::Array(items)) => items.as_slice(),
        _ => &[],
    };
    GgufTokenizerData {
        model: string("ggml.model").unwrap_or_default(),
        pre: string("ggml.pre"),
        tokens: array("ggml.tokens")
            .iter()
            .filter_map(|m| if let Meta::Str(s) = m { Some(s.clone()) } else { None })
            .collect(),
        token_types: array("ggml.token_type")
            .iter()
            .filter_map(|m| if let Meta::Int(i) = m { Some(*i as i32) } else { None })
            .collect(),
        scores: array("ggml.scores")
            .iter()
            .filter_map(|m| if let Meta::Float(f) = m { Some(*f as f32) } else { None })
            .collect(),
        merges: array("ggml.merges")
            .iter()
            .filter_map(|m| if let Meta::Str(s) = m { Some(s.clone()) } else { None })
            .collect(),
        bos_token_id: int("ggml.bos_token_id").map(|i| i as u32),
        eos_token_id: int("ggml.eos_token_id").map(|i| i as u32),
        unknown_token_id: int("ggml.unknown_token_id").map(|i| i as u32),
        padding_token_id: int("ggml.padding_token_id").map(|i| i as u32),
        add_bos_token: flag("ggml.add_bos_token").unwrap_or(false),
        add_eos_token: flag("ggml.add_eos_token").unwrap_or(false),
        add_space_prefix: flag("ggml.add_space_prefix"),
        chat_template: string("chat_template"),
    }
}

fn smollm2_path() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// SmolLM2's tokenizer from the real GGUF, loaded once per test binary; `None` (with a notice) without the file.
pub(crate) fn smollm2() -> Option<Arc<Tokenizer>> {
    static TOKENIZER: std::sync::OnceLock<Option<Arc<Tokenizer>>> = std::sync::OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let path = smollm2_path();
            if !path.exists() {
                eprintln!("NOTICE: {} not found; skipping SmolLM2 tokenizer tests", path.display());
                return None;
            }
            let data = gguf_tokenizer_data(&read_gguf_metadata(&path).expect("read GGUF metadata"));
            Some(Arc::new(
                Tokenizer::from_source(&TokenizerSource::Gguf(data)).expect("build SmolLM2 tokenizer"),
            ))
        })
        .clone()
}

pub(crate) fn spm_synthetic() -> (Arc<Tokenizer>, Value) {
    let fixture: Value = serde_json::from_str(SPM_SYNTHETIC).unwrap();
    let strings = |key: &str| -> Vec<String> {
        fixture[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let data = GgufTokenizerData {
        model: "llama".into(),
        tokens: strings("tokens"),
        scores: fixture["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect(),
        token_types: fixture["token_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i32)
            .collect(),
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        unknown_token_id: Some(0),
        add_bos_token: true,
        ..Default::default()
    };
    (
        Arc::new(Tokenizer::from_source(&TokenizerSource::Gguf(data)).unwrap()),
        fixture,
    )
}

fn ids_of(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_encodings_match_transformers() {
    let Some(tok) = smollm2() else { return };
    let fixture: Value = serde_json::from_str(SMOLLM2_EXPECTED).unwrap();
    assert_eq!(tok.vocab_size(), fixture["vocab_size"].as_u64().unwrap() as usize);
    assert_eq!((tok.bos_token_id(), tok.eos_token_id()), (Some(1), Some(2)));
    assert_eq!(
        (tok.bos_token().as_deref(), tok.eos_token().as_deref()),
        (Some("<|im_start|>"), Some("<|im_end|>"))
    );
    for case in fixture["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected = ids_of(&case["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), expected, "encoding {text:?}");
        // SmolLM2's GGUF says add_bos_token = false, so special tokens add nothing.
        assert_eq!(
            tok.encode(text, true).unwrap(),
            expected,
            "encoding {text:?} with special tokens"
        );
        assert_eq!(tok.decode(&expected, false).unwrap(), case["decoded"].as_str().unwrap());
        assert_eq!(
            tok.decode(&expected, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap()
        );
    }
}

#[test]
fn smollm2_special_tokens_and_digits() {
    let Some(tok) = smollm2() else { return };
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(ids.first(), tok.token_to_id("<|im_start|>").as_ref());
    assert_eq!(ids.last(), Some(&2));
    assert!(tok.is_special(1) && tok.is_special(2) && !tok.is_special(ids[1]));
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");
    // Every digit is its own token.
    let digits = tok.encode("9876543210", false).unwrap();
    assert_eq!(digits.len(), 10);
    assert_eq!(tok.id_to_token(digits[0]).as_deref(), Some("9"));
    assert!(tok.decode(&[49_152], false).unwrap_err().to_string().contains("49152"));
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
}

#[test]
fn smollm2_chat_template_matches_transformers() {
    let Some(tok) = smollm2() else { return };
    let fixture: Value = serde_json::from_str(SMOLLM2_EXPECTED).unwrap();
    assert_eq!(tok.chat_template(), fixture["chat_template"].as_str());
    let template = ChatTemplate::new(tok.chat_template().unwrap(), tok.bos_token(), tok.eos_token()).unwrap();
    for case in fixture["renders"].as_array().unwrap() {
        let rendered = template
            .render(
                &case["messages"],
                case["add_generation_prompt"].as_bool().unwrap(),
                None,
            )
            .unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
    }
}

/// The template text works without the model file too (copied from SmolLM2's GGUF / tokenizer_config.json).
#[test]
fn chatml_template_renders_generation_prompt() {
    let fixture: Value = serde_json::from_str(SMOLLM2_EXPECTED).unwrap();
    let template = ChatTemplate::new(fixture["chat_template"].as_str().unwrap(), None, None).unwrap();
    for case in fixture["renders"].as_array().unwrap() {
        let rendered = template
            .render(
                &case["messages"],
                case["add_generation_prompt"].as_bool().unwrap(),
                None,
            )
            .unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
    }
}

#[test]
fn sentencepiece_encodings_match_transformers() {
    let (tok, fixture) = spm_synthetic();
    for case in fixture["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected = ids_of(&case["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), expected, "encoding {text:?}");
        let mut with_bos = vec![1];
        with_bos.extend(&expected);
        assert_eq!(tok.encode(text, true).unwrap(), with_bos, "BOS for {text:?}");
        assert_eq!(tok.decode(&expected, false).unwrap(), case["decoded"].as_str().unwrap());
    }
}

/// Streams `ids` through a detokenizer and returns (concatenated deltas incl. finish, stop matched).
fn stream(tok: &Arc<Tokenizer>, prompt: &[u32], ids: &[u32], stop: &[&str], include: bool) -> (String, Option<String>) {
    let mut detok = IncrementalDetokenizer::new(
        tok.clone(),
        prompt,
        false,
        stop.iter().map(|s| s.to_string()).collect(),
        include,
    );
    let mut out = String::new();
    for &id in ids {
        let step = detok.push(id).unwrap();
        assert!(
            !step.text.contains('\u{FFFD}'),
            "emitted U+FFFD mid-stream: {:?}",
            step.text
        );
        out.push_str(&step.text);
        if step.stop_matched.is_some() {
            assert_eq!(detok.output_text(), out);
            return (out, step.stop_matched);
        }
    }
    out.push_str(&detok.finish());
    assert_eq!(detok.output_text(), out);
    (out, None)
}

#[test]
fn detokenizer_holds_split_emoji_and_byte_fallback() {
    let (spm, _) = spm_synthetic();
    let ids = spm.encode("hello 日本", false).unwrap();
    assert!(ids.len() >= 7, "日本 should be byte-fallback tokens: {ids:?}");
    assert_eq!(stream(&spm, &[], &ids, &[], false).0, "hello 日本");
    // After a prompt, the first word's "▁" is a real space (SentencePiece strips it only at the very start).
    assert_eq!(stream(&spm, &[1], &ids, &[], false).0, " hello 日本");
    let Some(tok) = smollm2() else { return };
    let text = "Party 🎉👍🏽 time 日本語";
    let ids = tok.encode(text, false).unwrap();
    assert!(
        ids.len() > text.split(' ').count() + 4,
        "emoji should span several byte tokens: {ids:?}"
    );
    let prompt = tok.encode("<|im_start|>assistant\n", false).unwrap();
    assert_eq!(stream(&tok, &prompt, &ids, &[], false).0, text);
}

#[test]
fn detokenizer_stops_across_token_boundaries() {
    let Some(tok) = smollm2() else { return };
    let ids = tok
        .encode("The answer is 42. END_OF_ANSWER and more text", false)
        .unwrap();
    let (out, stop) = stream(&tok, &[], &ids, &["END_OF_ANSWER"], false);
    assert!(
        tok.encode("END_OF_ANSWER", false).unwrap().len() > 1,
        "stop string must span tokens"
    );
    assert_eq!(
        (out.as_str(), stop.as_deref()),
        ("The answer is 42. ", Some("END_OF_ANSWER"))
    );
    let (out, _) = stream(&tok, &[], &ids, &["END_OF_ANSWER"], true);
    assert_eq!(out, "The answer is 42. END_OF_ANSWER");
    // The earliest-ending match wins, whichever order the stop strings are given in.
    let (out, stop) = stream(&tok, &[], &ids, &["more", " 42"], false);
    assert_eq!((out.as_str(), stop.as_deref()), ("The answer is", Some(" 42")));
}

#[test]
fn detokenizer_finish_releases_held_stop_prefix() {
    let Some(tok) = smollm2() else { return };
    let ids = tok.encode("Hello STO", false).unwrap();
    let mut detok = IncrementalDetokenizer::new(tok.clone(), &[], false, vec!["STOP".into()], false);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&detok.push(id).unwrap().text);
    }
    assert_eq!(streamed, "Hello ", "the partial stop string is held back");
    assert_eq!(detok.finish(), "STO");
    assert_eq!(detok.output_text(), "Hello STO");
    assert_eq!(detok.finish(), "");
}

#[test]
fn detokenizer_skips_special_tokens() {
    let Some(tok) = smollm2() else { return };
    let ids = tok.encode("Hi there<|im_end|>", false).unwrap();
    let mut detok = IncrementalDetokenizer::new(tok.clone(), &[], true, vec![], false);
    let text: String = ids.iter().map(|&id| detok.push(id).unwrap().text).collect();
    assert_eq!(text + &detok.finish(), "Hi there");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Streaming any text token by token reproduces the one-shot decode, and stops cut it where a one-shot search
    /// for the first-ending stop string does.
    #[test]
    fn streaming_matches_one_shot_decode(
        chars in prop::collection::vec(prop::sample::select(vec!["a", "b", " ", "日", "😀", "🏽", "é", "\n", "1", "ST"]), 0..60),
        stop in prop::sample::select(vec!["", "b a", "ST", "😀a", "日日", "\n1"]),
        include in any::<bool>(),
    ) {
        let text = chars.concat();
        let mut tokenizers = vec![spm_synthetic().0];
        tokenizers.extend(smollm2());
        for tok in &tokenizers {
            let ids = tok.encode(&text, false).unwrap();
            let full = tok.decode(&ids, false).unwrap();
            let stops: Vec<&str> = if stop.is_empty() { vec![] } else { vec![stop] };
            let (out, matched) = stream(tok, &[], &ids, &stops, include);
            match (stops.first(), full.find(stop)) {
                (Some(s), Some(at)) => {
                    prop_assert_eq!(matched.as_deref(), Some(*s));
                    prop_assert_eq!(out, &full[..at + if include { s.len() } else { 0 }]);
                }
                _ => {
                    prop_assert_eq!(matched, None);
                    prop_assert_eq!(out, full);
                }
            }
        }
    }
}
