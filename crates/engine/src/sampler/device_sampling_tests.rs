use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::super::logits_processors::{apply_logit_bias, apply_min_tokens, apply_penalties, PenaltyScratch};
use super::*;

const VOCAB: usize = 64;

fn base() -> SamplingParams {
    SamplingParams {
        temperature: 0.7,
        ..SamplingParams::default()
    }
}

fn history<'a>(prompt: &'a [u32], output: &'a [u32], eos: &'a [u32]) -> RowHistory<'a> {
    RowHistory {
        prompt_token_ids: prompt,
        output_token_ids: output,
        eos_token_ids: eos,
    }
}

fn shape(prompt_len: usize, output_len: usize, eos_len: usize) -> RowShape {
    RowShape {
        prompt_len,
        output_len,
        eos_len,
        constrained: false,
    }
}

/// What sampling.cu does with a row's edits (step 2 of the kernel), on the host.
fn apply_edits_like_the_gpu(row: &mut [f32], p: &DeviceSampleParams, edits: &[TokenEdit]) {
    for e in &edits[p.edit_begin as usize..(p.edit_begin + p.edit_count) as usize] {
        let mut l = row[e.token as usize];
        l += e.bias;
        if e.flags & TokenEdit::MASKED != 0 {
            l = f32::NEG_INFINITY;
        }
        if e.flags & TokenEdit::SEEN != 0 && p.repetition_penalty != 1.0 {
            l = if l > 0.0 {
                l / p.repetition_penalty
            } else {
                l * p.repetition_penalty
            };
        }
        if e.count > 0 {
            l -= p.frequency_penalty * e.count as f32;
            l -= p.presence_penalty;
        }
        row[e.token as usize] = l;
    }
}

#[test]
fn every_row_with_valid_ids_and_at_most_20_logprobs_qualifies() {
    let cases = [
        SamplingParams {
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            ..base()
        },
        SamplingParams {
            repetition_penalty: 1.2,
            frequency_penalty: 0.5,
            presence_penalty: 0.3,
            ..base()
        },
        SamplingParams {
            logprobs: Some(20),
            ..base()
        },
        SamplingParams {
            logit_bias: vec![(3, 2.0)],
            min_tokens: 4,
            stop_token_ids: vec![7],
            ..base()
        },
        SamplingParams::greedy(),
    ];
    for p in &cases {
        assert!(device_sampleable(p, shape(4, 0, 1), VOCAB), "{p:?}");
    }
    let bad = [
        SamplingParams {
            logprobs: Some(21),
            ..base()
        },
        SamplingParams {
            logit_bias: vec![(VOCAB as u32, 1.0)],
            ..base()
        },
        SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![VOCAB as u32 + 5],
            ..base()
        },
    ];
    for p in &bad {
        assert!(!device_sampleable(p, shape(4, 0, 1), VOCAB), "{p:?}");
    }
    // A bad stop id only matters while min_tokens masks it.
    let p = SamplingParams {
        min_tokens: 2,
        stop_token_ids: vec![VOCAB as u32 + 5],
        ..base()
    };
    assert!(device_sampleable(&p, shape(4, 2, 1), VOCAB));
    // More edits than the device buffer holds (repetition penalty over a huge prompt): a property of the row.
    let rep = SamplingParams {
        repetition_penalty: 1.2,
        ..base()
    };
    assert!(device_sampleable(&rep, shape(1000, 0, 1), VOCAB));
    assert!(!device_sampleable(&rep, shape(MAX_DEVICE_TOKEN_EDITS + 1, 0, 1), VOCAB));
}

