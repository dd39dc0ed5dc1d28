//! `Scheduler`: decides each step which requests compute how many tokens (vLLM V1's token-count scheduler).
//!
//! Every request has `num_tokens()` and `num_computed_tokens`; a step hands out tokens until the second catches
//! up with the first. Running requests go first, in order, each getting `min(num_tokens - num_computed,
//! remaining budget)` (so decodes and unfinished prefill chunks share one rule); then waiting requests are
//! admitted in policy order while seats and budget remain (a long prompt gets a partial chunk). Prefix-cache hits
//! make `num_computed_tokens` jump at admission.
//!
//! When a running request cannot get blocks, the scheduler preempts by recompute: the victim (newest running
//! request under FCFS; lowest priority, then newest arrival, under Priority) loses its blocks and goes back to
//! the front of the waiting order. If the victim would be the request itself, that request sits this step out.
//! A step that had to preempt or sit out admits nobody new (admitting would only steal the blocks back).
//!
//! Beam search: the beams of one search are scheduled, preempted and admitted as one unit, and a search that
//! could never fit is refused when added (`beam_group.rs`).
//!
//! `n > 1`: when a request's final prompt chunk is scheduled it forks `n - 1` children sharing its blocks; they
//! sample from the parent's logits that step (`sample_ids`). A request with pending forks occupies `n` seats
//! from admission on, so forking never exceeds `max_num_seqs`.
//!
//! Sliding window (`SchedulerConfig::sliding_window`, models whose every layer is windowed): once a step's
//! tokens are computed, each request releases the blocks wholly before its next token's window
//! (`kv/sliding_window.rs`), so decodes past the window hold a bounded number of blocks and the freed blocks
//! serve other requests (or preemption needs) at once.
//!
//! `schedule` advances nothing but prefix hits; `update_from_output` advances `num_computed_tokens`, appends the
//! sampled tokens and applies token-level stops. The two must alternate.

use smallvec::SmallVec;
use std::collections::{HashMap, HashSet};

use super::output::{ScheduledRequest, SchedulerOutput, SchedulerStats, UpdateResult};
use super::request_queue::RequestQueue;
use super::token_stop::check_token_stop;
use crate::config::{EngineConfig, SchedulingPolicy};
use crate::error::{EngineError, Result};
use crate::kv::KvCacheManager;
use crate::request::{FinishReason, Request, RequestId, RequestStatus, StopReason};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running at once (forked samples count, each one a seat).
    pub max_num_seqs: usize,
    /// Most tokens computed in one step.
    pub max_num_batched_tokens: usize,
    /// Context cap: prompt + output never exceed it.
    pub max_model_len: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks of the cache INCLUDING the reserved null block 0 (the KV tensor's block dimension), so
    /// `num_blocks - 1` are usable.
    pub num_blocks: usize,
    pub enable_prefix_caching: bool,
    pub policy: SchedulingPolicy,
    /// Every layer of the model attends to only the last this many positions: blocks before the window are
    /// released during decode. None for full attention AND for interleaved local/global models (Gemma), whose
    /// global layers read every block.
    pub sliding_window: Option<usize>,
}

impl SchedulerConfig {
    /// The scheduler's part of an `EngineConfig`, given the resolved context length and the KV block count.
    pub fn from_engine(config: &EngineConfig, max_model_len: usize, num_blocks: usize) -> Self {
        Self {
            max_num_seqs: config.max_num_seqs,
            max_num_batched_tokens: config.max_num_batched_tokens,
            max_model_len,
            block_size: config.block_size,
            num_blocks,
            enable_prefix_caching: config.enable_prefix_caching,
            policy: config.scheduling_policy,
            // A property of the model, not of the engine config: the engine builder sets it.
            sliding_window: None,
        }
    }
}

