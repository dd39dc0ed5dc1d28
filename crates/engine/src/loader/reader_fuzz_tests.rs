//! Mutation fuzzing of every file reader (issue "Hardening": "Fuzzing the file readers"): GGUF containers,
//! safetensors headers, `tokenizer.json`, `config.json` and chat templates. proptest starts from a valid file and
//! truncates it, flips bytes, and writes absurd sizes and counts into it; each reader must answer with a `Result`
//! (never a panic), and the largest single heap allocation made while reading must stay small: a count read from
//! a file may never size an allocation by itself.
//!
//! The allocation bound is measured, not assumed: this test binary's global allocator records the largest
//! request made on the measuring thread while `largest_allocation` runs (a counting wrapper around the system
//! allocator, so it changes nothing else).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use proptest::prelude::*;

use crate::error::EngineError;
use crate::loader::gguf_file::{GgufFile, GgufValue};
use crate::loader::gguf_writer::{s, strs, write_file, GgufWriter};
use crate::loader::hf_config::{check_config_ranges, parse_config};
use crate::loader::load_hf_dir;
use crate::tokenizer::{ChatTemplate, Tokenizer, TokenizerSource};

struct MaxAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; it only records sizes in thread-locals with
// const initializers (no allocation, no lazy init).
unsafe impl GlobalAlloc for MaxAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: MaxAlloc = MaxAlloc;

/// Runs `f` (catching a panic) and returns its result and the largest single allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (std::thread::Result<T>, usize) {
    LARGEST.with(|m| m.set(0));
    TRACKING.with(|t| t.set(true));
    let out = catch_unwind(AssertUnwindSafe(f));
    TRACKING.with(|t| t.set(false));
    (out, LARGEST.with(Cell::get))
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// One mutation of a file's bytes.
#[derive(Clone, Debug)]
enum Edit {
    Truncate(usize),
    Flip(usize, u8),
    /// An absurd little-endian u64 (a size or count) written at a position.
    Absurd(usize, u64),
    /// An absurd u32 (a type id, a dimension count).
    Absurd32(usize, u32),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let absurd = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1u64 << 62),
        Just(1u64 << 40),
        Just(1u64 << 32),
        Just(0u64),
        any::<u64>()
    ];
    let edit = prop_oneof![
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Flip(a, b)),
        (any::<usize>(), absurd).prop_map(|(a, v)| Edit::Absurd(a, v)),
        (any::<usize>(), prop_oneof![Just(u32::MAX), Just(1u32 << 31), any::<u32>()]).prop_map(|(a, v)| Edit::Absurd32(a, v)),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len();
        if n == 0 {
            break;
        }
        match *e {
            Edit::Truncate(at) => bytes.truncate(at % n),
            Edit::Flip(at, v) => bytes[at % n] ^= v | 1,
            Edit::Absurd(at, v) => {
                let at = at % n;
                let end = (at + 8).min(n);
                bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            Edit::Absurd32(at, v) => {
                let at = at % n;
                let end = (at + 4).min(n);
                bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
        }
    }
    bytes
}

/// A small but complete-looking GGUF: scalar and array metadata (a vocabulary), a chat template, two tensors.
fn sample_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", s("llama"))
        .kv("llama.embedding_length", GgufValue::U32(8))
        .kv("llama.block_count", GgufValue::U32(1))
        .kv("llama.context_length", GgufValue::U32(64))
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.tokens", strs(&["a", "b", "ab", "<s>", "</s>"]))
        .kv("tokenizer.ggml.merges", strs(&["a b"]))
        .kv("tokenizer.ggml.token_type", GgufValue::Array(vec![GgufValue::I32(1); 5]))
        .kv("tokenizer.chat_template", s("{% for m in messages %}{{ m.content }}{% endfor %}"))
        .kv("nested", GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U64(7)])]));
    w.tensor_f32("token_embd.weight", &[8, 5], &[0.5; 40]);
    w.tensor_f32("output_norm.weight", &[8], &[1.0; 8]);
    w.to_bytes()
}

const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 128, "vocab_size": 6, "eos_token_id": 2, "bos_token_id": 1,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64}}"#;

const TOKENIZER_JSON: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 3, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
    "normalized": false, "special": true}],
    "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
    "use_regex": true}, "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": true,
    "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
    "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3}, "merges": ["a b"]}}"#;

const TEMPLATE: &str = "{%- set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' -%}\
{% macro turn(m) %}<|{{ m.role }}|>{{ m.content | trim }}{% endmacro %}\
{% for m in messages %}{% if loop.first and sys %}[{{ sys }}]{% endif %}{{ turn(m) }}{% if not loop.last %}\n{% endif %}{% endfor %}\
{% if add_generation_prompt %}<|assistant|>{% endif %}{{ messages | tojson(indent=2) | length }}";

/// Mutates text by byte edits, then keeps it as text (lossy), as a reader of a corrupt file would see it.
fn mutate_text(text: &str, edits: &[Edit]) -> String {
    String::from_utf8_lossy(&apply(text.as_bytes().to_vec(), edits)).into_owned()
}