#[test]
fn plain_rows_have_no_edits_and_greedy_rows_take_no_draw() {
    let mut batch = DeviceSamplingBatch::default();
    let mut rng = SequenceRng::new(7);
    batch.push(
        &SamplingParams::greedy(),
        &history(&[1, 2], &[3], &[0]),
        VOCAB,
        &mut rng,
    );
    assert_eq!(rng.draws(), 0);
    batch.push(&base(), &history(&[1, 2], &[3], &[0]), VOCAB, &mut rng);
    assert_eq!(rng.draws(), 1);
    assert!(batch.edits.is_empty());
    assert_eq!(batch.rows[0].temperature, 0.0);
    assert_eq!(batch.rows[1].temperature, 0.7);
    assert_eq!((batch.rows[1].num_top_logprobs, batch.rows[1].top_k), (-1, 0));
    assert!(batch.rows[1].seed < (1u64 << 53));
    // Same stream, same seed; another stream, another seed.
    let mut again = DeviceSamplingBatch::default();
    again.push(&base(), &history(&[], &[], &[]), VOCAB, &mut SequenceRng::new(7));
    let mut other = DeviceSamplingBatch::default();
    other.push(&base(), &history(&[], &[], &[]), VOCAB, &mut SequenceRng::new(8));
    let first = {
        let mut b = DeviceSamplingBatch::default();
        b.push(&base(), &history(&[], &[], &[]), VOCAB, &mut SequenceRng::new(7));
        b.rows[0].seed
    };
    assert_eq!(again.rows[0].seed, first);
    assert_ne!(other.rows[0].seed, first);
}

#[test]
fn edits_merge_per_token_and_rows_index_their_own_run() {
    let mut batch = DeviceSamplingBatch::default();
    let mut rng = SequenceRng::new(1);
    let p = SamplingParams {
        logit_bias: vec![(5, 1.5)],
        min_tokens: 4,
        stop_token_ids: vec![9],
        repetition_penalty: 1.3,
        frequency_penalty: 0.25,
        logprobs: Some(4),
        ..base()
    };
    batch.push(&base(), &history(&[], &[], &[]), VOCAB, &mut rng);
    batch.push(&p, &history(&[5, 6, 6], &[5, 8, 5], &[0]), VOCAB, &mut rng);
    let row = batch.rows[1];
    assert_eq!((row.edit_begin, row.num_top_logprobs), (0, 4));
    let edits = &batch.edits[row.edit_begin as usize..(row.edit_begin + row.edit_count) as usize];
    let of = |t: u32| *edits.iter().find(|e| e.token == t).unwrap();
    let (seen, masked) = (TokenEdit::SEEN, TokenEdit::MASKED);
    assert_eq!((of(5).bias, of(5).count, of(5).flags), (1.5, 2, seen));
    assert_eq!((of(6).count, of(6).flags), (0, seen));
    assert_eq!((of(8).count, of(8).flags), (1, seen));
    assert_eq!(of(0).flags, masked);
    assert_eq!(of(9).flags, masked);
    assert_eq!(edits.len(), 5, "one edit per token: {edits:?}");
    // The scratch is clean for the next row: a plain row after it has no edits.
    batch.push(&base(), &history(&[5], &[5], &[0]), VOCAB, &mut rng);
    assert_eq!(batch.rows[2].edit_count, 0);
}