#[derive(Debug)]
pub struct Scheduler {
    pub(super) config: SchedulerConfig,
    pub(super) kv: KvCacheManager,
    /// Every unfinished request; finished ones are handed back and forgotten.
    pub(super) requests: HashMap<RequestId, Request>,
    pub(super) waiting: RequestQueue,
    /// Running requests in admission order (the FCFS preemption victim is the last).
    pub(super) running: Vec<RequestId>,
    /// Parents whose `n - 1` children exist (their output may still be empty until the step's update).
    pub(super) forked_parents: HashSet<RequestId>,
    pub(super) next_id: RequestId,
    pub(super) num_preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        if config.max_num_seqs == 0 {
            return Err(EngineError::invalid("max_num_seqs", "must be at least 1"));
        }
        if config.max_num_batched_tokens == 0 {
            return Err(EngineError::invalid("max_num_batched_tokens", "must be at least 1"));
        }
        if config.max_model_len < 2 {
            return Err(EngineError::invalid("max_model_len", "must be at least 2"));
        }
        let mut kv = KvCacheManager::new(config.num_blocks, config.block_size, config.enable_prefix_caching)?;
        kv.set_sliding_window(config.sliding_window);
        // One sequence at full context must fit on its own, or it could never finish (vLLM checks the same; with
        // a sliding window it would need fewer blocks, but we keep the full-attention bound).
        let needed = kv.blocks_for(config.max_model_len);
        if kv.pool().num_usable_blocks() < needed {
            return Err(EngineError::invalid(
                "num_blocks",
                format!(
                    "{} usable KV blocks of {} tokens cannot hold one {}-token context ({needed} blocks)",
                    kv.pool().num_usable_blocks(),
                    config.block_size,
                    config.max_model_len
                ),
            ));
        }
        Ok(Self {
            waiting: RequestQueue::new(config.policy),
            config,
            kv,
            requests: HashMap::new(),
            running: Vec::new(),
            forked_parents: HashSet::new(),
            next_id: 1,
            num_preemptions: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The prefix cache's block hash function (SHA-256 unless changed here, before any request is added).
    pub fn with_block_hash_algo(mut self, algo: crate::kv::block_hash::BlockHashAlgo) -> Self {
        self.kv.set_hash_algo(algo);
        self
    }

    /// A fresh request id; the engine and forking both draw from here so ids never collide.
    pub fn alloc_request_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queues a request. Rejects an empty prompt, a prompt that leaves no room for output, a reused id, `n`
    /// above `max_num_seqs` (its samples could never run together), and a beam search that could never fit
    /// (`check_beam_search_fits`).
    pub fn add_request(&mut self, mut request: Request) -> Result<()> {
        let prompt_len = request.num_prompt_tokens();
        if prompt_len == 0 {
            return Err(EngineError::invalid("prompt", "must contain at least one token"));
        }
        if prompt_len >= self.config.max_model_len {
            return Err(EngineError::ContextLength {
                prompt_len,
                max_tokens: request.max_tokens,
                max_model_len: self.config.max_model_len,
            });
        }
        if request.params.num_sequences() > self.config.max_num_seqs {
            let field = if request.params.selects_best() { "best_of" } else { "n" };
            return Err(EngineError::invalid(
                field,
                format!(
                    "{} samples exceed max_num_seqs ({})",
                    request.params.num_sequences(),
                    self.config.max_num_seqs
                ),
            ));
        }
        if request.max_tokens == 0 {
            return Err(EngineError::invalid("max_tokens", "must be at least 1"));
        }
        if request.params.beam_search.is_some() {
            super::check_beam_search_fits(
                prompt_len,
                request.max_tokens,
                request.params.num_sequences(),
                self.config.block_size,
                self.kv.pool().num_usable_blocks(),
                self.config.max_num_batched_tokens,
            )?;
        }
        if self.requests.contains_key(&request.id) {
            return Err(EngineError::Internal(format!(
                "request id {} is already scheduled",
                request.id
            )));
        }
        self.next_id = self.next_id.max(request.id + 1);
        request.status = RequestStatus::Waiting;
        request.num_computed_tokens = 0;
        self.waiting.push(&request);
        self.requests.insert(request.id, request);
        Ok(())
    }

    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.requests.get(&id)
    }

    /// The request's KV blocks (empty while it waits; with a sliding window, leading entries released out of
    /// the window are the null block 0).
    pub fn block_table(&self, id: RequestId) -> &[u32] {
        self.kv.block_table(id)
    }

    /// Real blocks in the request's table (null entries excluded).
    pub fn num_held_blocks(&self, id: RequestId) -> usize {
        self.kv.num_held_blocks(id)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn has_unfinished_requests(&self) -> bool {
        !self.requests.is_empty()
    }

    pub fn kv_cache_usage(&self) -> f32 {
        self.kv.pool().usage()
    }

    /// Drops cached prefixes of idle blocks; returns how many.
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.kv.reset_prefix_cache()
    }

    /// KV blocks held by requests now; O(1), unlike [`stats`](Self::stats) (which counts cached free blocks),
    /// so the engine can track the peak every step.
    pub fn num_blocks_in_use(&self) -> usize {
        self.kv.pool().num_blocks_in_use()
    }

    /// (KV slots the running requests' block tables hold, slots among them that hold no token yet): the
    /// internal fragmentation the PagedAttention paper measures (a request wastes at most its last block's
    /// tail). O(running). A block shared by several tables counts once per table: exact for full shared blocks
    /// (no waste), an overcount only for a partial block shared by `n > 1` forks. Null entries (released out of
    /// a sliding window) hold nothing.
    pub fn kv_slot_usage(&self) -> (usize, usize) {
        let bs = self.config.block_size;
        self.running.iter().fold((0, 0), |(slots, unused), id| {
            let table = self.kv.block_table(*id);
            let released = table.len() - self.kv.num_held_blocks(*id);
            let held = (table.len() - released) * bs;
            let computed = self.requests.get(id).map_or(0, |r| r.num_computed_tokens);
            let tokens = computed.min(table.len() * bs).saturating_sub(released * bs);
            (slots + held, unused + held - tokens)
        })
    }

    pub fn stats(&self) -> SchedulerStats {
        let pool = self.kv.pool();
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            num_blocks_total: pool.num_usable_blocks(),
            num_blocks_in_use: pool.num_blocks_in_use(),
            num_blocks_cached_free: pool.num_cached_free_blocks(),
            prefix_cache_queries: self.kv.prefix_cache_queries(),
            prefix_cache_hits: self.kv.prefix_cache_hits(),
            num_preemptions: self.num_preemptions,
        }
    }

