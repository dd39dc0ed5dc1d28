//! Structured outputs end to end without a model: random logits go through the real sampler with the grammar
//! mask, the matcher consumes each sampled token, and the text must match the constraint. Runs on a SentencePiece
//! vocabulary (the synthetic fixture, always) and the default model's byte-level BPE (when it is downloaded).

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::grammar_cache::GrammarCache;
use super::sample_matcher::{mask_allows, SampleConstraint};
use super::token_env::token_bytes_table;
use super::MaskPool;
use crate::error::EngineError;
use crate::sampler::{sample_row, SampleRow, SequenceRng};
use crate::sampling_params::{SamplingParams, StructuredOutputs};
use crate::tokenizer::reference_tests::{smollm2, spm_synthetic};
use crate::tokenizer::Tokenizer;

fn cache_for(tok: &Arc<Tokenizer>) -> GrammarCache {
    let eos = tok.eos_token_id().expect("eos");
    GrammarCache::new(Some(tok.clone()), tok.vocab_size(), vec![eos])
}

fn regex(r: &str) -> StructuredOutputs {
    StructuredOutputs {
        regex: Some(r.into()),
        ..Default::default()
    }
}

/// Samples up to `max_tokens` tokens under `spec` from random logits; returns the output bytes and whether it
/// ended with EOS. Panics when the sampler emits a token the matcher rejects.
fn generate(tok: &Arc<Tokenizer>, cache: &GrammarCache, spec: &StructuredOutputs, seed: u64, greedy: bool) -> (Vec<u8>, bool) {
    let vocab = tok.vocab_size();
    let table = token_bytes_table(tok, vocab).unwrap();
    let eos = tok.eos_token_id().unwrap();
    let grammar = cache.get_or_compile(spec).unwrap();
    let constraint = SampleConstraint::new(grammar.new_matcher());
    let pool = MaskPool::new(1).unwrap();
    let params = SamplingParams {
        temperature: if greedy { 0.0 } else { 1.0 },
        ..Default::default()
    };
    let mut rng = SequenceRng::new(seed);
    let mut logit_rng = SequenceRng::new(seed ^ 0x5eed);
    let mut out = Vec::new();
    let mut output_ids = Vec::new();
    for _ in 0..64 {
        constraint.prefetch(&pool);
        let logits: Vec<f32> = (0..vocab).map(|_| (logit_rng.next_uniform() * 8.0) as f32).collect();
        let mask = constraint.mask().unwrap();
        let sampled = sample_row(&mut SampleRow {
            logits: &logits,
            params: &params,
            prompt_token_ids: &[],
            output_token_ids: &output_ids,
            eos_token_ids: &[eos],
            rng: &mut rng,
            allowed_tokens: Some(&mask),
        })
        .unwrap();
        assert!(mask_allows(&mask, sampled.token as usize), "sampled a masked-out token");
        if sampled.token == eos {
            assert!(constraint.is_accepting(), "EOS before the grammar was complete");
            return (out, true);
        }
        constraint
            .consume(sampled.token)
            .unwrap_or_else(|e| panic!("the matcher rejected sampled token {}: {e}", sampled.token));
        out.extend_from_slice(&table[sampled.token as usize]);
        output_ids.push(sampled.token);
    }
    (out, false)
}

fn tokenizers() -> Vec<(&'static str, Arc<Tokenizer>)> {
    let mut all = vec![("sentencepiece", spm_synthetic().0)];
    match smollm2() {
        Some(t) => all.push(("smollm2", t)),
        None => eprintln!("byte-level cases skipped: the default model is not downloaded"),
    }
    all
}

#[test]
fn regex_and_choice_outputs_match_on_both_vocabularies() {
    for (name, tok) in tokenizers() {
        let cache = cache_for(&tok);
        for seed in 0..4 {
            let (bytes, ended) = generate(&tok, &cache, &regex("[a-c]{2,5} (yes|no)"), seed, false);
            let text = String::from_utf8(bytes).unwrap();
            assert!(ended, "{name}: {text:?} did not end");
            let ok = text.len() >= 5
                && text.split_once(' ').is_some_and(|(a, b)| {
                    (2..=5).contains(&a.len()) && a.chars().all(|c| "abc".contains(c)) && (b == "yes" || b == "no")
                });
            assert!(ok, "{name}: {text:?} does not match");

            let choice = StructuredOutputs {
                choice: Some(vec![" hello world".into(), "a.b*c".into(), "naïve 🌟".into()]),
                ..Default::default()
            };
            let (bytes, ended) = generate(&tok, &cache, &choice, seed, seed % 2 == 0);
            let text = String::from_utf8(bytes).unwrap();
            assert!(ended && [" hello world", "a.b*c", "naïve 🌟"].contains(&text.as_str()), "{name}: {text:?}");
        }
    }
}

#[test]
fn json_schema_output_validates() {
    for (name, tok) in tokenizers() {
        let cache = cache_for(&tok);
        let schema = json!({
            "type": "object",
            "properties": {"b": {"type": "integer"}, "a": {"enum": ["x", "y"]}},
            "required": ["b", "a"],
            "additionalProperties": false
        });
        let spec = StructuredOutputs {
            json: Some(schema),
            disable_any_whitespace: true,
            ..Default::default()
        };
        for seed in 0..3 {
            let (bytes, ended) = generate(&tok, &cache, &spec, seed, false);
            if !ended {
                continue; // random logits may spell a long integer; only finished outputs are checked
            }
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(v["b"].is_i64() && (v["a"] == "x" || v["a"] == "y"), "{name}: {v}");
            // Keys come in the schema's order (serde_json's preserve_order keeps it).
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["b", "a"]);
        }
    }
}

