//! A seeded request gives the same tokens whatever else shares its batch (vLLM V1's per-request generator
//! contract): alone, and beside requests that force every sampling path there is — prompt log-probs (their
//! logits rows go to the host), an `n > 1` fork (one logits row sampled several times), penalties and log-prob
//! lists (token edits), a structured-output request (its grammar mask goes with the step's sampling rows), a
//! beam search (its logits rows go to the host), requests joining mid-decode.
//!
//! The model is the tiny random Llama of `support/tiny_llama.rs`, written to a temp dir.
//! The CPU case runs in `cargo test`; the CUDA case (float32, so batch-dependent GEMM rounding stays far
//! below the sampler's noise) is `#[ignore]`d and run on a GPU machine by `scripts/gpu/device-run.sh`.

use std::path::Path;

use pagedllm_engine::engine::{LLMEngine, Prompt, RequestInput, RequestStream};
use pagedllm_engine::sampling_params::{BeamSearchParams, StructuredOutputs};
use pagedllm_engine::{EngineConfig, SamplingParams};

#[path = "support/tiny_llama.rs"]
mod tiny_llama;
use tiny_llama::{write_tiny_llama, VOCAB};

/// A byte-level BPE `tokenizer.json` for the tiny model: `<unk>`, `<s>`, `</s>` (ids 0-2), one token per byte
/// (ids 3-258, GPT-2's byte-to-character spelling), two-letter tokens up to the vocabulary's size, no merges.
/// Enough for a grammar to have real choices (every letter, digit, brace is a token).
fn write_byte_tokenizer(dir: &Path) {
    // GPT-2's `bytes_to_unicode`: printable bytes are themselves, the rest are shifted past 255.
    let mut shifted = 0u32;
    let mut vocab = serde_json::Map::new();
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            char::from_u32(b).unwrap()
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap()
        };
        vocab.insert(c.to_string(), (3 + b).into());
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true})
    };
    for (id, content) in [(0, "<unk>"), (1, "<s>"), (2, "</s>")] {
        vocab.insert(content.into(), id.into());
    }
    // The head's remaining rows are two-letter tokens ("aa", "ab", ...): no merges produce them, but the model
    // samples them, so they must decode (and a grammar over letters can take them).
    let letters = || (b'a'..=b'z').map(char::from);
    let pairs = letters().flat_map(|a| letters().map(move |b| format!("{a}{b}")));
    for (id, pair) in (259..VOCAB as u32).zip(pairs) {
        vocab.insert(pair, id.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tokenizer).unwrap()).unwrap();
}

/// The structured-output neighbour's constraint: its whole output must match this.
const NEIGHBOUR_REGEX: &str = "[a-z]{4,12}";

/// Whether `text` matches [`NEIGHBOUR_REGEX`] (checked by hand: the engine has no `regex` dependency).
fn matches_neighbour_regex(text: &str) -> bool {
    (4..=12).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_lowercase())
}

