//! Seeded randomized workloads with beam search requests mixed in, driven the way `EngineCore` drives them (all
//! beams of a request advance in the same step or none does; a dropped beam's slot is rebased onto a beam
//! chosen again, sharing its blocks; the search's end finishes every beam). Each run uses the fake runner, which
//! reads every beam's context back through its own block table, and checks `check_integrity` after every step
//! and after every abort. Each workload is replayed without pressure: the finished hypotheses of every beam
//! request and every ordinary sequence must be the same, and no block may be left in use.
//!
//! The second test runs the same kind of workload on a tiny cache (about one full context): a search whose worst
//! case exceeds it must be refused when added (and only such a search), and every other request must finish with
//! the same result as without pressure, with no block left in use: whole-search admission and preemption
//! (`beam_group.rs`) leave no stall.
//!
//! The third runs the first kind with a sliding window on the fake model: beams fork, rebase and recompute on
//! tables whose blocks before the window are released (the runner fails any read of a released block).

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fake_runner::{assert_consistent_in_window, check_output_limits, expected_kv, FakeRunner, EOS, VOCAB};
use super::{beam_worst_case_blocks, Scheduler, SchedulerConfig};
use crate::config::SchedulingPolicy;
use crate::engine::beam_search::{BeamSearch, BeamStep, Stop};
use crate::request::{FinishReason, Request, RequestId, StopReason};
use crate::sampling_params::{BeamSearchParams, EarlyStopping, SamplingParams};

const MAX_MODEL_LEN: usize = 40;

struct Spec {
    arrive_step: usize,
    prompt: Vec<u32>,
    params: SamplingParams,
    max_tokens: usize,
}