    fn pending_forks(&self, r: &Request) -> usize {
        if self.forked_parents.contains(&r.id) {
            0
        } else {
            r.pending_forks()
        }
    }

    /// Seats a request occupies: itself plus the children it will fork.
    pub(super) fn seats(&self, r: &Request) -> usize {
        1 + self.pending_forks(r)
    }

    fn scheduled_chunk(r: &Request, num_new_tokens: usize) -> ScheduledRequest {
        ScheduledRequest {
            request_id: r.id,
            num_new_tokens,
            start_pos: r.num_computed_tokens,
            sample_ids: SmallVec::new(),
            is_prefill: r.num_computed_tokens < r.num_prompt_tokens(),
        }
    }

    /// Index in `running` of the request to preempt next.
    fn preemption_victim(&self) -> Option<usize> {
        match self.config.policy {
            SchedulingPolicy::Fcfs => self.running.len().checked_sub(1),
            SchedulingPolicy::Priority => (0..self.running.len()).max_by_key(|&i| {
                let r = &self.requests[&self.running[i]];
                (r.priority, r.arrival, r.id)
            }),
        }
    }

    /// The running requests preempted with `victim`: all beams of its beam search, else itself.
    fn preemption_group(&self, victim: RequestId) -> Vec<RequestId> {
        let r = &self.requests[&victim];
        if r.params.beam_search.is_none() {
            return vec![victim];
        }
        let root = r.parent.unwrap_or(r.id);
        self.running
            .iter()
            .copied()
            .filter(|id| {
                let o = &self.requests[id];
                o.parent.unwrap_or(o.id) == root
            })
            .collect()
    }

    fn preempt(&mut self, id: RequestId) {
        self.num_preemptions += 1;
        if let Some(r) = self.requests.get_mut(&id) {
            self.kv.free(r);
            r.status = RequestStatus::Preempted;
            r.num_computed_tokens = 0;
            r.num_preemptions += 1;
            self.waiting.push_front(r);
        }
    }

    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut budget = self.config.max_num_batched_tokens;
        let mut scheduled: Vec<ScheduledRequest> = Vec::new();
        let mut preempted = Vec::new();
        let mut short_of_blocks = false;

