//! The GPU sampler (`kernels/sampling.cu`) against the CPU sampler on the same logits: greedy rows with
//! bias / min_tokens / penalties must pick the CPU's token, with the CPU's raw log-prob, rank and top-N list;
//! sampled rows with min_p / top_k / top_p must only draw tokens the CPU keeps, at their renormalized
//! probabilities.

use pagedllm_engine::sampler::{sample_row, DeviceSamplingBatch, RowHistory, SampleRow, SequenceRng};
use pagedllm_engine::SamplingParams;
use pagedllm_kernels::cuda::DeviceSampleParams;

use super::*;

/// Runs `rows` one-token sequences of the same token (identical logits rows) and returns that row's logits.
pub(crate) fn identical_rows(p: &mut Pair, rows: usize) -> Vec<f32> {
    let blocks: Vec<Vec<u32>> = (0..rows).map(|i| vec![1 + i as u32]).collect();
    let scheduled: Vec<ScheduledSeq<'_>> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| ScheduledSeq {
            request_id: i as u64,
            token_ids: vec![7].into(),
            start_pos: 0,
            block_table: b,
            sample: true,
            prompt_logprob_positions: 0..0,
        })
        .collect();
    let (batch, _) = build_input_batch(&scheduled, BLOCK);
    p.gpu.forward(&batch).unwrap();
    let mut logits = Vec::new();
    p.gpu.logits_to_host(&mut logits).unwrap();
    let vocab = logits.len() / rows;
    logits.truncate(vocab);
    logits
}

pub(crate) fn sharp_pair(rows: usize) -> (Pair, usize) {
    let case = &CASES[2]; // untied head: scale it up so distributions are sharp enough to test
    let cfg = config(case);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let ws = weights(&cfg, &mut rng, 4.0);
    (pair(&cfg, &ws, rows + 8), cfg.vocab_size)
}

