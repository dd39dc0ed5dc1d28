//! Scenario tests of the scheduler against the fake model runner (every step also checks `check_integrity`).

use super::fake_runner::{assert_consistent_with_model, Harness, VOCAB};
use super::{Scheduler, SchedulerConfig};
use crate::config::SchedulingPolicy;
use crate::error::EngineError;
use crate::request::{FinishReason, Request, RequestStatus, StopReason};
use crate::sampling_params::SamplingParams;
use std::sync::Arc;

fn config(block_size: usize, num_blocks: usize, max_num_seqs: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: budget,
        max_model_len: 64,
        block_size,
        num_blocks,
        enable_prefix_caching: true,
        policy: SchedulingPolicy::Fcfs,
        sliding_window: None,
    }
}

/// Never stops on EOS, so lengths are predictable.
fn no_eos() -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy()
    }
}

fn prompt(start: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 1 + (start + i * 7) % (VOCAB - 1)).collect()
}

#[test]
fn chunked_prefill_then_decode() {
    let mut h = Harness::new(config(4, 33, 4, 4));
    let id = h.add(prompt(0, 10), no_eos(), 3, |_| {});
    let chunks: Vec<_> = (0..4).map(|_| h.step().0.scheduled[0].clone()).collect();
    let got: Vec<_> = chunks
        .iter()
        .map(|s| (s.start_pos, s.num_new_tokens, s.sample_ids.to_vec(), s.is_prefill))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 4, vec![], true),
            (4, 4, vec![], true),
            (8, 2, vec![id], true),
            (10, 1, vec![id], false)
        ]
    );
    h.run(100);
    let r = &h.finished[&id];
    assert_eq!(
        (r.status, r.output_token_ids.len()),
        (RequestStatus::Finished(FinishReason::Length), 3)
    );
    assert_consistent_with_model(r);
    assert_eq!(h.sched.stats().num_blocks_in_use, 0);
}

#[test]
fn seats_and_token_budget_bound_admission() {
    let mut h = Harness::new(config(4, 33, 2, 6));
    let a = h.add(prompt(0, 4), no_eos(), 4, |_| {});
    let b = h.add(prompt(1, 4), no_eos(), 4, |_| {});
    let c = h.add(prompt(2, 4), no_eos(), 4, |_| {});
    let (out, _) = h.step();
    let got: Vec<_> = out.scheduled.iter().map(|s| (s.request_id, s.num_new_tokens)).collect();
    assert_eq!(
        got,
        vec![(a, 4), (b, 2)],
        "b gets the budget's remainder as a chunk, c no seat"
    );
    assert_eq!((h.sched.num_running(), h.sched.num_waiting()), (2, 1));
    let (out, _) = h.step();
    let got: Vec<_> = out.scheduled.iter().map(|s| (s.request_id, s.num_new_tokens)).collect();
    assert_eq!(got, vec![(a, 1), (b, 2)]);
    h.run(100);
    assert!(h.finished[&c].output_token_ids.len() == 4);
}

