//! The GPU sampler with structured-output masks (`DeviceSampleParams::mask_row`, a packed u32 bitmask per row)
//! against the CPU sampler's `allowed_tokens` on the same logits: greedy rows pick the CPU's token with the CPU's
//! (masked-distribution) log-prob, rank and top-N list; seeded random rows draw only allowed tokens, at the
//! masked distribution's probabilities; rows without a mask beside masked ones are unaffected; and, as a
//! property over random masks and parameters, no row ever gets a token its mask disallows.

use pagedllm_engine::sampler::{sample_row, DeviceSamplingBatch, RowHistory, SampleRow, SequenceRng};
use pagedllm_engine::structured::mask_allows;
use pagedllm_engine::SamplingParams;
use pagedllm_kernels::cuda::mask_words;

use super::sampler::{by_logit, distinct_rows, identical_rows, kept_distribution, sharp_pair};
use super::*;

/// The bitmask allowing exactly `tokens` (llguidance's layout: bit `t % 32` of word `t / 32`).
fn mask_of(tokens: &[u32], vocab: usize) -> Vec<u32> {
    let mut mask = vec![0u32; mask_words(vocab)];
    for &t in tokens {
        mask[t as usize / 32] |= 1 << (t % 32);
    }
    mask
}

/// Masks over a row whose tokens by descending logit are `order`: one allowed token (mid-ranked, so the mask
/// decides the answer), a few scattered ones, most (all but the 3 likeliest), and two in the partial last word.
fn masks_for(order: &[u32], vocab: usize) -> Vec<(&'static str, Vec<u32>)> {
    vec![
        ("one", mask_of(&[order[vocab / 2]], vocab)),
        (
            "few",
            mask_of(&[order[3], order[40], order[41], order[500], order[vocab - 1]], vocab),
        ),
        ("most", mask_of(&order[3..], vocab)),
        ("last word", mask_of(&[vocab as u32 - 1, vocab as u32 - 3], vocab)),
    ]
}