/// The fake model's log-probs after `context`: a hash of context + token, so they depend on the whole beam.
fn fake_proposals(context: &[u32], m: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = (0..VOCAB)
        .map(|t| {
            let mut ctx = context.to_vec();
            ctx.push(t);
            let h = expected_kv(&ctx).last().unwrap().1;
            (t, -((h % 10_007) as f32) / 1000.0)
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(m);
    all
}

fn eos_stop(_: &[u32], t: u32) -> Option<Stop> {
    (t == EOS).then_some((FinishReason::Stop, Some(StopReason::Eos)))
}

struct Family {
    spec: usize,
    search: BeamSearch,
    /// Beam slot -> sequence id (slot 0 is the submitted request; the others appear when it forks).
    seqs: Vec<RequestId>,
}

#[derive(Default)]
struct Report {
    /// Spec index -> the finished hypotheses' tokens, best first.
    beams: HashMap<usize, Vec<Vec<u32>>>,
    /// (spec, sample) -> ordinary sequence output.
    sequences: HashMap<(usize, usize), Vec<u32>>,
    aborted: HashSet<usize>,
    /// Beam searches refused at admission (their worst case exceeds the cache).
    refused: HashSet<usize>,
    beam_preemptions: usize,
    rebases: usize,
    /// Some request released blocks out of the sliding window.
    released: bool,
}

fn workload(seed: u64, tiny: bool) -> (SchedulerConfig, Vec<Spec>, Vec<(usize, usize)>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let block_size = [2, 4, 8][rng.random_range(0..3)];
    let min_blocks = MAX_MODEL_LEN.div_ceil(block_size);
    let config = SchedulerConfig {
        max_num_seqs: rng.random_range(4..=8),
        max_num_batched_tokens: rng.random_range(6..=32),
        max_model_len: MAX_MODEL_LEN,
        block_size,
        // At least one and a half full contexts (the pressure comes from the mix), or, `tiny`, about one: then
        // some searches cannot fit at all and others fill the cache alone.
        num_blocks: if tiny {
            1 + min_blocks + rng.random_range(0..=2)
        } else {
            1 + min_blocks + rng.random_range(min_blocks / 2..=min_blocks)
        },
        enable_prefix_caching: rng.random_bool(0.7),
        policy: if rng.random_bool(0.5) {
            SchedulingPolicy::Fcfs
        } else {
            SchedulingPolicy::Priority
        },
        sliding_window: None,
    };
    let specs = (0..rng.random_range(3..=8))
        .map(|_| {
            let len = rng.random_range(2..=16);
            let prompt: Vec<u32> = (0..len).map(|_| rng.random_range(1..VOCAB)).collect();
            let beam = rng.random_bool(0.6);
            let max_width = config.max_num_seqs.min(3);
            let params = if beam {
                let k = rng.random_range(2..=max_width);
                SamplingParams {
                    n: k,
                    beam_search: Some(BeamSearchParams {
                        beam_width: k,
                        length_penalty: [0.0, 1.0, 2.0][rng.random_range(0..3)],
                        early_stopping: [EarlyStopping::Done, EarlyStopping::Heuristic, EarlyStopping::Never]
                            [rng.random_range(0..3)],
                    }),
                    ignore_eos: true, // the beam search decides stops, as in EngineCore
                    ..SamplingParams::greedy()
                }
            } else {
                SamplingParams {
                    n: rng.random_range(1..=2),
                    ..SamplingParams::greedy()
                }
            };
            Spec {
                arrive_step: rng.random_range(0..10),
                prompt,
                params,
                max_tokens: rng.random_range(2..=12),
            }
        })
        .collect();
    let aborts = (0..rng.random_range(0..=2))
        .map(|_| (rng.random_range(0..40), rng.random_range(0..1000)))
        .collect();
    (config, specs, aborts)
}

fn run(config: SchedulerConfig, specs: &[Spec], aborts: &[(usize, usize)]) -> Report {
    let mut sched = Scheduler::new(config.clone()).expect("valid config");
    let mut runner = FakeRunner::new(config.num_blocks, config.block_size).with_window(config.sliding_window);
    let mut families: HashMap<RequestId, Family> = HashMap::new(); // by slot-0 id
    let mut family_of: HashMap<RequestId, RequestId> = HashMap::new(); // beam seq -> slot-0 id
    let mut spec_of: HashMap<RequestId, usize> = HashMap::new();
    let mut report = Report::default();
    let last_arrival = specs.iter().map(|s| s.arrive_step).max().unwrap_or(0);
    let mut step = 0;
    while step <= last_arrival || sched.has_unfinished_requests() {
        if step >= 3000 {
            let fams: Vec<_> = families
                .values()
                .map(|f| (f.spec, f.seqs.clone(), f.search.generated_len()))
                .collect();
            let reqs: Vec<_> = sched
                .requests
                .values()
                .map(|r| (r.id, r.status, r.num_computed_tokens, r.num_tokens(), r.parent))
                .collect();
            panic!("livelock: still running after {step} steps; config {config:?}; running {:?}; families {fams:?}; requests {reqs:?}", sched.running);
        }
        for (i, s) in specs.iter().enumerate().filter(|(_, s)| s.arrive_step == step) {
            let id = sched.alloc_request_id();
            let beam = s.params.beam_search.is_some();
            let eos = if beam { vec![] } else { vec![EOS] };
            let r = Request::new(
                id,
                s.prompt.clone(),
                Arc::new(s.params.clone()),
                s.max_tokens,
                Arc::new(eos),
                id,
            );
            let worst = beam_worst_case_blocks(s.prompt.len(), s.max_tokens, s.params.n, config.block_size);
            let fits = !beam || (worst < config.num_blocks && s.params.n <= config.max_num_batched_tokens);
            match sched.add_request(r) {
                Ok(()) => assert!(fits, "spec {i}: a search needing {worst} blocks was admitted to {config:?}"),
                Err(e) => {
                    assert!(!fits, "spec {i}: refused although it fits: {e}");
                    report.refused.insert(i);
                    continue;
                }
            }
            spec_of.insert(id, i);
            if let Some(b) = &s.params.beam_search {
                families.insert(
                    id,
                    Family {
                        spec: i,
                        search: BeamSearch::new(b.clone(), s.max_tokens, 1),
                        seqs: vec![id],
                    },
                );
                family_of.insert(id, id);
            }
        }
        for &(_, pick) in aborts.iter().filter(|(at, _)| *at == step) {
            let mut live: Vec<RequestId> = spec_of
                .keys()
                .copied()
                .filter(|&id| sched.request(id).is_some())
                .collect();
            live.sort_unstable();
            let Some(&id) = live.get(pick % live.len().max(1)) else {
                continue;
            };
            // Aborting a beam request ends all of its beams (EngineCore::abort does the same).
            let victims = match family_of.get(&id).and_then(|root| families.remove(root)) {
                Some(f) => {
                    report.aborted.insert(f.spec);
                    f.seqs
                }
                None => {
                    report.aborted.insert(spec_of[&id]);
                    vec![id]
                }
            };
            for v in victims {
                sched.finish_request(v, FinishReason::Abort, None);
            }
            sched
                .check_integrity()
                .unwrap_or_else(|e| panic!("after aborting {id}: {e}"));
        }

        let out = sched.schedule();
        check_output_limits(&sched, &out);
        for &(parent, child) in &out.forked {
            spec_of.insert(child, spec_of[&parent]);
            if let Some(f) = families.get_mut(&parent) {
                f.seqs.push(child);
                family_of.insert(child, parent);
            }
        }
        report.beam_preemptions += out.preempted.iter().filter(|id| family_of.contains_key(id)).count();
        let sampled = runner.execute(&sched, &out);
        let mut pairs = Vec::new();
        let mut proposals: HashMap<RequestId, Vec<(u32, f32)>> = HashMap::new();
        for (sid, tok) in sampled {
            match family_of.get(&sid).and_then(|root| families.get(root)) {
                Some(f) => {
                    let r = sched.request(sid).unwrap();
                    proposals.insert(
                        sid,
                        fake_proposals(&r.tokens(0, r.num_tokens()), f.search.candidates_per_beam()),
                    );
                }
                None => pairs.push((sid, tok)),
            }
        }
        let mut rebases = Vec::new();
        let mut done = Vec::new();
        for (&root, f) in families.iter_mut() {
            if f.seqs.len() != f.search.width() || !f.seqs.iter().all(|s| proposals.contains_key(s)) {
                continue; // not every beam got logits this step: none advances
            }
            let props: Vec<_> = f.seqs.iter().map(|s| proposals[s].clone()).collect();
            match f.search.step(&props, eos_stop) {
                BeamStep::Continue(moves) => {
                    for m in moves {
                        pairs.push((f.seqs[m.slot], m.token));
                        rebases.push((f.seqs[m.slot], f.seqs[m.parent], m.token));
                    }
                }
                BeamStep::Done => done.push(root),
            }
        }
        let update = sched.update_from_output(&out, &pairs);
        for (slot, parent, token) in rebases {
            if slot != parent {
                sched.rebase_beam(slot, parent, token).expect("rebase a running beam");
                report.rebases += 1;
            }
        }
        for root in done {
            let f = families.remove(&root).unwrap();
            for &s in &f.seqs {
                sched.finish_request(s, FinishReason::Stop, None).expect("live beam");
            }
            let best = f
                .search
                .best(f.search.width())
                .iter()
                .map(|h| h.tokens.clone())
                .collect();
            report.beams.insert(f.spec, best);
        }
        for r in &update.finished_requests {
            assert!(
                !family_of.contains_key(&r.id),
                "the scheduler stopped a beam on its own"
            );
            assert_consistent_in_window(r, config.sliding_window);
            report
                .sequences
                .insert((spec_of[&r.id], r.sample_index), r.output_token_ids.clone());
        }
        sched
            .check_integrity()
            .unwrap_or_else(|e| panic!("integrity broken after step {step}: {e}"));
        if let Some(window) = config.sliding_window {
            let bound = window.div_ceil(config.block_size) + 2;
            for &id in &sched.running {
                let held = sched.num_held_blocks(id);
                assert!(held <= bound, "step {step}: request {id} holds {held} blocks, window bound {bound}");
                report.released |= held < sched.block_table(id).len();
            }
        }
        step += 1;
    }
    let stats = sched.stats();
    assert_eq!(stats.num_blocks_in_use, 0, "blocks leaked");
    report
}

fn check_seed(seed: u64, tiny: bool, windowed: bool) -> Report {
    let (mut config, specs, aborts) = workload(seed, tiny);
    if windowed {
        // Its own random stream: the plain workloads stay as they were.
        config.sliding_window = Some(ChaCha8Rng::seed_from_u64(seed ^ 0x51d1_4e00).random_range(1..=12));
    }
    let pressured = run(config.clone(), &specs, &aborts);
    let relaxed = SchedulerConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: 4096,
        num_blocks: 1 + 64 * MAX_MODEL_LEN,
        enable_prefix_caching: false,
        ..config
    };
    let reference = run(relaxed, &specs, &[]);
    assert!(reference.refused.is_empty());
    for (i, s) in specs.iter().enumerate() {
        if pressured.aborted.contains(&i) || pressured.refused.contains(&i) {
            continue;
        }
        if s.params.beam_search.is_some() {
            let got = pressured
                .beams
                .get(&i)
                .unwrap_or_else(|| panic!("spec {i}: beam search never ended"));
            assert_eq!(
                got.len(),
                s.params.n,
                "spec {i}: a beam search returns beam_width hypotheses"
            );
            assert_eq!(got, &reference.beams[&i], "spec {i}: beams differ under pressure");
        } else {
            for k in 0..s.params.n {
                assert_eq!(
                    pressured.sequences.get(&(i, k)),
                    reference.sequences.get(&(i, k)),
                    "spec {i} sample {k}"
                );
            }
        }
    }
    pressured
}

/// Runs `check_seed` over the seeds (or `BEAM_SEED` alone), naming the failing seed.
fn check_seeds(tiny: bool, windowed: bool) -> Vec<Report> {
    let seeds: std::ops::Range<u64> = std::env::var("BEAM_SEED").ok().map_or(0..300, |s| {
        let x: u64 = s.parse().unwrap();
        x..x + 1
    });
    seeds
        .map(|seed| {
            catch_unwind(AssertUnwindSafe(|| check_seed(seed, tiny, windowed))).unwrap_or_else(|e| {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("seed {seed} (tiny cache: {tiny}, windowed: {windowed}) failed: {}", msg.unwrap_or_default())
            })
        })
        .collect()
}

#[test]
fn beam_requests_mixed_into_randomized_workloads_keep_invariants_and_results() {
    let reports = check_seeds(false, false);
    let n = reports.len();
    let preempted = reports.iter().filter(|r| r.beam_preemptions > 0).count();
    let rebased = reports.iter().filter(|r| r.rebases > 0).count();
    // Whole-search admission makes beam preemption rarer here (29 of the 300 seeds at the time of writing).
    assert!(n == 1 || preempted > n / 20, "only {preempted} of {n} runs preempted a beam");
    assert!(n == 1 || rebased > n / 2, "only {rebased} of {n} runs rebased a beam");
}

#[test]
fn beam_requests_under_a_tiny_cache_finish_or_are_refused_at_admission() {
    let reports = check_seeds(true, false);
    let n = reports.len();
    let refused = reports.iter().filter(|r| !r.refused.is_empty()).count();
    let finished = reports.iter().filter(|r| !r.beams.is_empty()).count();
    let preempted = reports.iter().filter(|r| r.beam_preemptions > 0).count();
    assert!(n == 1 || refused > n / 10, "only {refused} of {n} runs refused a search");
    assert!(n == 1 || finished > n / 2, "only {finished} of {n} runs finished a search");
    assert!(n == 1 || preempted > n / 10, "only {preempted} of {n} runs preempted a search");
}

#[test]
fn windowed_beam_requests_keep_invariants_and_results() {
    let reports = check_seeds(false, true);
    let n = reports.len();
    let released = reports.iter().filter(|r| r.released).count();
    let rebased = reports.iter().filter(|r| r.rebases > 0).count();
    // 290 of the 300 seeds released blocks at the time of writing.
    assert!(n == 1 || released > n * 9 / 10, "only {released} of {n} runs released blocks");
    assert!(n == 1 || rebased > n / 2, "only {rebased} of {n} runs rebased a beam");
}