/// Tokens by descending logit.
pub(crate) fn by_logit(row: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    order
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu/device-run.sh runs it"]
fn gpu_sampler_greedy_is_argmax_and_temperature_samples_follow_softmax() {
    let rows = 256;
    let (mut p, vocab) = sharp_pair(rows);
    let row = identical_rows(&mut p, rows);
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
    let argmax = by_logit(&row)[0] as usize;
    let greedy = p.gpu.sample(&vec![DeviceSampleParams::default(); rows], &[]).unwrap();
    for s in &greedy {
        assert_eq!(s.token as usize, argmax);
        assert!(
            (s.logprob - (row[argmax] - lse)).abs() < 1e-3,
            "greedy logprob {} vs {}",
            s.logprob,
            row[argmax] - lse
        );
    }
    // Temperature 0.8: empirical frequencies of the likeliest tokens against softmax(logits / 0.8).
    let temp = 0.8f32;
    let scaled: Vec<f64> = row.iter().map(|&x| ((x - max) / temp) as f64).collect();
    let z: f64 = scaled.iter().map(|x| x.exp()).sum();
    let mut counts = vec![0usize; vocab];
    let draws = 32;
    for d in 0..draws {
        let params: Vec<DeviceSampleParams> = (0..rows)
            .map(|r| DeviceSampleParams {
                temperature: temp,
                seed: (d * rows + r) as u64 * 0x9E37_79B9 + 1,
                ..DeviceSampleParams::default()
            })
            .collect();
        for s in p.gpu.sample(&params, &[]).unwrap() {
            counts[s.token as usize] += 1;
            assert!((s.logprob - (row[s.token as usize] - lse)).abs() < 1e-3);
        }
    }
    let total = (draws * rows) as f64;
    for &t in by_logit(&row).iter().take(5) {
        let t = t as usize;
        let prob = scaled[t].exp() / z;
        let freq = counts[t] as f64 / total;
        let sigma = (prob * (1.0 - prob) / total).sqrt();
        println!(
            "token {t}: p {prob:.4} freq {freq:.4} ({:.1} sigma)",
            (freq - prob) / sigma.max(1e-12)
        );
        assert!(
            (freq - prob).abs() < 5.0 * sigma + 1e-3,
            "token {t}: frequency {freq:.4} vs probability {prob:.4}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu/device-run.sh runs it"]
fn gpu_sampler_greedy_rows_match_the_cpu_sampler_with_processing_and_logprobs() {
    let (mut p, vocab) = sharp_pair(8);
    let row = identical_rows(&mut p, 8);
    let order = by_logit(&row);
    let (first, second, third) = (order[0], order[1], order[2]);
    let prompt = vec![first, 3, 4, second];
    let output = vec![first, first, third];
    let eos = vec![first];
    let g = SamplingParams::greedy;
    let cases: Vec<SamplingParams> = vec![
        SamplingParams {
            logprobs: Some(5),
            ..g()
        },
        SamplingParams {
            repetition_penalty: 1.5,
            logprobs: Some(20),
            ..g()
        },
        SamplingParams {
            frequency_penalty: 2.0,
            presence_penalty: 1.0,
            logprobs: Some(3),
            ..g()
        },
        SamplingParams {
            logit_bias: vec![(order[100], 100.0)],
            logprobs: Some(2),
            ..g()
        },
        SamplingParams {
            min_tokens: 10,
            stop_token_ids: vec![second],
            logprobs: Some(1),
            ..g()
        },
        SamplingParams {
            logprobs: Some(0),
            ..g()
        },
        SamplingParams {
            repetition_penalty: 0.7,
            frequency_penalty: -0.5,
            logprobs: Some(4),
            ..g()
        },
        g(),
    ];
    let mut batch = DeviceSamplingBatch::default();
    let history = RowHistory {
        prompt_token_ids: &prompt,
        output_token_ids: &output,
        eos_token_ids: &eos,
    };
    for params in &cases {
        batch.push(params, &history, vocab, &mut SequenceRng::new(1));
    }
    let gpu = p.gpu.sample(&batch.rows, &batch.edits).unwrap();
    for (i, (params, d)) in cases.iter().zip(&gpu).enumerate() {
        let mut rng = SequenceRng::new(1);
        let cpu = sample_row(&mut SampleRow {
            logits: &row,
            params,
            prompt_token_ids: &prompt,
            output_token_ids: &output,
            eos_token_ids: &eos,
            rng: &mut rng,
            allowed_tokens: None,
        })
        .unwrap();
        println!(
            "case {i}: cpu token {} rank {} | gpu token {} rank {}",
            cpu.token, cpu.rank, d.token, d.rank
        );
        assert_eq!(d.token, cpu.token, "case {i} {params:?}");
        assert!(
            (d.logprob - cpu.logprob).abs() < 2e-3,
            "case {i}: logprob {} vs {}",
            d.logprob,
            cpu.logprob
        );
        if params.logprobs.is_some() {
            assert_eq!(d.rank as usize, cpu.rank, "case {i}: rank");
        }
        assert_eq!(
            d.top_logprobs.len(),
            cpu.top_logprobs.len(),
            "case {i}: top list length"
        );
        for (a, b) in d.top_logprobs.iter().zip(&cpu.top_logprobs) {
            assert_eq!(
                a.0, b.0,
                "case {i}: top ids {:?} vs {:?}",
                d.top_logprobs, cpu.top_logprobs
            );
            assert!((a.1 - b.1).abs() < 2e-3, "case {i}: top logprob {} vs {}", a.1, b.1);
        }
    }
}

/// The CPU sampler's kept set and renormalized probabilities for scaled logits `s` (naive, by sorting).
pub(crate) fn kept_distribution(s: &[f32], params: &SamplingParams) -> Vec<(u32, f64)> {
    let max = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let order = by_logit(s);
    let kth = if params.top_k > 0 && (params.top_k as usize) < s.len() {
        s[order[params.top_k as usize - 1] as usize]
    } else {
        f32::NEG_INFINITY
    };
    let log_min_p = if params.min_p > 0.0 {
        params.min_p.ln()
    } else {
        f32::NEG_INFINITY
    };
    let keeps = |x: f32| x > f32::NEG_INFINITY && x >= kth && x - max >= log_min_p;
    let kept: Vec<(u32, f64)> = order
        .iter()
        .filter(|&&t| keeps(s[t as usize]))
        .map(|&t| (t, ((s[t as usize] - max) as f64).exp()))
        .collect();
    let total: f64 = kept.iter().map(|k| k.1).sum();
    let mut nucleus = Vec::new();
    let mut mass = 0.0;
    for &(t, w) in &kept {
        if params.top_p < 1.0 && mass >= params.top_p as f64 * total {
            break;
        }
        mass += w;
        nucleus.push((t, w));
    }
    nucleus.iter().map(|&(t, w)| (t, w / mass)).collect()
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu/device-run.sh runs it"]
fn gpu_sampler_truncation_keeps_the_cpu_nucleus_and_its_probabilities() {
    let rows = 256;
    let (mut p, vocab) = sharp_pair(rows);
    let row = identical_rows(&mut p, rows);
    let order = by_logit(&row);
    let t = |temperature: f32| SamplingParams {
        temperature,
        ..SamplingParams::default()
    };
    let cases: Vec<SamplingParams> = vec![
        SamplingParams { top_k: 5, ..t(1.0) },
        SamplingParams { top_p: 0.6, ..t(1.0) },
        SamplingParams { min_p: 0.2, ..t(1.5) },
        SamplingParams {
            top_k: 20,
            top_p: 0.9,
            min_p: 0.02,
            ..t(0.7)
        },
        SamplingParams {
            top_p: 0.8,
            repetition_penalty: 1.3,
            frequency_penalty: 0.4,
            ..t(1.0)
        },
    ];
    let prompt = vec![order[0], order[3]];
    let output = vec![order[1], order[1]];
    let eos = vec![0u32];
    let history = RowHistory {
        prompt_token_ids: &prompt,
        output_token_ids: &output,
        eos_token_ids: &eos,
    };
    for (ci, params) in cases.iter().enumerate() {
        // The CPU's processed and scaled row.
        let mut processed = row.clone();
        let mut scratch = pagedllm_engine::sampler::logits_processors::PenaltyScratch::default();
        pagedllm_engine::sampler::logits_processors::apply_penalties(
            &mut processed,
            params,
            &prompt,
            &output,
            &mut scratch,
        )
        .unwrap();
        let scaled: Vec<f32> = processed.iter().map(|x| x / params.temperature).collect();
        let expected = kept_distribution(&scaled, params);
        let mut counts = vec![0usize; vocab];
        let draws = 16;
        for d in 0..draws {
            let mut batch = DeviceSamplingBatch::default();
            for r in 0..rows {
                batch.push(
                    params,
                    &history,
                    vocab,
                    &mut SequenceRng::new((d * rows + r) as u64 + 1000 * ci as u64),
                );
            }
            for s in p.gpu.sample(&batch.rows, &batch.edits).unwrap() {
                counts[s.token as usize] += 1;
            }
        }
        let total = (draws * rows) as f64;
        let outside: usize = (0..vocab)
            .filter(|&tok| counts[tok] > 0 && !expected.iter().any(|e| e.0 as usize == tok))
            .map(|tok| counts[tok])
            .sum();
        println!(
            "case {ci}: {} kept tokens, {outside} draws outside them",
            expected.len()
        );
        assert_eq!(outside, 0, "case {ci} {params:?}: drew tokens the CPU sampler drops");
        for &(tok, prob) in expected.iter().take(5) {
            let freq = counts[tok as usize] as f64 / total;
            let sigma = (prob * (1.0 - prob) / total).sqrt();
            println!(
                "  token {tok}: p {prob:.4} freq {freq:.4} ({:.1} sigma)",
                (freq - prob) / sigma.max(1e-12)
            );
            assert!(
                (freq - prob).abs() < 5.0 * sigma + 1e-3,
                "case {ci} token {tok}: {freq:.4} vs {prob:.4}"
            );
        }
    }
}

/// A step of `rows` one-token sequences of different tokens (different logits rows), left on the GPU.
pub(crate) fn distinct_rows(p: &mut Pair, rows: usize) {
    let blocks: Vec<Vec<u32>> = (0..rows).map(|i| vec![1 + i as u32]).collect();
    let scheduled: Vec<ScheduledSeq<'_>> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| ScheduledSeq {
            request_id: i as u64,
            token_ids: vec![7 + 13 * i as u32].into(),
            start_pos: 0,
            block_table: b,
            sample: true,
            prompt_logprob_positions: 0..0,
        })
        .collect();
    let (batch, _) = build_input_batch(&scheduled, BLOCK);
    p.gpu.forward(&batch).unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu/device-run.sh runs it"]
fn gpu_sampler_gives_each_sample_its_rows_tokens_when_rows_repeat_skip_or_overflow_a_launch() {
    // What lets a step sample every row on the GPU whatever its makeup (n > 1 forks sample one row several times,
    // prompt log-prob rows are skipped, big steps take several launches): sample i drawn from logits row r with
    // row r's parameters and seed must give the token sampling row r directly gives.
    let rows = 6;
    let (mut p, vocab) = sharp_pair(rows);
    distinct_rows(&mut p, rows);
    let prompt = [3u32, 4, 5];
    let output = [9u32, 9, 11];
    let eos = [0u32];
    let history = RowHistory {
        prompt_token_ids: &prompt,
        output_token_ids: &output,
        eos_token_ids: &eos,
    };
    let params_of = |r: usize| SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        repetition_penalty: if r % 2 == 0 { 1.3 } else { 1.0 },
        logprobs: Some(2),
        ..SamplingParams::default()
    };
    let batch_of = |logits_rows: &[u32]| {
        let mut batch = DeviceSamplingBatch::default();
        for &r in logits_rows {
            batch.push(&params_of(r as usize), &history, vocab, &mut SequenceRng::new(100 + r as u64));
        }
        batch
    };
    let direct_rows: Vec<u32> = (0..rows as u32).collect();
    let direct = batch_of(&direct_rows);
    let want: Vec<u32> = p.gpu.sample(&direct.rows, &direct.edits).unwrap().iter().map(|d| d.token).collect();
    for logits_rows in [vec![5u32, 0, 3, 3, 1, 5, 2, 4, 3], (0..300).map(|j| (j % rows) as u32).collect()] {
        let b = batch_of(&logits_rows);
        let got = p.gpu.sample_rows(&b.rows, &logits_rows, &b.edits).unwrap();
        assert_eq!(got.len(), logits_rows.len());
        for (j, (&r, d)) in logits_rows.iter().zip(&got).enumerate() {
            assert_eq!(d.token, want[r as usize], "sample {j} of logits row {r}");
            assert_eq!(d.top_logprobs.len(), 2);
        }
    }
    // A row index outside the step is refused, not read.
    let b = batch_of(&[0]);
    assert!(p.gpu.sample_rows(&b.rows, &[rows as u32], &b.edits).is_err());
}