fn constrained_params() -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed: Some(5),
        max_tokens: Some(20),
        structured_outputs: Some(StructuredOutputs {
            regex: Some(NEIGHBOUR_REGEX.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The text of a finished single-sample request.
fn drain_text(mut stream: RequestStream) -> String {
    let mut text = String::new();
    while let Some(out) = stream.blocking_next() {
        for o in out.expect("request succeeds").outputs {
            text.push_str(&o.text);
        }
    }
    text
}

fn submit(engine: &LLMEngine, prompt: Vec<u32>, params: SamplingParams) -> RequestStream {
    engine
        .add_request(RequestInput {
            request_id: None,
            prompt: Prompt::TokenIds(prompt),
            params,
            priority: 0,
            cache_salt: None,
            add_special_tokens: false,
        })
        .expect("request accepted")
}

/// Tokens of every sample of a finished request, by sample index.
fn drain(mut stream: RequestStream) -> Vec<Vec<u32>> {
    let mut samples: Vec<Vec<u32>> = Vec::new();
    while let Some(out) = stream.blocking_next() {
        for o in out.expect("request succeeds").outputs {
            if samples.len() <= o.index {
                samples.resize(o.index + 1, Vec::new());
            }
            samples[o.index].extend(o.token_ids);
        }
    }
    samples
}

/// Reads `n` tokens of sample 0 from a running stream (keeps what it read).
fn read_tokens(stream: &mut RequestStream, n: usize, into: &mut Vec<u32>) {
    while into.len() < n {
        let out = stream
            .blocking_next()
            .expect("stream still running")
            .expect("request succeeds");
        for o in out.outputs {
            into.extend(o.token_ids);
        }
    }
}

fn target_params() -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(1234),
        max_tokens: Some(40),
        ignore_eos: true,
        ..Default::default()
    }
}

fn target_prompt() -> Vec<u32> {
    vec![1, 17, 99, 240, 5, 311, 42, 7]
}

/// The neighbours: each forces a path the target alone never takes.
fn neighbours(engine: &LLMEngine, salt: u32) -> Vec<RequestStream> {
    let prompt = |len: usize| -> Vec<u32> { (0..len as u32).map(|i| 3 + (i * 37 + salt * 11) % 500).collect() };
    vec![
        // Prompt log-probs: the step's logits rows are needed on the host.
        submit(
            engine,
            prompt(40),
            SamplingParams {
                prompt_logprobs: Some(3),
                max_tokens: Some(6),
                temperature: 1.0,
                ..Default::default()
            },
        ),
        // n > 1: one prompt's last logits row is sampled three times.
        submit(
            engine,
            prompt(12),
            SamplingParams {
                n: 3,
                temperature: 1.0,
                seed: Some(7),
                max_tokens: Some(10),
                ignore_eos: true,
                ..Default::default()
            },
        ),
        // Penalties, a bias and a log-prob list: token edits and top-N lists in the same launch.
        submit(
            engine,
            prompt(9),
            SamplingParams {
                repetition_penalty: 1.3,
                frequency_penalty: 0.5,
                logit_bias: vec![(5, 2.0)],
                logprobs: Some(5),
                temperature: 0.7,
                max_tokens: Some(12),
                ignore_eos: true,
                ..Default::default()
            },
        ),
        // Structured output: a grammar mask in the same step (on CUDA, a packed bitmask in the same launch).
        submit(engine, prompt(6), constrained_params()),
        // Beam search: its logits rows go to the host (beams are proposed there), its neighbours still sample on
        // the device.
        submit(
            engine,
            prompt(10),
            SamplingParams {
                n: 2,
                beam_search: Some(BeamSearchParams {
                    beam_width: 3,
                    ..Default::default()
                }),
                max_tokens: Some(8),
                ignore_eos: true,
                ..Default::default()
            },
        ),
        // Greedy.
        submit(
            engine,
            prompt(20),
            SamplingParams {
                temperature: 0.0,
                max_tokens: Some(8),
                ignore_eos: true,
                ..Default::default()
            },
        ),
    ]
}

/// The target alone, then beside neighbours that start with it and others that join mid-decode: same tokens.
fn check_seeded_request_ignores_its_batch(config: EngineConfig) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path());
    write_byte_tokenizer(dir.path());
    let model = dir.path().to_str().unwrap();

    let engine = LLMEngine::start(model, config.clone()).unwrap();
    let alone = drain(submit(&engine, target_prompt(), target_params())).remove(0);
    // The constrained neighbour alone: its text matches, and it samples the same text beside others (its own
    // seed, its own mask).
    let constrained_alone = drain_text(submit(&engine, target_prompt(), constrained_params()));
    engine.shutdown();
    assert_eq!(alone.len(), 40);
    assert!(matches_neighbour_regex(&constrained_alone), "constrained output {constrained_alone:?}");

    let engine = LLMEngine::start(model, config).unwrap();
    let early = neighbours(&engine, 1);
    let mut target = submit(&engine, target_prompt(), target_params());
    let mut beside = Vec::new();
    read_tokens(&mut target, 10, &mut beside);
    let late = neighbours(&engine, 2);
    let constrained = submit(&engine, target_prompt(), constrained_params());
    beside.extend(drain(target).into_iter().next().unwrap_or_default());
    let constrained_beside = drain_text(constrained);
    for s in early.into_iter().chain(late) {
        let samples = drain(s);
        assert!(
            !samples.is_empty() && samples.iter().all(|t| !t.is_empty()),
            "neighbour produced no tokens"
        );
    }
    engine.shutdown();
    assert_eq!(beside, alone, "a seeded request's tokens changed with its batch");
    assert_eq!(
        constrained_beside, constrained_alone,
        "a seeded constrained request's text changed with its batch"
    );
    let distinct = alone.iter().collect::<std::collections::HashSet<_>>().len();
    assert!(
        distinct > 5,
        "the target barely sampled ({distinct} distinct tokens): the test would not notice"
    );
}