#[test]
fn shared_prefixes_hit_the_cache_unless_salted() {
    let mut h = Harness::new(config(4, 65, 8, 64));
    let shared = prompt(3, 16);
    let with = |suffix: &[u32]| [shared.clone(), suffix.to_vec()].concat();
    let a = h.add(with(&[5, 6, 7]), no_eos(), 2, |_| {});
    h.run(100);
    // B shares 16 tokens = 4 full blocks with A (A's freed blocks are still cached).
    let b = h.add(with(&[9, 9]), no_eos(), 2, |_| {});
    // A prompt that is exactly the shared prefix: the last block is recomputed so a token is computed.
    let exact = h.add(shared.clone(), no_eos(), 2, |_| {});
    let salted = h.add(with(&[9, 9]), no_eos(), 2, |r| r.cache_salt = Some("tenant-1".into()));
    let logprobs = h.add(
        with(&[9, 9]),
        SamplingParams {
            prompt_logprobs: Some(1),
            ..no_eos()
        },
        2,
        |_| {},
    );
    h.run(100);
    let cached = |id| h.finished[&id].num_cached_tokens;
    assert_eq!(
        (cached(a), cached(b), cached(exact), cached(salted), cached(logprobs)),
        (0, 16, 12, 0, 0)
    );
    // Same salt, after the salted request finished: hits.
    let salted2 = h.add(with(&[1]), no_eos(), 2, |r| r.cache_salt = Some("tenant-1".into()));
    // Two new identical prompts admitted in one step: the second hits blocks the first fills this very step.
    let x = h.add(prompt(40, 9), no_eos(), 2, |_| {});
    let y = h.add(prompt(40, 9), no_eos(), 2, |_| {});
    h.run(100);
    assert_eq!(
        (h.finished[&salted2].num_cached_tokens, h.finished[&x].num_cached_tokens),
        (16, 0)
    );
    assert_eq!(h.finished[&y].num_cached_tokens, 8);
    for r in h.finished.values() {
        assert_consistent_with_model(r);
    }
    let s = h.sched.stats();
    assert_eq!(s.prefix_cache_hits, 16 + 12 + 16 + 8);
    // Queries count every looked-up token (the prompt_logprobs request does not look up).
    assert_eq!(s.prefix_cache_queries, (19 + 18 + 16 + 18 + 17 + 9 + 9) as u64);
    assert_eq!(s.num_blocks_in_use, 0);
    assert!(s.num_blocks_cached_free > 0);
}

#[test]
fn priority_policy_admits_urgent_requests_first() {
    let mut h = Harness::new(SchedulerConfig {
        policy: SchedulingPolicy::Priority,
        ..config(4, 33, 1, 64)
    });
    let ids: Vec<_> = [5, 0, 0, -3]
        .iter()
        .map(|&p| h.add(prompt((p + 10) as u32, 5), no_eos(), 2, |r| r.priority = p))
        .collect();
    let mut order = Vec::new();
    while h.sched.has_unfinished_requests() {
        for s in h.step().0.scheduled {
            if !order.contains(&s.request_id) {
                order.push(s.request_id);
            }
        }
    }
    assert_eq!(order, vec![ids[3], ids[1], ids[2], ids[0]]);
}

/// Two 6-token prompts in 8 usable 2-token blocks: both fit, and decoding runs out of blocks.
fn contended(policy: SchedulingPolicy) -> (Harness, u64, u64) {
    let mut h = Harness::new(SchedulerConfig {
        policy,
        max_model_len: 16,
        ..config(2, 9, 4, 64)
    });
    let older_low = h.add(prompt(0, 6), no_eos(), 9, |r| r.priority = 10);
    let newer_high = h.add(prompt(1, 6), no_eos(), 9, |r| r.priority = 0);
    (h, older_low, newer_high)
}

#[test]
fn preemption_victim_follows_the_policy() {
    for (policy, expect_victim_is_older) in [(SchedulingPolicy::Fcfs, false), (SchedulingPolicy::Priority, true)] {
        let (mut h, older_low, newer_high) = contended(policy);
        let mut preempted = Vec::new();
        while h.sched.has_unfinished_requests() {
            preempted.extend(h.step().0.preempted);
        }
        assert!(
            !preempted.is_empty(),
            "{policy:?}: the workload must contend for blocks"
        );
        let victim = if expect_victim_is_older { older_low } else { newer_high };
        assert!(
            preempted.iter().all(|&v| v == victim),
            "{policy:?}: preempted {preempted:?}"
        );
        assert_eq!(h.sched.stats().num_preemptions, preempted.len() as u64);
        assert_eq!(h.finished[&victim].num_preemptions, preempted.len());
        for r in h.finished.values() {
            assert_eq!(r.output_token_ids.len(), 9);
            assert_consistent_with_model(r);
        }
    }
}

