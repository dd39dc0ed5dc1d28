//! Tests of `sampler.rs`: the whole per-row pipeline through `sample_batch`, against naive references.

use super::*;
use crate::sampler::logprobs::tests::{naive_log_softmax, naive_top_n};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_logits(seed: u64, vocab: usize) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..vocab).map(|_| r.random_range(-6.0f32..6.0)).collect()
}

fn sample_one(logits: &[f32], params: &SamplingParams, output: &[u32], rng: &mut SequenceRng) -> SampledToken {
    let mut rows = [SampleRow {
        logits,
        params,
        prompt_token_ids: &[],
        output_token_ids: output,
        eos_token_ids: &[],
        rng,
        allowed_tokens: None,
    }];
    sample_batch(&mut rows).unwrap().remove(0)
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties_and_draws_nothing() {
    let mut rng = SequenceRng::new(1);
    let greedy = SamplingParams::greedy();
    for seed in 0..50 {
        let logits = random_logits(seed, 500);
        let want = (0..500)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(sample_one(&logits, &greedy, &[], &mut rng).token, want as u32);
    }
    assert_eq!(sample_one(&[1.0, 3.0, 0.0, 3.0], &greedy, &[], &mut rng).token, 1);
    // With processing active the greedy path goes through the copy; same answer.
    let with_bias = SamplingParams {
        logit_bias: vec![(0, 0.5)],
        ..SamplingParams::greedy()
    };
    assert_eq!(sample_one(&[1.0, 3.0, 0.0, 3.0], &with_bias, &[], &mut rng).token, 1);
    assert_eq!(rng.draws(), 0);
}

#[test]
fn each_random_token_takes_exactly_one_draw() {
    let mut rng = SequenceRng::new(1);
    let params = SamplingParams {
        temperature: 0.9,
        top_k: 5,
        top_p: 0.5,
        min_p: 0.1,
        ..Default::default()
    };
    for step in 0..10 {
        sample_one(&random_logits(step, 100), &params, &[], &mut rng);
    }
    assert_eq!(rng.draws(), 10);
}

/// Runs `steps` decode steps for the given (request id, seed) rows batched together; each request's logits
/// depend only on its id, step and own history, like a real model's.
fn decode(requests: &[(u64, u64)], steps: usize) -> Vec<Vec<u32>> {
    let params: Vec<SamplingParams> = requests
        .iter()
        .map(|&(id, _)| SamplingParams {
            temperature: 0.7 + 0.1 * id as f32,
            top_k: if id % 2 == 0 { 40 } else { 0 },
            top_p: 0.9,
            frequency_penalty: 0.3,
            ..Default::default()
        })
        .collect();
    let mut rngs: Vec<SequenceRng> = requests.iter().map(|&(_, seed)| SequenceRng::new(seed)).collect();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); requests.len()];
    for step in 0..steps {
        let logits: Vec<Vec<f32>> = requests
            .iter()
            .zip(&outputs)
            .map(|(&(id, _), out)| random_logits(id * 1_000_003 + step as u64 * 7 + out.len() as u64, 300))
            .collect();
        let mut rows: Vec<SampleRow> = logits
            .iter()
            .zip(&params)
            .zip(rngs.iter_mut())
            .zip(&outputs)
            .map(|(((logits, params), rng), out)| SampleRow {
                logits,
                params,
                prompt_token_ids: &[],
                output_token_ids: out,
                eos_token_ids: &[],
                rng,
                allowed_tokens: None,
            })
            .collect();
        let sampled = sample_batch(&mut rows).unwrap();
        for (out, s) in outputs.iter_mut().zip(sampled) {
            out.push(s.token);
        }
    }
    outputs
}

#[test]
fn seeded_output_does_not_depend_on_batch_composition_or_order() {
    let a = (0, 1234);
    let alone = decode(&[a], 30).remove(0);
    assert_eq!(decode(&[a, (1, 5), (2, 6)], 30)[0], alone);
    assert_eq!(decode(&[(2, 6), (3, 9), a], 30)[2], alone);
    let mut many: Vec<(u64, u64)> = (1..40).map(|i| (i, i * 31)).collect();
    many.insert(17, a);
    assert_eq!(decode(&many, 30)[17], alone);
}

#[test]
fn different_seeds_give_different_tokens() {
    let logits = vec![0.0f32; 50];
    let params = SamplingParams::default();
    let draw = |seed| {
        let mut rng = SequenceRng::new(seed);
        (0..200)
            .map(|_| sample_one(&logits, &params, &[], &mut rng).token)
            .collect::<Vec<_>>()
    };
    let (x, y) = (draw(1), draw(2));
    assert_eq!(x, draw(1));
    // Independent uniform streams agree on ~1/50 of positions.
    let same = x.iter().zip(&y).filter(|(a, b)| a == b).count();
    assert!(same < 20, "{same} of 200 positions agree");
}

fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .map(|(&c, &p)| (c as f64 - n as f64 * p).powi(2) / (n as f64 * p))
        .sum()
}

fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 / t).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

#[test]
fn temperature_sampling_frequencies_match_softmax() {
    let logits = [1.0f32, 0.5, 0.0, -0.5, 2.0, -1.0];
    let params = SamplingParams {
        temperature: 0.7,
        ..Default::default()
    };
    let mut rng = SequenceRng::new(99);
    let mut counts = [0usize; 6];
    for _ in 0..60_000 {
        counts[sample_one(&logits, &params, &[], &mut rng).token as usize] += 1;
    }
    // 5 degrees of freedom: 20.5 is the 0.1% critical value.
    let chi2 = chi_square(&counts, &softmax(&logits, 0.7));
    assert!(chi2 < 20.5, "chi2 = {chi2}, counts = {counts:?}");
    // The same counts are far from the T = 1 distribution, so the bound has power.
    assert!(chi_square(&counts, &softmax(&logits, 1.0)) > 200.0);
}

#[test]
fn top_k_one_and_tiny_top_p_equal_greedy() {
    let mut rng = SequenceRng::new(5);
    for seed in 0..40 {
        let logits = random_logits(seed, 2000);
        let greedy = sample_one(&logits, &SamplingParams::greedy(), &[], &mut rng).token;
        let k1 = SamplingParams {
            temperature: 1.5,
            top_k: 1,
            ..Default::default()
        };
        let p0 = SamplingParams {
            temperature: 1.5,
            top_p: 1e-6,
            ..Default::default()
        };
        assert_eq!(sample_one(&logits, &k1, &[], &mut rng).token, greedy);
        assert_eq!(sample_one(&logits, &p0, &[], &mut rng).token, greedy);
    }
}

#[test]
fn min_p_never_samples_dropped_tokens() {
    // probs proportional to 1, 0.6, 0.3, 0.1, 0.05: min_p = 0.2 keeps the first three.
    let logits: Vec<f32> = [1.0f32, 0.6, 0.3, 0.1, 0.05].iter().map(|p| p.ln()).collect();
    let params = SamplingParams {
        min_p: 0.2,
        ..Default::default()
    };
    let mut rng = SequenceRng::new(8);
    let mut seen = [0usize; 5];
    for _ in 0..5000 {
        seen[sample_one(&logits, &params, &[], &mut rng).token as usize] += 1;
    }
    assert!(seen[..3].iter().all(|&c| c > 500), "{seen:?}");
    assert_eq!(seen[3] + seen[4], 0, "{seen:?}");
}

#[test]
fn logit_bias_can_force_a_token() {
    let mut rng = SequenceRng::new(2);
    let params = SamplingParams {
        logit_bias: vec![(123, 100.0)],
        ..Default::default()
    };
    for seed in 0..100 {
        assert_eq!(
            sample_one(&random_logits(seed, 1000), &params, &[], &mut rng).token,
            123
        );
    }
}

#[test]
fn penalties_steer_greedy_away_from_repeated_tokens() {
    let logits = [3.0f32, 2.9, 2.0, -1.0];
    let mut rng = SequenceRng::new(0);
    let presence = SamplingParams {
        presence_penalty: 0.5,
        ..SamplingParams::greedy()
    };
    assert_eq!(sample_one(&logits, &presence, &[], &mut rng).token, 0);
    assert_eq!(sample_one(&logits, &presence, &[0, 3], &mut rng).token, 1);
    let repetition = SamplingParams {
        repetition_penalty: 1.2,
        ..SamplingParams::greedy()
    };
    let mut rows = [SampleRow {
        logits: &logits,
        params: &repetition,
        prompt_token_ids: &[0],
        output_token_ids: &[],
        eos_token_ids: &[],
        rng: &mut rng,
        allowed_tokens: None,
    }];
    assert_eq!(sample_batch(&mut rows).unwrap()[0].token, 1);
}