        // Running requests first, in order; the beams of a search as one unit (`beam_group.rs`).
        let mut planned: HashSet<RequestId> = HashSet::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            if planned.contains(&id) {
                i += 1;
                continue;
            }
            let unit = self.unit_of(id);
            planned.extend(unit.iter().copied());
            loop {
                if let Ok(chunks) = self.plan_unit(&unit, budget) {
                    for (m, n) in chunks {
                        scheduled.push(Self::scheduled_chunk(&self.requests[&m], n));
                        budget -= n;
                    }
                    i += 1;
                    break;
                }
                short_of_blocks = true;
                let Some(v) = self.preemption_victim() else {
                    i += 1;
                    break;
                };
                let victims = self.preemption_group(self.running[v]);
                if victims.iter().any(|x| unit.contains(x)) {
                    i += 1; // the unit sits this step out, keeping its blocks
                    break;
                }
                for victim in victims {
                    let Some(v) = self.running.iter().position(|&r| r == victim) else { continue };
                    self.running.remove(v);
                    if v < i {
                        i -= 1;
                    }
                    // The victim may already be scheduled this step: give its tokens back.
                    if let Some(pos) = scheduled.iter().position(|s| s.request_id == victim) {
                        budget += scheduled.remove(pos).num_new_tokens;
                    }
                    self.preempt(victim);
                    preempted.push(victim);
                }
            }
        }

        // Then waiting (and preempted) requests in policy order.
        let mut seats: usize = self.running.iter().map(|id| self.seats(&self.requests[id])).sum();
        while !short_of_blocks && budget > 0 {
            let Some(id) = self.waiting.peek() else { break };
            let r = &self.requests[&id];
            let need = self.seats(r);
            if seats + need > self.config.max_num_seqs {
                break;
            }
            if self.is_resumed_search(id) {
                // A preempted beam search comes back whole, or not yet (`beam_group.rs`).
                let Some(chunks) = self.admit_search(id, self.config.max_num_seqs.saturating_sub(seats), budget) else {
                    break;
                };
                for (m, n) in chunks {
                    scheduled.push(Self::scheduled_chunk(&self.requests[&m], n));
                }
                // The search's worst case is what the free blocks were checked against: admit nobody after it.
                break;
            }
            let (hit_blocks, hit_tokens) = self.kv.get_computed_blocks(r);
            let num_new = (r.num_tokens() - hit_tokens).min(budget);
            if self.kv.allocate_slots(r, num_new, &hit_blocks).is_none() {
                break; // the head does not fit; do not let later requests overtake it
            }
            self.waiting.pop();
            let Some(r) = self.requests.get_mut(&id) else { break };
            if r.status == RequestStatus::Waiting {
                r.num_cached_tokens = hit_tokens;
            }
            r.status = RequestStatus::Running;
            r.num_computed_tokens = hit_tokens;
            scheduled.push(Self::scheduled_chunk(r, num_new));
            self.running.push(id);
            seats += need;
            budget -= num_new;
        }

        // Chunks reaching the end of their request sample; a final prompt chunk with n > 1 forks its children.
        let mut forked = Vec::new();
        for s in &mut scheduled {
            let r = &self.requests[&s.request_id];
            if s.start_pos + s.num_new_tokens < r.num_tokens() {
                continue;
            }
            s.sample_ids.push(s.request_id);
            let num_forks = self.pending_forks(r);
            for sample_index in 1..=num_forks {
                let child_id = self.next_id;
                self.next_id += 1;
                if self.kv.fork(s.request_id, child_id).is_err() {
                    continue; // cannot happen: the parent was just allocated
                }
                let parent = &self.requests[&s.request_id];
                let child = Request {
                    id: child_id,
                    parent: Some(parent.id),
                    sample_index,
                    output_token_ids: Vec::new(),
                    num_computed_tokens: s.start_pos + s.num_new_tokens,
                    status: RequestStatus::Running,
                    stop_reason: None,
                    num_preemptions: 0,
                    ..parent.clone()
                };
                self.requests.insert(child_id, child);
                self.running.push(child_id);
                s.sample_ids.push(child_id);
                forked.push((s.request_id, child_id));
            }
            if num_forks > 0 {
                self.forked_parents.insert(s.request_id);
            }
        }

        let num_batched_tokens = scheduled.iter().map(|s| s.num_new_tokens).sum();
        SchedulerOutput {
            scheduled,
            blocks_to_copy: self.kv.take_blocks_to_copy(),
            preempted,
            forked,
            num_batched_tokens,
        }
    }

    /// Applies a step's results: advances `num_computed_tokens`, appends `sampled` tokens and finishes requests
    /// that hit a token-level stop. Tokens for requests finished meanwhile (aborts) are ignored. A request that
    /// should have sampled but got no token steps back one position, so its last token is recomputed and
    /// sampled next step rather than the request stalling.
    pub fn update_from_output(&mut self, output: &SchedulerOutput, sampled: &[(RequestId, u32)]) -> UpdateResult {
        let sampled: HashMap<RequestId, u32> = sampled.iter().copied().collect();
        let mut result = UpdateResult::default();
        let mut to_finish = Vec::new();
        for s in &output.scheduled {
            let Some(r) = self.requests.get_mut(&s.request_id) else {
                continue;
            };
            if r.status != RequestStatus::Running || r.num_computed_tokens != s.start_pos {
                continue; // not the state this output was scheduled from
            }
            r.num_computed_tokens += s.num_new_tokens;
            for &sid in &s.sample_ids {
                let Some(r) = self.requests.get_mut(&sid) else { continue };
                match sampled.get(&sid) {
                    Some(&tok) => {
                        r.output_token_ids.push(tok);
                        result.new_tokens.push((sid, tok));
                        if let Some(stop) = check_token_stop(r, self.config.max_model_len) {
                            to_finish.push((sid, stop));
                        }
                    }
                    None => r.num_computed_tokens = r.num_computed_tokens.saturating_sub(1),
                }
            }
        }
        // Blocks no later token reads go back now, before the next schedule counts free blocks (after the
        // step-backs above: a request recomputing its last token reads one position further back).
        if self.kv.sliding_window().is_some() {
            for s in &output.scheduled {
                for id in std::iter::once(&s.request_id).chain(&s.sample_ids) {
                    if let Some(r) = self.requests.get(id).filter(|r| r.status == RequestStatus::Running) {
                        self.kv.remove_skipped_blocks(r);
                    }
                }
            }
        }
        for (id, (reason, stop_reason)) in to_finish {
            if let Some(r) = self.finish_request(id, reason, stop_reason) {
                result.finished.push((id, reason));
                result.finished_requests.push(r);
            }
        }
        result
    }

    /// Beam search: running request `dst` (a beam that was dropped) becomes a continuation of running request
    /// `src` (a beam chosen more than once): `src`'s output with its last token replaced by `last_token`, and
    /// `src`'s blocks, shared (the partial last block is copied on the next write). Call after
    /// `update_from_output` appended this step's tokens; `dst`'s own blocks are released first.
    pub fn rebase_beam(&mut self, dst: RequestId, src: RequestId, last_token: u32) -> Result<()> {
        let source = self
            .requests
            .get(&src)
            .filter(|r| r.status == RequestStatus::Running)
            .ok_or_else(|| EngineError::Internal(format!("beam {src} to fork from is not running")))?;
        let mut output = source.output_token_ids.clone();
        let computed = source.num_computed_tokens;
        let Some(last) = output.last_mut() else {
            return Err(EngineError::Internal(format!("beam {src} has no token to replace")));
        };
        *last = last_token;
        let target = self
            .requests
            .get_mut(&dst)
            .filter(|r| r.status == RequestStatus::Running)
            .ok_or_else(|| EngineError::Internal(format!("beam {dst} to rebase is not running")))?;
        self.kv.free(target);
        target.output_token_ids = output;
        target.num_computed_tokens = computed;
        self.kv.fork(src, dst)
    }

    /// Finishes a request in any state (waiting, running, preempted): frees its blocks and hands back its final
    /// state. Used for aborts and for stop strings found by the detokenizer. Only this request finishes; forked
    /// siblings are separate requests. `None` if the id is unknown or already finished.
    pub fn finish_request(
        &mut self,
        id: RequestId,
        reason: FinishReason,
        stop_reason: Option<StopReason>,
    ) -> Option<Request> {
        let mut r = self.requests.remove(&id)?;
        match r.status {
            RequestStatus::Running => self.running.retain(|&x| x != id),
            _ => {
                self.waiting.remove(&r);
            }
        }
        self.kv.free(&r);
        self.forked_parents.remove(&id);
        r.status = RequestStatus::Finished(reason);
        r.stop_reason = stop_reason;
        Some(r)
    }
}