#[test]
fn n_samples_fork_share_blocks_and_copy_on_write() {
    let mut h = Harness::new(config(4, 33, 3, 64));
    let p = h.add(prompt(0, 6), SamplingParams { n: 3, ..no_eos() }, 5, |_| {});
    let other = h.add(prompt(1, 6), no_eos(), 5, |_| {});
    let (out, update) = h.step();
    assert_eq!(out.scheduled.len(), 1, "the family holds all 3 seats");
    assert_eq!(out.forked.len(), 2);
    assert!(out.forked.iter().all(|&(parent, _)| parent == p));
    let children: Vec<_> = out.forked.iter().map(|&(_, c)| c).collect();
    assert_eq!(out.scheduled[0].sample_ids.to_vec(), vec![p, children[0], children[1]]);
    assert_eq!(update.new_tokens.len(), 3);
    for (k, &c) in children.iter().enumerate() {
        let r = h.sched.request(c).unwrap();
        assert_eq!(
            (r.parent, r.sample_index, r.num_computed_tokens, r.status),
            (Some(p), k + 1, 6, RequestStatus::Running)
        );
        assert_eq!(h.sched.block_table(c), h.sched.block_table(p));
    }
    // First decode: 3 sequences write into the shared partial block; two copy, the last writes in place.
    let (out, _) = h.step();
    assert_eq!(out.blocks_to_copy.len(), 2);
    assert_eq!(out.scheduled.len(), 3);
    h.run(100);
    let family: Vec<&Request> = [p, children[0], children[1]].iter().map(|id| &h.finished[id]).collect();
    for r in &family {
        assert_eq!(r.output_token_ids.len(), 5);
        assert_consistent_with_model(r);
    }
    assert!(
        family[0].output_token_ids != family[1].output_token_ids
            || family[1].output_token_ids != family[2].output_token_ids
    );
    assert_eq!(h.finished[&other].output_token_ids.len(), 5);
    assert_eq!(h.runner.num_copies, 2);
}

#[test]
fn finish_request_works_in_every_state() {
    let (mut h, _, newer) = contended(SchedulingPolicy::Fcfs);
    while h.sched.request(newer).unwrap().status != RequestStatus::Preempted {
        h.step();
    }
    let waiting = h.add(prompt(9, 4), no_eos(), 3, |_| {});
    let in_use = h.sched.stats().num_blocks_in_use;
    for (id, state) in [(newer, RequestStatus::Preempted), (waiting, RequestStatus::Waiting)] {
        assert_eq!(h.sched.request(id).unwrap().status, state);
        let r = h.sched.finish_request(id, FinishReason::Abort, None).unwrap();
        assert_eq!(r.status, RequestStatus::Finished(FinishReason::Abort));
        assert!(h.sched.finish_request(id, FinishReason::Abort, None).is_none());
        h.sched.check_integrity().unwrap();
    }
    assert_eq!(
        h.sched.stats().num_blocks_in_use,
        in_use,
        "waiting requests hold no blocks"
    );
    // Abort a running request between schedule and update: its samples are ignored, its blocks freed.
    let out = h.sched.schedule();
    let running = out.scheduled[0].request_id;
    let sampled = h.runner.execute(&h.sched, &out);
    let stop = StopReason::String("###".into());
    let r = h
        .sched
        .finish_request(running, FinishReason::Stop, Some(stop.clone()))
        .unwrap();
    assert_eq!(
        (r.status, r.stop_reason),
        (RequestStatus::Finished(FinishReason::Stop), Some(stop))
    );
    let update = h.sched.update_from_output(&out, &sampled);
    assert!(update.new_tokens.is_empty() && update.finished.is_empty());
    h.sched.check_integrity().unwrap();
    assert_eq!(h.sched.stats().num_blocks_in_use, 0);
    assert!(!h.sched.has_unfinished_requests());
}