#[test]
fn gpu_edit_rule_matches_the_cpu_processors_on_random_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut scratch = PenaltyScratch::default();
    let mut batch = DeviceSamplingBatch::default();
    for trial in 0..500 {
        let pick = |rng: &mut ChaCha8Rng, n: usize| -> Vec<u32> {
            (0..n).map(|_| rng.random_range(0..VOCAB as u32)).collect()
        };
        let prompt = {
            let n = rng.random_range(0..20);
            pick(&mut rng, n)
        };
        let output = {
            let n = rng.random_range(0..20);
            pick(&mut rng, n)
        };
        let eos = {
            let n = rng.random_range(1..3);
            pick(&mut rng, n)
        };
        let mut bias_ids = {
            let n = rng.random_range(0..4);
            pick(&mut rng, n)
        };
        bias_ids.sort_unstable();
        bias_ids.dedup();
        let coin = |rng: &mut ChaCha8Rng| rng.random_bool(0.5);
        let params = SamplingParams {
            logit_bias: bias_ids.iter().map(|&t| (t, rng.random_range(-5.0f32..5.0))).collect(),
            min_tokens: if coin(&mut rng) { 25 } else { 0 },
            stop_token_ids: {
                let n = rng.random_range(0..3);
                pick(&mut rng, n)
            },
            repetition_penalty: if coin(&mut rng) {
                rng.random_range(0.5..2.0)
            } else {
                1.0
            },
            frequency_penalty: if coin(&mut rng) {
                rng.random_range(-1.0..1.0)
            } else {
                0.0
            },
            presence_penalty: if coin(&mut rng) {
                rng.random_range(-1.0..1.0)
            } else {
                0.0
            },
            ..base()
        };
        let raw: Vec<f32> = (0..VOCAB).map(|_| rng.random_range(-8.0..8.0)).collect();
        let mut cpu = raw.clone();
        apply_logit_bias(&mut cpu, &params.logit_bias).unwrap();
        apply_min_tokens(&mut cpu, &params, output.len(), &eos).unwrap();
        apply_penalties(&mut cpu, &params, &prompt, &output, &mut scratch).unwrap();

        batch.clear();
        batch.push(
            &params,
            &history(&prompt, &output, &eos),
            VOCAB,
            &mut SequenceRng::new(trial),
        );
        let row = batch.rows[0];
        assert!(row.edit_count as usize <= device_edit_bound(&params, shape(prompt.len(), output.len(), eos.len())));
        let mut gpu = raw.clone();
        apply_edits_like_the_gpu(&mut gpu, &row, &batch.edits);
        for t in 0..VOCAB {
            assert!(
                cpu[t] == gpu[t] || (cpu[t].is_nan() && gpu[t].is_nan()),
                "trial {trial} token {t}: cpu {} gpu {} ({params:?})",
                cpu[t],
                gpu[t]
            );
        }
    }
}

#[test]
fn constrained_rows_carry_their_mask_and_min_tokens_holds_nothing_back() {
    // VOCAB = 64 tokens = 2 mask words per row.
    let words = mask_words(VOCAB);
    assert_eq!(words, 2);
    let params = SamplingParams {
        min_tokens: 5,
        stop_token_ids: vec![9],
        ..base()
    };
    let h = history(&[1], &[2], &[0]);
    let mut batch = DeviceSamplingBatch::default();
    let mut rng = SequenceRng::new(3);
    // A short mask (llguidance's may be shorter than the model's vocabulary) is padded with disallowed words; a
    // long one is cut at the vocabulary's words.
    batch.push_masked(&params, &h, Some(&[0b1010]), VOCAB, &mut rng);
    batch.push(&params, &h, VOCAB, &mut rng);
    batch.push_masked(&params, &h, Some(&[1, 2, 3, 4]), VOCAB, &mut rng);
    assert_eq!(batch.rows.iter().map(|r| r.mask_row).collect::<Vec<_>>(), vec![0, -1, 1]);
    assert_eq!(batch.masks, vec![0b1010, 0, 1, 2]);
    // min_tokens masks EOS and the stop id on the plain row only (the CPU sampler's rule for constrained rows).
    assert_eq!(batch.rows[0].edit_count, 0);
    assert_eq!(batch.rows[1].edit_count, 2);
    assert_eq!(batch.rows[2].edit_count, 0);
    // A bad stop id does not matter to a constrained row (min_tokens is not applied), as on the CPU.
    let bad_stop = SamplingParams {
        min_tokens: 5,
        stop_token_ids: vec![VOCAB as u32 + 1],
        ..base()
    };
    let constrained = RowShape {
        constrained: true,
        ..shape(1, 0, 1)
    };
    assert!(device_sampleable(&bad_stop, constrained, VOCAB));
    assert!(!device_sampleable(&bad_stop, shape(1, 0, 1), VOCAB));
    assert_eq!(device_edit_bound(&params, constrained), 0);
    // Clearing keeps the block's capacity (no per-step allocation once grown).
    let cap = batch.masks.capacity();
    batch.clear();
    assert!(batch.masks.is_empty() && batch.masks.capacity() == cap);
}