fn is_load_error(e: &EngineError) -> bool {
    matches!(e, EngineError::ModelLoad { .. } | EngineError::Io { .. } | EngineError::InvalidParam { .. })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gguf_containers(edits in edits()) {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = apply(sample_gguf(), &edits);
        let path = write_file(tmp.path(), "fuzz.gguf", &bytes);
        let (out, largest) = largest_allocation(|| {
            let r = GgufFile::open(&path);
            if let Ok(f) = &r {
                for t in &f.tensors {
                    let _ = f.tensor_bytes(t);
                    let _ = f.tensor_matrix(t);
                }
            }
            // The whole loader on top: config, tokenizer data, weights (it fails on the missing tensors).
            let whole = crate::loader::load_model(path.to_str().unwrap()).map(|_| ());
            (r.map(|_| ()), whole)
        });
        let (container, whole) = out.map_err(|_| TestCaseError::fail("a reader panicked"))?;
        if let Err(e) = container { prop_assert!(is_load_error(&e), "{e}"); }
        if let Err(e) = whole { prop_assert!(is_load_error(&e) || matches!(e, EngineError::Tokenizer(_) | EngineError::ChatTemplate(_)), "{e}"); }
        prop_assert!(largest < MIB, "largest allocation {largest} bytes reading a {}-byte file", bytes.len());
    }

    #[test]
    fn safetensors_headers(edits in edits()) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("config.json"), CONFIG).unwrap();
        let data = vec![0u8; 6 * 8 * 4];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![6, 8], &data).unwrap();
        let good = safetensors::serialize(vec![("model.embed_tokens.weight".to_string(), view)], None).unwrap();
        let bytes = apply(good, &edits);
        std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
        let (out, largest) = largest_allocation(|| load_hf_dir(Path::new(dir), "fuzz".into()).map(|_| ()));
        let r = out.map_err(|_| TestCaseError::fail("the safetensors reader panicked"))?;
        if let Err(e) = r { prop_assert!(is_load_error(&e), "{e}"); }
        prop_assert!(largest < MIB, "largest allocation {largest} bytes reading a {}-byte file", bytes.len());
    }

    #[test]
    fn config_json(edits in edits()) {
        let text = mutate_text(CONFIG, &edits);
        let (out, largest) = largest_allocation(|| parse_config("config.json", &text));
        let r = out.map_err(|_| TestCaseError::fail("parse_config panicked"))?;
        match r {
            Ok(c) => prop_assert!(check_config_ranges(&c).is_ok()),
            Err(e) => prop_assert!(is_load_error(&e), "{e}"),
        }
        prop_assert!(largest < 64 * KIB, "largest allocation {largest}");
    }

    #[test]
    fn tokenizer_json(edits in edits()) {
        let tmp = tempfile::tempdir().unwrap();
        let text = mutate_text(TOKENIZER_JSON, &edits);
        let path = tmp.path().join("tokenizer.json");
        std::fs::write(&path, &text).unwrap();
        let source = TokenizerSource::HfFiles { tokenizer_json: path, tokenizer_config_json: None };
        let (out, largest) = largest_allocation(|| {
            Tokenizer::from_source(&source).map(|t| {
                let ids = t.encode("abab <s> ba", true);
                let text = ids.as_ref().ok().map(|ids| t.decode(ids, false));
                (ids.is_ok(), text.is_some())
            })
        });
        let r = out.map_err(|_| TestCaseError::fail("the tokenizer reader panicked"))?;
        if let Err(e) = r { prop_assert!(matches!(e, EngineError::Tokenizer(_) | EngineError::ModelLoad { .. } | EngineError::Io { .. }), "{e}"); }
        prop_assert!(largest < MIB, "largest allocation {largest}");
    }

    #[test]
    fn chat_templates(edits in edits(), messages in proptest::collection::vec(("(system|user|assistant)", ".{0,20}"), 1..4)) {
        let source = mutate_text(TEMPLATE, &edits);
        let messages = serde_json::Value::Array(
            messages.into_iter().map(|(role, content)| serde_json::json!({"role": role, "content": content})).collect(),
        );
        let (out, largest) = largest_allocation(|| {
            ChatTemplate::new(&source, Some("<s>".into()), None).and_then(|t| t.render(&messages, true, None))
        });
        let r = out.map_err(|_| TestCaseError::fail("a chat template panicked"))?;
        if let Err(e) = r { prop_assert!(matches!(e, EngineError::ChatTemplate(_)), "{e}"); }
        prop_assert!(largest < 32 * MIB, "largest allocation {largest}");
    }
}

#[test]
fn the_unmutated_samples_are_valid() {
    // Guards the fuzz tests against testing only the error paths.
    let tmp = tempfile::tempdir().unwrap();
    let path = write_file(tmp.path(), "ok.gguf", &sample_gguf());
    let (out, largest) = largest_allocation(|| GgufFile::open(&path).map(|f| f.tensors.len()));
    assert_eq!(out.unwrap().unwrap(), 2);
    assert!(largest > 0 && largest < MIB);
    assert!(parse_config("config.json", CONFIG).is_ok());
    let tok = tmp.path().join("tokenizer.json");
    std::fs::write(&tok, TOKENIZER_JSON).unwrap();
    let t = Tokenizer::from_source(&TokenizerSource::HfFiles { tokenizer_json: tok, tokenizer_config_json: None }).unwrap();
    assert_eq!(t.encode("ab", false).unwrap(), vec![2]);
    let rendered = ChatTemplate::new(TEMPLATE, None, None)
        .unwrap()
        .render(&serde_json::json!([{"role": "system", "content": "s"}, {"role": "user", "content": " u "}]), true, None)
        .unwrap();
    assert!(rendered.starts_with("[s]<|system|>s<|user|>u<|assistant|>"), "{rendered}");
}

#[test]
fn absurd_config_sizes_are_refused() {
    for (key, value) in [("hidden_size", "1099511627776"), ("num_hidden_layers", "100000"), ("vocab_size", "0"), ("max_position_embeddings", "1152921504606846976")] {
        let text = CONFIG.replacen(&format!("\"{key}\": "), &format!("\"{key}\": {value}, \"_was\": "), 1);
        let err = parse_config("config.json", &text).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}