#[test]
fn a_missing_sample_recomputes_the_last_position() {
    let mut h = Harness::new(config(4, 33, 4, 64));
    let id = h.add(prompt(0, 7), no_eos(), 2, |_| {});
    let out = h.sched.schedule();
    h.runner.execute(&h.sched, &out); // computes the KV; the sample is lost
    h.sched.update_from_output(&out, &[]);
    h.sched.check_integrity().unwrap();
    let r = h.sched.request(id).unwrap();
    assert_eq!((r.num_computed_tokens, r.output_token_ids.len()), (6, 0));
    let (out, _) = h.step();
    assert_eq!((out.scheduled[0].start_pos, out.scheduled[0].num_new_tokens), (6, 1));
    h.run(10);
    assert_consistent_with_model(&h.finished[&id]);
}

#[test]
fn token_level_stops() {
    let mut h = Harness::new(SchedulerConfig {
        max_model_len: 16,
        ..config(4, 33, 4, 64)
    });
    let ctx = h.add(prompt(0, 10), no_eos(), 100, |_| {});
    // Every token is a stop token, but only from the 3rd output on.
    let all_stop = SamplingParams {
        stop_token_ids: (0..VOCAB).collect(),
        min_tokens: 3,
        ..no_eos()
    };
    let stopped = h.add(prompt(1, 5), all_stop, 100, |_| {});
    h.run(100);
    let r = &h.finished[&ctx];
    assert_eq!(
        (r.status, r.num_tokens()),
        (RequestStatus::Finished(FinishReason::Length), 16),
        "context full"
    );
    let r = &h.finished[&stopped];
    let last = *r.output_token_ids.last().unwrap();
    assert_eq!(
        (r.status, r.output_token_ids.len()),
        (RequestStatus::Finished(FinishReason::Stop), 3)
    );
    // ignore_eos: even an EOS token stops only as a listed stop id.
    assert_eq!(r.stop_reason, Some(StopReason::TokenId(last)));
}

#[test]
fn rejects_configs_and_requests_that_could_never_run() {
    match Scheduler::new(config(4, 16, 4, 64)) {
        Err(EngineError::InvalidParam { field, .. }) => assert_eq!(field, "num_blocks"),
        other => panic!("15 blocks of 4 cannot hold 64 tokens: {other:?}"),
    }
    let mut s = Scheduler::new(config(4, 17, 2, 64)).unwrap();
    let mut req = |len: usize, n: usize| {
        let id = s.alloc_request_id();
        let params = Arc::new(SamplingParams {
            n,
            ..SamplingParams::default()
        });
        s.add_request(Request::new(id, prompt(0, len), params, 4, Arc::new(vec![]), id))
            .map(|_| id)
    };
    assert!(matches!(req(0, 1), Err(EngineError::InvalidParam { .. })));
    assert!(matches!(req(64, 1), Err(EngineError::ContextLength { .. })));
    assert!(matches!(req(4, 3), Err(EngineError::InvalidParam { .. })));
    let id = req(63, 2).unwrap();
    let dup = Request::new(id, vec![1], Arc::new(SamplingParams::default()), 1, Arc::new(vec![]), 0);
    assert!(s.add_request(dup).is_err());
    s.check_integrity().unwrap();
}

/// KV waste is the running requests' unfilled block tails: 10 prompt tokens in blocks of 4 hold 12 slots, 2 of
/// them empty; after 2 decodes 12 tokens fill them; a finished request holds nothing.
#[test]
fn kv_slot_usage_counts_the_unfilled_tails() {
    let mut h = Harness::new(config(4, 33, 4, 64));
    assert_eq!(h.sched.kv_slot_usage(), (0, 0));
    let a = h.add(prompt(0, 10), no_eos(), 3, |_| {});
    h.step(); // prefill: 10 computed; the sampled token is not in the KV yet
    assert_eq!(h.sched.kv_slot_usage(), (12, 2));
    h.add(prompt(50, 5), no_eos(), 8, |_| {});
    h.step(); // a: 11 computed in 12 slots; b: 5 computed in 8
    assert_eq!(h.sched.kv_slot_usage(), (20, 1 + 3));
    h.run(100);
    assert!(h.finished.contains_key(&a));
    assert_eq!(h.sched.kv_slot_usage(), (0, 0));
}