#[test]
fn min_tokens_masks_eos_and_stop_ids() {
    let logits = [0.0f32, 9.0, 8.0, 7.0, 1.0];
    let params = SamplingParams {
        min_tokens: 3,
        stop_token_ids: vec![2],
        ..SamplingParams::greedy()
    };
    let mut rng = SequenceRng::new(0);
    let mut run = |output: &[u32], params: &SamplingParams| {
        let mut rows = [SampleRow {
            logits: &logits,
            params,
            prompt_token_ids: &[],
            output_token_ids: output,
            eos_token_ids: &[1],
            rng: &mut rng,
            allowed_tokens: None,
        }];
        sample_batch(&mut rows).unwrap()[0].token
    };
    assert_eq!(run(&[4, 4], &params), 3);
    assert_eq!(run(&[4, 4, 4], &params), 1);
    let random = SamplingParams {
        temperature: 1.0,
        ..params.clone()
    };
    for _ in 0..200 {
        let t = run(&[], &random);
        assert!(t != 1 && t != 2, "sampled stop token {t}");
    }
}

#[test]
fn logprobs_come_from_raw_logits_whatever_the_processing() {
    let mut rng = SequenceRng::new(4);
    let output = [5u32, 7, 7, 900];
    for (case, temperature) in [0.0f32, 0.5, 1.7].into_iter().enumerate() {
        let raw = random_logits(100 + case as u64, 1000);
        let params = SamplingParams {
            temperature,
            repetition_penalty: 1.3,
            frequency_penalty: 0.5,
            presence_penalty: 0.3,
            logit_bias: vec![(5, 3.0), (11, -2.0)],
            top_k: 20,
            logprobs: Some(7),
            ..Default::default()
        };
        let s = sample_one(&raw, &params, &output, &mut rng);
        let naive = naive_log_softmax(&raw);
        assert!((s.logprob as f64 - naive[s.token as usize]).abs() < 1e-5);
        assert_eq!(s.rank, naive.iter().filter(|&&y| y >= naive[s.token as usize]).count());
        let want = naive_top_n(&raw, 7);
        assert_eq!(s.top_logprobs.len(), 7);
        for ((gi, gl), (wi, wl)) in s.top_logprobs.iter().zip(&want) {
            assert_eq!(gi, wi);
            assert!((*gl as f64 - wl).abs() < 1e-5);
        }
    }
    let plain = sample_one(&[0.0, 1.0], &SamplingParams::default(), &[], &mut rng);
    assert!(plain.top_logprobs.is_empty());
}

#[test]
fn bad_rows_are_errors_not_panics() {
    let mut rng = SequenceRng::new(0);
    let p = SamplingParams::default();
    let nan = [0.0f32, f32::NAN];
    let bias = SamplingParams {
        logit_bias: vec![(7, 1.0)],
        ..Default::default()
    };
    let penalised = SamplingParams {
        presence_penalty: 1.0,
        ..Default::default()
    };
    let cases: [(&[f32], &SamplingParams, &[u32]); 4] = [
        (&nan, &p, &[]),
        (&[], &p, &[]),
        (&[0.0, 1.0], &bias, &[]),
        (&[0.0, 1.0], &penalised, &[2]),
    ];
    for (logits, params, output) in cases {
        let mut rows = [SampleRow {
            logits,
            params,
            prompt_token_ids: &[],
            output_token_ids: output,
            eos_token_ids: &[],
            rng: &mut rng,
            allowed_tokens: None,
        }];
        assert!(sample_batch(&mut rows).is_err());
    }
    let masked = SamplingParams {
        min_tokens: 1,
        ..Default::default()
    };
    let mut rows = [SampleRow {
        logits: &[0.0],
        params: &masked,
        prompt_token_ids: &[],
        output_token_ids: &[],
        eos_token_ids: &[0],
        rng: &mut rng,
        allowed_tokens: None,
    }];
    assert!(sample_batch(&mut rows).is_err());
}

#[test]
fn large_vocab_batch_samples_inside_top_k() {
    let vocab = 151_936;
    let logits: Vec<Vec<f32>> = (0..8).map(|i| random_logits(i, vocab)).collect();
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 50,
        top_p: 0.95,
        logprobs: Some(5),
        ..Default::default()
    };
    let mut rngs: Vec<SequenceRng> = (0..8).map(SequenceRng::new).collect();
    let mut rows: Vec<SampleRow> = logits
        .iter()
        .zip(rngs.iter_mut())
        .map(|(l, rng)| SampleRow {
            logits: l,
            params: &params,
            prompt_token_ids: &[],
            output_token_ids: &[],
            eos_token_ids: &[],
            rng,
            allowed_tokens: None,
        })
        .collect();
    let out = sample_batch(&mut rows).unwrap();
    for (l, s) in logits.iter().zip(&out) {
        assert!(s.rank <= 50, "rank {}", s.rank);
        assert!((s.logprob as f64 - naive_log_softmax(l)[s.token as usize]).abs() < 1e-5);
        assert_eq!(s.top_logprobs[0].0, naive_top_n(l, 1)[0].0);
    }
}