#[test]
fn invalid_constraints_name_their_field() {
    let (tok, _) = spm_synthetic();
    let cache = cache_for(&tok);
    let cases = [
        (regex("(unclosed"), "structured_outputs.regex"),
        (
            StructuredOutputs {
                grammar: Some("start: nothing_defined".into()),
                ..Default::default()
            },
            "structured_outputs.grammar",
        ),
        (
            StructuredOutputs {
                json: Some(json!({"type": "no-such-type"})),
                ..Default::default()
            },
            "structured_outputs.json",
        ),
        (
            StructuredOutputs {
                json: Some(json!("{not json")),
                ..Default::default()
            },
            "structured_outputs.json",
        ),
        (
            StructuredOutputs {
                choice: Some(vec![]),
                ..Default::default()
            },
            "structured_outputs.choice",
        ),
        (StructuredOutputs::default(), "structured_outputs"),
    ];
    for (spec, field) in cases {
        match cache.get_or_compile(&spec) {
            Err(EngineError::InvalidParam { field: f, message }) => {
                assert_eq!(f, field, "{message}");
                assert!(!message.is_empty());
            }
            Err(other) => panic!("{field}: expected InvalidParam, got {other:?}"),
            Ok(_) => panic!("{field}: expected an error"),
        }
    }
}

#[test]
fn compiled_grammars_are_cached_by_spec() {
    let (tok, _) = spm_synthetic();
    let cache = cache_for(&tok);
    let a = cache.get_or_compile(&regex("ab+")).unwrap();
    let b = cache.get_or_compile(&regex("ab+")).unwrap();
    let c = cache.get_or_compile(&regex("ab*")).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &c));
    // Two matchers from one compiled grammar are independent.
    let m1 = SampleConstraint::new(a.new_matcher());
    let m2 = SampleConstraint::new(a.new_matcher());
    let table = token_bytes_table(&tok, tok.vocab_size()).unwrap();
    let tok_a = table.iter().position(|b| b == b"a").unwrap() as u32;
    m1.consume(tok_a).unwrap();
    assert!(!mask_allows(&m1.mask().unwrap(), tok_a as usize));
    assert!(mask_allows(&m2.mask().unwrap(), tok_a as usize));
    // A fork continues from its parent's position, then goes its own way.
    let f = m1.fork();
    assert!(!mask_allows(&f.mask().unwrap(), tok_a as usize));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the logits, sampling settings and grammar, the masked sampler only emits tokens the matcher takes.
    #[test]
    fn masked_sampler_never_emits_a_rejected_token(
        seed in any::<u64>(),
        which in 0usize..4,
        greedy in any::<bool>(),
    ) {
        let (tok, _) = spm_synthetic();
        let cache = cache_for(&tok);
        let specs = [
            regex("[0-9]{1,3}(\\.[0-9]+)?"),
            regex("(ab|cd)+e"),
            StructuredOutputs { grammar: Some("start: \"(\" item (\",\" item)* \")\"\nitem: /[xyz]+/".into()), ..Default::default() },
            StructuredOutputs { json_object: true, disable_any_whitespace: true, ..Default::default() },
        ];
        // `generate` asserts, token by token, that the sampled token is in the mask and the matcher accepts it.
        let _ = generate(&tok, &cache, &specs[which], seed, greedy);
    }
}

/// `advance` (the engine's path: the token and the next mask go to the mask pool) gives the same masks as
/// consuming on the caller's thread, whether the pool job or `mask` takes the lock first; a token the grammar
/// rejects fails the next `mask`, and a fork taken before the pool ran starts after the queued token.
#[test]
fn advance_on_the_pool_matches_consuming_in_place() {
    let (tok, _) = spm_synthetic();
    let cache = cache_for(&tok);
    let grammar = cache.get_or_compile(&regex("(ab|cd)+e")).unwrap();
    let table = token_bytes_table(&tok, tok.vocab_size()).unwrap();
    let id = |s: &[u8]| table.iter().position(|b| b == s).unwrap() as u32;
    let (a, b, c, d) = (id(b"a"), id(b"b"), id(b"c"), id(b"d"));
    // One pool thread held busy: every queued job waits, so `mask` must do the queued work itself.
    let busy = MaskPool::new(1).unwrap();
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    busy.spawn(move || {
        let _ = blocked.recv();
    });
    let pooled = SampleConstraint::new(grammar.new_matcher());
    let in_place = SampleConstraint::new(grammar.new_matcher());
    for t in [a, b, c, d, a] {
        pooled.advance(t, &busy);
        in_place.consume(t).unwrap();
        assert_eq!(*pooled.mask().unwrap(), *in_place.mask().unwrap());
    }
    let fork = pooled.fork();
    pooled.advance(b, &busy);
    let forked_after = fork.fork();
    forked_after.consume(b).unwrap();
    assert_eq!(*pooled.mask().unwrap(), *forked_after.mask().unwrap());
    release.send(()).unwrap();
    // The free pool now runs the jobs first: same masks.
    let free = MaskPool::new(1).unwrap();
    pooled.advance(id(b"e"), &free);
    in_place.consume(b).unwrap();
    in_place.consume(id(b"e")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(*pooled.mask().unwrap(), *in_place.mask().unwrap());
    assert!(pooled.is_accepting());
    // A rejected token ("a" right after "ab": the grammar wants "b") surfaces at the next mask.
    let bad = SampleConstraint::new(grammar.new_matcher());
    bad.advance(a, &free);
    bad.advance(a, &free);
    assert!(bad.mask().is_err(), "a token the grammar rejects must fail the next mask");
}
