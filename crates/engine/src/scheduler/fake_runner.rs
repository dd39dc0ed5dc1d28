//! Test-only fake model runner over a real paged slot array, so scheduler tests check the KV bookkeeping for
//! real: block tables, prefix hits, copy-on-write and recompute after preemption.
//!
//! Each slot holds what the KV of a position depends on in a real model: the token AND a hash of the whole prefix
//! up to it. A step applies `blocks_to_copy`, writes every computed position through the request's block table,
//! then, for each sampling request, reads its whole context back through its own table and asserts each slot
//! holds exactly its prefix. The next token is a hash of the read-back context (and the sample index, standing in
//! for a seeded sampler), so the "model" output depends on the KV actually read.
//!
//! With a sliding window `w` (`with_window`) the model reads only the last `w` positions, as the real kernels
//! do, and every position a token of the step reads (`p + 1 - w ..= p`) must map to a real block holding its
//! prefix: a block released too early fails the step.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::kv::NULL_BLOCK_ID;
use crate::request::{Request, RequestId};
use crate::sampling_params::SamplingParams;
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput, UpdateResult};

pub const VOCAB: u32 = 48;
pub const EOS: u32 = 0;

/// What a slot holds: (token, hash of tokens[0..=pos]).
type Kv = (u32, u64);

fn mix(h: u64, x: u64) -> u64 {
    // splitmix64 step: cheap, deterministic, well spread.
    let mut z = h ^ x.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The KV every position of `tokens` must hold.
pub fn expected_kv(tokens: &[u32]) -> Vec<Kv> {
    let mut h = 0x1234_5678;
    tokens
        .iter()
        .map(|&t| {
            h = mix(h, t as u64);
            (t, h)
        })
        .collect()
}

/// The fake model: next token after a context whose KV is `kv`.
pub fn next_token(kv: &[Kv], sample_index: usize) -> u32 {
    let h = kv
        .iter()
        .fold(mix(0, sample_index as u64), |h, &(t, p)| mix(mix(h, t as u64), p));
    (h % VOCAB as u64) as u32
}

/// First position a token at `pos` reads under `window`.
fn window_start(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// What the model would output after `tokens` (no cache involved) when it reads the last `window` positions
/// (all of them for None): the reference for outputs.
pub fn reference_next(tokens: &[u32], sample_index: usize, window: Option<usize>) -> u32 {
    let kv = expected_kv(tokens);
    let lo = window_start(tokens.len().saturating_sub(1), window);
    next_token(&kv[lo..], sample_index)
}

/// Asserts every output token of `r` is what the full-attention model produces after the tokens before it.
pub fn assert_consistent_with_model(r: &Request) {
    assert_consistent_in_window(r, None)
}

/// As [`assert_consistent_with_model`] for the model reading the last `window` positions.
pub fn assert_consistent_in_window(r: &Request, window: Option<usize>) {
    let all = r.tokens(0, r.num_tokens());
    for k in 0..r.output_token_ids.len() {
        let ctx = &all[..r.num_prompt_tokens() + k];
        assert_eq!(
            r.output_token_ids[k],
            reference_next(ctx, r.sample_index, window),
            "request {} token {k}",
            r.id
        );
    }
}

pub struct FakeRunner {
    block_size: usize,
    slots: Vec<Option<Kv>>,
    window: Option<usize>,
    pub num_copies: usize,
}

impl FakeRunner {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            block_size,
            slots: vec![None; num_blocks * block_size],
            window: None,
            num_copies: 0,
        }
    }

    /// The model reads only the last `window` positions of each token's context.
    pub fn with_window(mut self, window: Option<usize>) -> Self {
        self.window = window;
        self
    }

    /// Reads positions `range` of a request back through `table`, asserting each holds its expected KV.
    fn read_checked(&self, sid: RequestId, table: &[u32], want: &[Kv], range: std::ops::Range<usize>) -> Vec<Kv> {
        range
            .map(|pos| {
                let got = self.slots[self.slot(table, pos)]
                    .unwrap_or_else(|| panic!("request {sid} pos {pos}: empty slot"));
                assert_eq!(got, want[pos], "request {sid} position {pos}: wrong KV");
                got
            })
            .collect()
    }

    fn slot(&self, table: &[u32], pos: usize) -> usize {
        let block = table[pos / self.block_size];
        assert_ne!(block, NULL_BLOCK_ID, "position {pos} maps to the null block");
        block as usize * self.block_size + pos % self.block_size
    }

    /// Runs one step; returns the sampled tokens.
    pub fn execute(&mut self, sched: &Scheduler, out: &SchedulerOutput) -> Vec<(RequestId, u32)> {
        let bs = self.block_size;
        // Copies read the pre-step contents of their sources.
        let copies: Vec<(usize, Vec<Option<Kv>>)> = out
            .blocks_to_copy
            .iter()
            .map(|&(src, dst)| {
                (
                    dst as usize * bs,
                    self.slots[src as usize * bs..(src as usize + 1) * bs].to_vec(),
                )
            })
            .collect();
        for (at, data) in copies {
            self.slots[at..at + bs].copy_from_slice(&data);
            self.num_copies += 1;
        }
        // All KV writes of the step happen before any read (as layer by layer in a real forward).
        for s in &out.scheduled {
            let r = sched.request(s.request_id).expect("scheduled request is live");
            let table = sched.block_table(s.request_id);
            let end = s.start_pos + s.num_new_tokens;
            assert!(end <= r.num_tokens(), "request {} scheduled past its tokens", r.id);
            let kv = expected_kv(&r.tokens(0, end));
            for (pos, &value) in kv.iter().enumerate().skip(s.start_pos) {
                let slot = self.slot(table, pos);
                self.slots[slot] = Some(value);
            }
        }
        if self.window.is_some() {
            // Every token of the chunk reads its window: from the first token's window start to the chunk's end.
            for s in &out.scheduled {
                let r = sched.request(s.request_id).expect("scheduled request is live");
                let end = s.start_pos + s.num_new_tokens;
                let want = expected_kv(&r.tokens(0, end));
                let lo = window_start(s.start_pos, self.window);
                self.read_checked(r.id, sched.block_table(r.id), &want, lo..end);
            }
        }
        let mut sampled = Vec::new();
        for s in &out.scheduled {
            for &sid in &s.sample_ids {
                let r = sched.request(sid).expect("sampling request is live");
                let len = r.num_tokens();
                assert_eq!(
                    len,
                    s.start_pos + s.num_new_tokens,
                    "request {sid} samples from a context it lacks"
                );
                let want = expected_kv(&r.tokens(0, len));
                let lo = window_start(len - 1, self.window);
                let read = self.read_checked(sid, sched.block_table(sid), &want, lo..len);
                sampled.push((sid, next_token(&read, r.sample_index)));
            }
        }
        sampled
    }
}