#[test]
fn seeded_request_ignores_its_batch_on_cpu() {
    check_seeded_request_ignores_its_batch(EngineConfig {
        kv_cache_bytes: 16 << 20,
        ..EngineConfig::default()
    });
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu/device-run.sh runs it"]
fn seeded_request_ignores_its_batch_on_cuda() {
    check_seeded_request_ignores_its_batch(EngineConfig {
        device: "cuda".into(),
        dtype: "float32".into(),
        gpu_memory_utilization: 0.3,
        ..EngineConfig::default()
    });
}

/// `best_of`: of `best_of` generated samples the `n` with the highest cumulative log-prob come back, best first,
/// in one final output. Sample `i` of a seeded request has its own stream (seed + i) whatever its batch, so the
/// same request with `n = best_of` shows every candidate: the answer must be that set's top `n`.
fn check_best_of_returns_the_top_n_samples(config: EngineConfig) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path());
    let engine = LLMEngine::start(dir.path().to_str().unwrap(), config).unwrap();
    let params = |n: usize, best_of: Option<usize>| SamplingParams {
        n,
        best_of,
        temperature: 1.0,
        seed: Some(99),
        max_tokens: Some(12),
        ignore_eos: true,
        ..Default::default()
    };
    let collect = |stream: RequestStream| {
        let mut outputs = Vec::new();
        let mut stream = stream;
        while let Some(out) = stream.blocking_next() {
            outputs.push(out.expect("request succeeds"));
        }
        outputs
    };
    let all = collect(submit(&engine, target_prompt(), params(6, None)));
    let mut candidates: Vec<(f32, Vec<u32>)> = vec![(0.0, Vec::new()); 6];
    for o in all.iter().flat_map(|out| &out.outputs) {
        candidates[o.index].1.extend(&o.token_ids);
        candidates[o.index].0 = o.cumulative_logprob;
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert!(
        candidates[0].0 > candidates[5].0,
        "candidates all alike: the test would not notice"
    );

    let best = collect(submit(&engine, target_prompt(), params(2, Some(6))));
    assert_eq!(best.len(), 1, "best_of sends one output, when every candidate is done");
    let out = &best[0];
    assert!(out.finished);
    assert_eq!(out.outputs.len(), 2);
    for (i, o) in out.outputs.iter().enumerate() {
        assert_eq!(o.index, i);
        assert_eq!(
            o.token_ids, candidates[i].1,
            "choice {i} is not the {i}-th best candidate"
        );
        assert!((o.cumulative_logprob - candidates[i].0).abs() < 1e-4);
        assert_eq!(o.finish_reason.as_deref(), Some("length"));
    }
    // best_of < n is refused, naming the field.
    let err = engine
        .add_request(RequestInput {
            request_id: None,
            prompt: Prompt::TokenIds(target_prompt()),
            params: params(3, Some(2)),
            priority: 0,
            cache_salt: None,
            add_special_tokens: false,
        })
        .err()
        .expect("best_of < n refused");
    assert!(err.to_string().contains("best_of"), "{err}");
    engine.shutdown();
}

#[test]
fn best_of_returns_the_top_n_samples_by_cumulative_logprob() {
    check_best_of_returns_the_top_n_samples(EngineConfig {
        kv_cache_bytes: 16 << 20,
        ..EngineConfig::default()
    });
}

/// The same on CUDA: the device sampler's seeded streams and the sampled tokens' log-probs (summed on the host).
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu/device-run.sh runs it"]
fn best_of_returns_the_top_n_samples_on_cuda() {
    check_best_of_returns_the_top_n_samples(EngineConfig {
        device: "cuda".into(),
        dtype: "float32".into(),
        gpu_memory_utilization: 0.3,
        ..EngineConfig::default()
    });
}