/// Equal, or both the same infinity (a masked token's log-prob is -inf on both samplers).
fn close(a: f32, b: f32) -> bool {
    a == b || (a - b).abs() < 2e-3
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu/device-run.sh runs it"]
fn gpu_sampler_masked_greedy_rows_match_the_cpu_sampler() {
    let (mut p, vocab) = sharp_pair(64);
    let row = identical_rows(&mut p, 64);
    let order = by_logit(&row);
    let prompt = vec![order[0], order[3], order[40]];
    let output = vec![order[3], order[41]];
    let eos = vec![order[4]];
    let g = SamplingParams::greedy;
    let params: Vec<SamplingParams> = vec![
        SamplingParams {
            logprobs: Some(5),
            ..g()
        },
        SamplingParams {
            repetition_penalty: 1.5,
            logprobs: Some(20),
            ..g()
        },
        // min_tokens holds back EOS on an unconstrained row only (the grammar decides on a constrained one).
        SamplingParams {
            min_tokens: 10,
            stop_token_ids: vec![order[40]],
            logprobs: Some(1),
            ..g()
        },
        // A bias cannot bring back a token the mask disallows.
        SamplingParams {
            logit_bias: vec![(order[0], 100.0), (order[2], 50.0)],
            logprobs: Some(3),
            ..g()
        },
        g(),
    ];
    let history = RowHistory {
        prompt_token_ids: &prompt,
        output_token_ids: &output,
        eos_token_ids: &eos,
    };
    // Every (mask, parameters) pair, each followed by the same parameters unmasked.
    let masks = masks_for(&order, vocab);
    let mut cases: Vec<(&str, Option<&[u32]>, &SamplingParams)> = Vec::new();
    for (name, mask) in &masks {
        for pr in &params {
            cases.push((name, Some(mask.as_slice()), pr));
            cases.push(("none", None, pr));
        }
    }
    let mut batch = DeviceSamplingBatch::default();
    for &(_, mask, pr) in &cases {
        batch.push_masked(pr, &history, mask, vocab, &mut SequenceRng::new(1));
    }
    let gpu = p.gpu.sample_masked(&batch.rows, &batch.edits, &batch.masks).unwrap();
    for (i, ((name, mask, pr), d)) in cases.iter().zip(&gpu).enumerate() {
        let cpu = sample_row(&mut SampleRow {
            logits: &row,
            params: pr,
            prompt_token_ids: &prompt,
            output_token_ids: &output,
            eos_token_ids: &eos,
            rng: &mut SequenceRng::new(1),
            allowed_tokens: *mask,
        })
        .unwrap();
        let what = format!("case {i} (mask {name}, {pr:?})");
        assert_eq!(d.token, cpu.token, "{what}");
        if let Some(m) = mask {
            assert!(mask_allows(m, d.token as usize), "{what}: disallowed token {}", d.token);
        }
        assert!(
            close(d.logprob, cpu.logprob),
            "{what}: logprob {} vs {}",
            d.logprob,
            cpu.logprob
        );
        if pr.logprobs.is_some() {
            assert_eq!(d.rank as usize, cpu.rank, "{what}: rank");
        }
        assert_eq!(d.top_logprobs.len(), cpu.top_logprobs.len(), "{what}: top list length");
        for (a, b) in d.top_logprobs.iter().zip(&cpu.top_logprobs) {
            assert_eq!(
                a.0, b.0,
                "{what}: top ids {:?} vs {:?}",
                d.top_logprobs, cpu.top_logprobs
            );
            assert!(close(a.1, b.1), "{what}: top logprob {} vs {}", a.1, b.1);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu/device-run.sh runs it"]
fn gpu_sampler_masked_random_rows_follow_the_masked_distribution() {
    let rows = 256;
    let (mut p, vocab) = sharp_pair(rows);
    let row = identical_rows(&mut p, rows);
    let order = by_logit(&row);
    let masks = masks_for(&order, vocab);
    let t = |temperature: f32| SamplingParams {
        temperature,
        ..SamplingParams::default()
    };
    let cases: Vec<(usize, SamplingParams)> = vec![
        (1, t(1.0)),                                  // few
        (2, t(1.0)),                                  // most
        (2, SamplingParams { top_p: 0.8, ..t(0.9) }), // most, nucleus
        (
            2,
            SamplingParams {
                top_k: 10,
                min_p: 0.01,
                ..t(1.2)
            },
        ),
        (0, SamplingParams { top_k: 5, ..t(1.0) }), // one: always that token
    ];
    let (prompt, output, eos) = (vec![1u32], vec![2u32], vec![0u32]);
    let history = RowHistory {
        prompt_token_ids: &prompt,
        output_token_ids: &output,
        eos_token_ids: &eos,
    };
    for (ci, (m, params)) in cases.iter().enumerate() {
        let (name, mask) = &masks[*m];
        // The CPU's view: the masked row, scaled, truncated.
        let masked: Vec<f32> = (0..vocab)
            .map(|t| {
                if mask_allows(mask, t) {
                    row[t]
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let scaled: Vec<f32> = masked.iter().map(|x| x / params.temperature).collect();
        let expected = kept_distribution(&scaled, params);
        let mut counts = vec![0usize; vocab];
        let draws = 16;
        for d in 0..draws {
            let mut batch = DeviceSamplingBatch::default();
            for r in 0..rows {
                let mut rng = SequenceRng::new((d * rows + r) as u64 + 7919 * ci as u64);
                batch.push_masked(params, &history, Some(mask), vocab, &mut rng);
            }
            for s in p.gpu.sample_masked(&batch.rows, &batch.edits, &batch.masks).unwrap() {
                assert!(
                    mask_allows(mask, s.token as usize),
                    "case {ci}: disallowed token {}",
                    s.token
                );
                counts[s.token as usize] += 1;
            }
        }
        let total = (draws * rows) as f64;
        let outside: usize = (0..vocab)
            .filter(|&tok| counts[tok] > 0 && !expected.iter().any(|e| e.0 as usize == tok))
            .map(|tok| counts[tok])
            .sum();
        println!(
            "case {ci} (mask {name}): {} kept tokens, {outside} draws outside them",
            expected.len()
        );
        assert_eq!(outside, 0, "case {ci} {params:?}: drew tokens the CPU sampler drops");
        for &(tok, prob) in expected.iter().take(5) {
            let freq = counts[tok as usize] as f64 / total;
            let sigma = (prob * (1.0 - prob) / total).sqrt();
            println!("  token {tok}: p {prob:.4} freq {freq:.4}");
            assert!(
                (freq - prob).abs() < 5.0 * sigma + 1e-3,
                "case {ci} token {tok}: {freq:.4} vs {prob:.4}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu/device-run.sh runs it"]
fn gpu_sampler_never_emits_a_token_its_mask_disallows() {
    // Random masks (one token to nearly all) and random parameters on distinct logits rows, some rows unmasked;
    // several launches (300 samples > one launch's rows) so mask rows are re-based per launch too.
    let rows = 8;
    let (mut p, vocab) = sharp_pair(rows);
    distinct_rows(&mut p, rows);
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (prompt, output, eos) = (vec![3u32, 4], vec![5u32, 5, 6], vec![0u32]);
    let history = RowHistory {
        prompt_token_ids: &prompt,
        output_token_ids: &output,
        eos_token_ids: &eos,
    };
    let mut checked = 0;
    for trial in 0..12 {
        let samples = if trial % 4 == 3 { 300 } else { 64 };
        let logits_rows: Vec<u32> = (0..samples).map(|_| rng.random_range(0..rows as u32)).collect();
        let mut batch = DeviceSamplingBatch::default();
        let mut masks: Vec<Option<Vec<u32>>> = Vec::new();
        for _ in 0..samples {
            let density = [0.0, 0.01, 0.1, 0.5, 0.99][rng.random_range(0..5)];
            let mask = if rng.random_bool(0.2) {
                None
            } else {
                let mut allowed: Vec<u32> = (0..vocab as u32).filter(|_| rng.random_bool(density)).collect();
                if allowed.is_empty() {
                    allowed.push(rng.random_range(0..vocab as u32));
                }
                Some(mask_of(&allowed, vocab))
            };
            let params = SamplingParams {
                temperature: [0.0, 0.5, 1.0, 2.0][rng.random_range(0..4)],
                top_k: [0, 1, 5, 50][rng.random_range(0..4)],
                top_p: [1.0, 0.9, 0.3][rng.random_range(0..3)],
                min_p: [0.0, 0.05][rng.random_range(0..2)],
                repetition_penalty: [1.0, 1.3][rng.random_range(0..2)],
                logit_bias: vec![(rng.random_range(0..vocab as u32), 30.0)],
                logprobs: [None, Some(0), Some(4)][rng.random_range(0..3)],
                ..SamplingParams::default()
            };
            batch.push_masked(
                &params,
                &history,
                mask.as_deref(),
                vocab,
                &mut SequenceRng::new(rng.random()),
            );
            masks.push(mask);
        }
        let got = p
            .gpu
            .backend
            .sample(&batch.rows, &logits_rows, &batch.edits, &batch.masks)
            .unwrap();
        assert_eq!(got.len(), samples);
        for (j, (d, mask)) in got.iter().zip(&masks).enumerate() {
            if let Some(m) = mask {
                assert!(
                    mask_allows(m, d.token as usize),
                    "trial {trial} sample {j}: token {} is outside its mask",
                    d.token
                );
                checked += 1;
            }
        }
    }
    println!("{checked} masked samples, every token allowed");
    // A mask row past the masks given is refused, not read.
    let mut batch = DeviceSamplingBatch::default();
    batch.push_masked(
        &SamplingParams::greedy(),
        &history,
        Some(&mask_of(&[1], vocab)),
        vocab,
        &mut SequenceRng::new(1),
    );
    assert!(p.gpu.backend.sample(&batch.rows, &[0], &batch.edits, &[]).is_err());
}