/// A scheduler driven by the fake runner, checking the step's output limits and `check_integrity` every step.
pub struct Harness {
    pub sched: Scheduler,
    pub runner: FakeRunner,
    pub finished: HashMap<RequestId, Request>,
    pub steps: usize,
}

impl Harness {
    pub fn new(config: SchedulerConfig) -> Self {
        let runner = FakeRunner::new(config.num_blocks, config.block_size).with_window(config.sliding_window);
        Self {
            sched: Scheduler::new(config).expect("valid test config"),
            runner,
            finished: HashMap::new(),
            steps: 0,
        }
    }

    /// Adds a request (arrival = id) after letting `edit` adjust it.
    pub fn add(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
        max_tokens: usize,
        edit: impl FnOnce(&mut Request),
    ) -> RequestId {
        let id = self.sched.alloc_request_id();
        let mut r = Request::new(id, prompt, Arc::new(params), max_tokens, Arc::new(vec![EOS]), id);
        edit(&mut r);
        self.sched.add_request(r).expect("valid test request");
        id
    }

    pub fn step(&mut self) -> (SchedulerOutput, UpdateResult) {
        let out = self.sched.schedule();
        check_output_limits(&self.sched, &out);
        let sampled = self.runner.execute(&self.sched, &out);
        let update = self.sched.update_from_output(&out, &sampled);
        for r in &update.finished_requests {
            self.finished.insert(r.id, r.clone());
        }
        self.steps += 1;
        if let Err(e) = self.sched.check_integrity() {
            panic!("integrity broken after step {}: {e}", self.steps);
        }
        (out, update)
    }

    /// Steps until every request finished; panics if that takes more than `max_steps` (a livelock).
    pub fn run(&mut self, max_steps: usize) {
        while self.sched.has_unfinished_requests() {
            assert!(self.steps < max_steps, "no completion after {max_steps} steps");
            self.step();
        }
    }
}

/// The limits every `SchedulerOutput` must respect.
pub fn check_output_limits(sched: &Scheduler, out: &SchedulerOutput) {
    let cfg = sched.config();
    let sum: usize = out.scheduled.iter().map(|s| s.num_new_tokens).sum();
    assert_eq!(out.num_batched_tokens, sum);
    assert!(
        sum <= cfg.max_num_batched_tokens,
        "{sum} tokens batched, budget {}",
        cfg.max_num_batched_tokens
    );
    assert!(
        sched.num_running() <= cfg.max_num_seqs,
        "{} running, max {}",
        sched.num_running(),
        cfg.max_num_seqs
    );
    let mut ids = HashSet::new();
    for s in &out.scheduled {
        assert!(s.num_new_tokens > 0, "request {} scheduled for 0 tokens", s.request_id);
        assert!(ids.insert(s.request_id), "request {} scheduled twice", s.request_id);
        assert!(
            !out.preempted.contains(&s.request_id),
            "request {} scheduled and preempted",
            s.request_id
        );
        for &sid in &s.sample_ids {
            assert!(sid == s.request_id || ids.insert(sid), "request {sid} samples twice");
        }
    }
}
