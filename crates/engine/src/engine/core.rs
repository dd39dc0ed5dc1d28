//! `EngineCore`: one engine step = schedule -> execute (one flattened batch) -> sample -> update the
//! scheduler -> detokenize -> send deltas. Runs on the engine thread only; owns the scheduler, the model
//! runner and every live request's output state. Pure orchestration: each stage lives in its own module.
//!
//! Structured outputs: a constrained sample's `SampleConstraint` is kept here by sequence id. Its mask for the
//! next token is queued on the mask pool as soon as it consumed a token (so it is computed while the next step's
//! forward runs), and the sampler applies it: the host sampler as `allowed_tokens`, the device sampler as a packed
//! bitmask uploaded with the step's sampling rows (so a constrained row samples wherever its neighbours do).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rand::{RngCore, SeedableRng};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::Result;
use crate::request::{FinishReason, Request, RequestId, StopReason};
use crate::runner::{BatchLayout, ModelRunner, ScheduledSeq, StepLogits};
use crate::sampler::{
    device_sampleable, prompt_logprobs, sample_batch, DeviceSamplingBatch, RowHistory, RowShape, SampleRow,
    SampledToken, SequenceRng,
};
use crate::sampling_params::SamplingParams;
use crate::scheduler::{ScheduledRequest, Scheduler};
use crate::structured::{CompiledGrammar, MaskPool, SampleConstraint};
use crate::tokenizer::Tokenizer;

use super::beam_search::{top_logprobs, BeamSearch, BeamStep, Stop};
use super::output::RequestOutput;
use super::request_group::{now_secs, position_logprobs, RequestGroup};
use super::stats::EngineStats;

/// A validated, tokenized request on its way into the engine thread.
pub(crate) struct PreparedRequest {
    pub external_id: String,
    pub prompt_ids: Vec<u32>,
    pub params: Arc<SamplingParams>,
    pub max_tokens: usize,
    pub priority: i32,
    pub cache_salt: Option<String>,
    pub tx: UnboundedSender<Result<RequestOutput>>,
    pub arrival_time: f64,
    /// The compiled `structured_outputs` constraint, when the request has one.
    pub grammar: Option<Arc<CompiledGrammar>>,
}

pub(crate) struct EngineCore {
    scheduler: Scheduler,
    runner: ModelRunner,
    tokenizer: Option<Arc<Tokenizer>>,
    eos_token_ids: Arc<Vec<u32>>,
    /// Live requests by external id (an `Arc<str>`, so the per-token lookups below copy no strings).
    groups: HashMap<Arc<str>, RequestGroup>,
    /// Sequence id -> (external request id, sample index).
    seq_owner: HashMap<RequestId, (Arc<str>, usize)>,
    /// Seeds requests that set none (from the engine's `--seed` when given).
    seed_rng: rand_chacha::ChaCha8Rng,
    arrivals: u64,
    stats: EngineStats,
    /// Rows and edits of the device sampler, reused across steps.
    device_batch: DeviceSamplingBatch,
    scratch: StepScratch,
    /// Grammar state of every constrained sample, by sequence id.
    constraints: HashMap<RequestId, SampleConstraint>,
    /// Threads that compute grammar masks while the forward pass runs.
    mask_pool: MaskPool,
    /// TEST ONLY: a sticky backend fault injected after this many steps (see `InjectedFault`).
    injected_fault: Option<InjectedFault>,
}

/// TEST ONLY: makes every step after the first `after_steps` fail as a sticky device error would (the runner is
/// not called), so tests can prove that a wedged backend takes the engine down instead of leaving it "healthy".
/// Set by `PAGEDLLM_TEST_FAIL_STEPS_AFTER=N`, read once when the engine is built; never set in production.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InjectedFault {
    pub after_steps: u64,
}

impl InjectedFault {
    pub const ENV: &'static str = "PAGEDLLM_TEST_FAIL_STEPS_AFTER";

    pub fn from_env() -> Option<Self> {
        let value = std::env::var(Self::ENV).ok()?;
        match value.trim().parse::<u64>() {
            Ok(after_steps) => {
                eprintln!("pagedllm: TEST ONLY: every engine step after step {after_steps} will fail ({})", Self::ENV);
                Some(Self { after_steps })
            }
            Err(_) => {
                eprintln!("pagedllm: ignoring {}={value:?} (expects a step count)", Self::ENV);
                None
            }
        }
    }
}

/// A step's working arrays, kept across steps so that, once grown, a step allocates nothing for them.
#[derive(Default)]
struct StepScratch {
    /// Sampling request -> its logits row.
    rows_of: HashMap<RequestId, usize>,
    /// (sampling id, logits row) per sampled token, and the tokens.
    jobs: Vec<(RequestId, usize)>,
    sampled: Vec<SampledToken>,
    /// (sampling id, token) for the scheduler.
    pairs: Vec<(RequestId, u32)>,
    /// The scheduled sequence of each device sampling row.
    row_seqs: Vec<RequestId>,
    /// Sampling id -> index in `jobs`.
    by_seq: HashMap<RequestId, usize>,
    /// Requests that got a token or finished this step.
    touched: Vec<Arc<str>>,
    /// Constrained samples whose matcher failed this step, with the error their request ends with.
    constraint_failures: Vec<(RequestId, crate::error::EngineError)>,
    /// Beam rows of this step: (sampling id, logits row); they are not sampled but proposed from.
    beam_jobs: Vec<(RequestId, usize)>,
    /// Beam rows of a device-sampled step before it ran: (sampling id, scheduled sequence).
    beam_seqs: Vec<(RequestId, RequestId)>,
    /// Constrained rows of a device-sampled step: (sampling id, mask row), filled while the forward runs.
    late_masks: Vec<(RequestId, usize)>,
    /// Constrained samples whose matcher has a token queued since the last mask job: their next masks are
    /// queued on the mask pool as one job once the next forward pass has started.
    mask_jobs: Vec<SampleConstraint>,
    /// Each beam's best next-token log-probs this step.
    beam_proposals: HashMap<RequestId, Vec<(u32, f32)>>,
    /// (beam slot's sequence, parent beam's sequence, token): rebased after the scheduler update.
    beam_rebases: Vec<(RequestId, RequestId, u32)>,
    /// Beam requests whose search ended this step.
    beams_done: Vec<Arc<str>>,
}

impl EngineCore {
    pub fn new(
        scheduler: Scheduler,
        runner: ModelRunner,
        tokenizer: Option<Arc<Tokenizer>>,
        eos_token_ids: Arc<Vec<u32>>,
        seed: Option<u64>,
    ) -> Result<Self> {
        let seed_rng = match seed {
            Some(s) => rand_chacha::ChaCha8Rng::seed_from_u64(s),
            None => rand_chacha::ChaCha8Rng::from_os_rng(),
        };
        // On a GPU the host cores idle while the forward runs, and at large batch the masks (one per constrained
        // row per step) must all be ready by the time it ends; on the CPU backend the matmuls need the cores.
        let mask_pool = MaskPool::new(MaskPool::default_threads(runner.samples_on_device()))?;
        Ok(Self {
            scheduler,
            runner,
            tokenizer,
            eos_token_ids,
            groups: HashMap::new(),
            seq_owner: HashMap::new(),
            seed_rng,
            arrivals: 0,
            stats: EngineStats::default(),
            device_batch: DeviceSamplingBatch::default(),
            scratch: StepScratch::default(),
            constraints: HashMap::new(),
            mask_pool,
            injected_fault: None,
        })
    }

    /// TEST ONLY: see `InjectedFault`.
    pub fn inject_fault(&mut self, fault: Option<InjectedFault>) {
        self.injected_fault = fault;
    }

    /// TEST ONLY: the injected fault, checked where the step would call the runner.
    fn check_injected_fault(&self) -> Result<()> {
        match self.injected_fault {
            Some(f) if self.stats.steps > f.after_steps => Err(crate::error::EngineError::Backend(format!(
                "injected backend fault ({}={})",
                InjectedFault::ENV,
                f.after_steps
            ))),
            _ => Ok(()),
        }
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_unfinished_requests()
    }

    /// Queues a prepared request (validated by the handle) with the scheduler.
    pub fn add(&mut self, p: PreparedRequest) {
        let id = self.scheduler.alloc_request_id();
        self.arrivals += 1;
        let mut req = Request::new(
            id,
            p.prompt_ids,
            p.params.clone(),
            p.max_tokens,
            self.eos_token_ids.clone(),
            self.arrivals,
        );
        req.priority = p.priority;
        req.cache_salt = p.cache_salt;
        if p.params.beam_search.is_some() {
            // The beam search decides every stop itself (a stopping continuation becomes a hypothesis and never
            // a beam), so the scheduler's token-level stops are off for its sequences.
            req.eos_token_ids = Arc::new(Vec::new());
            req.params = Arc::new(SamplingParams {
                ignore_eos: true,
                stop_token_ids: Vec::new(),
                ..(*p.params).clone()
            });
        }
        let mut group = RequestGroup::new(
            p.external_id.clone(),
            p.tx,
            p.params,
            req.prompt_token_ids.clone(),
            p.arrival_time,
        );
        let rng = self.sample_rng(&group.params, 0);
        group.add_sample(0, id, rng, self.tokenizer.as_ref());
        if let Some(b) = group.params.beam_search.clone() {
            let num_eos = if group.params.ignore_eos { 0 } else { self.eos_token_ids.len() };
            group.set_beam_search(BeamSearch::new(b, p.max_tokens, num_eos), self.tokenizer.clone());
        }
        let prompt_len = req.num_prompt_tokens() as u64;
        if let Err(e) = self.scheduler.add_request(req) {
            // The handle validates first, so this is a last line of defence; only this request fails.
            let _ = group.tx.send(Err(e));
            return;
        }
        self.stats.prompt_tokens_total += prompt_len;
        if let Some(grammar) = &p.grammar {
            let constraint = SampleConstraint::new(grammar.new_matcher());
            constraint.prefetch(&self.mask_pool);
            self.constraints.insert(id, constraint);
        }
        let key: Arc<str> = Arc::from(p.external_id);
        self.seq_owner.insert(id, (key.clone(), 0));
        self.groups.insert(key, group);
    }

    fn sample_rng(&mut self, params: &SamplingParams, index: usize) -> SequenceRng {
        match params.seed {
            // Sample i of a seeded request gets its own stream, the same whatever else runs.
            Some(s) => SequenceRng::new(s.wrapping_add(index as u64)),
            None => SequenceRng::new(self.seed_rng.next_u64()),
        }
    }

    /// Aborts a request in any state; its blocks are freed at once. Returns whether it was live.
    pub fn abort(&mut self, external_id: &str) -> bool {
        let Some(group) = self.groups.get_mut(external_id) else {
            return false;
        };
        for seq in group.live_seq_ids() {
            self.scheduler.finish_request(seq, FinishReason::Abort, None);
        }
        group.finish_all(FinishReason::Abort);
        self.retire(external_id);
        true
    }

    /// Ends every live request with the error `make_error` gives (a failed step, or shutdown).
    pub fn fail_all(&mut self, make_error: impl Fn() -> crate::error::EngineError) {
        let ids: Vec<Arc<str>> = self.groups.keys().cloned().collect();
        for id in ids {
            if let Some(g) = self.groups.get(&id) {
                let _ = g.tx.send(Err(make_error()));
            }
            self.abort(&id);
        }
    }

    /// Sends the group's last delta and forgets it.
    fn retire(&mut self, external_id: &str) {
        if let Some(mut g) = self.groups.remove(external_id) {
            g.flush();
            self.stats.requests_finished_total += 1;
            for s in g.samples.iter().flatten() {
                self.seq_owner.remove(&s.seq_id);
                self.constraints.remove(&s.seq_id);
            }
        }
    }

    /// One engine step. Returns the external ids of requests that finished in it.
    pub fn step(&mut self) -> Result<Vec<String>> {
        let t_start = Instant::now();
        let out = self.scheduler.schedule();
        let t_scheduled = Instant::now();
        self.stats.step_phase_seconds.schedule += (t_scheduled - t_start).as_secs_f64();
        self.stats.steps += 1;
        // Not `stats()`: that walks the free list (~1 ms per step on a large GPU cache).
        let in_use = self.scheduler.num_blocks_in_use();
        self.stats.max_kv_blocks_in_use = self.stats.max_kv_blocks_in_use.max(in_use);
        let now = now_secs();
        for &(parent, child) in &out.forked {
            let Some((ext, _)) = self.seq_owner.get(&parent).cloned() else {
                continue;
            };
            let index = self.scheduler.request(child).map(|r| r.sample_index).unwrap_or(0);
            let params = self.groups[&ext].params.clone();
            let rng = self.sample_rng(&params, index);
            let tok = self.tokenizer.clone();
            if let Some(g) = self.groups.get_mut(&ext) {
                g.add_sample(index, child, rng, tok.as_ref());
            }
            // A forked sample continues from its parent's grammar state (both are at the same position).
            if let Some(c) = self.constraints.get(&parent).map(|c| c.fork()) {
                self.constraints.insert(child, c);
            }
            self.seq_owner.insert(child, (ext, index));
        }
        if out.scheduled.is_empty() {
            return Ok(Vec::new());
        }
        self.stats.max_batch_seqs = self.stats.max_batch_seqs.max(out.scheduled.len());
        self.stats.max_batch_tokens = self.stats.max_batch_tokens.max(out.num_batched_tokens);

        // 1. The flattened batch.
        let mut seqs = Vec::with_capacity(out.scheduled.len());
        for s in &out.scheduled {
            let req = self.scheduler.request(s.request_id).expect("scheduled request exists");
            let (ext, _) = &self.seq_owner[&s.request_id];
            let group = self.groups.get_mut(ext).expect("group of a scheduled request");
            group.metrics.first_scheduled_time.get_or_insert(now);
            let end = s.start_pos + s.num_new_tokens;
            let prompt_logprob_positions = match group.next_prompt_logprob_pos() {
                // Position p's logits predict prompt token p + 1.
                Some(next) => {
                    let lo = s.start_pos.max(next.saturating_sub(1));
                    let hi = end.min(req.num_prompt_tokens() - 1);
                    lo..hi.max(lo)
                }
                None => 0..0,
            };
            seqs.push(ScheduledSeq {
                request_id: s.request_id,
                token_ids: req.tokens(s.start_pos, end),
                start_pos: s.start_pos,
                block_table: self.scheduler.block_table(s.request_id),
                sample: !s.sample_ids.is_empty(),
                prompt_logprob_positions,
            });
        }
        // 2-3. Either sample on the backend's device (only token ids come back), or copy the logits rows and
        // compute prompt log-probs and samples on the host. The choice depends only on the backend and on each
        // sampling row's own parameters, never on its neighbours: the device's noise differs from the host
        // sampler's draw, so a seeded request must always meet the same sampler (prompt log-probs and n > 1
        // forks ride along on the device path).
        let vocab = self.runner.vocab_size();
        let on_device = self.runner.samples_on_device()
            && out.scheduled.iter().flat_map(|s| s.sample_ids.iter()).all(|&sid| {
                let r = self.scheduler.request(sid).expect("sampling request exists");
                // A beam row is not sampled: its logits row is copied to the host and the beams are proposed
                // from it there, beside its neighbours' device samples.
                if r.params.beam_search.is_some() {
                    return true;
                }
                let shape = RowShape {
                    prompt_len: r.prompt_token_ids.len(),
                    output_len: r.output_token_ids.len(),
                    eos_len: r.eos_token_ids.len(),
                    constrained: self.constraints.contains_key(&sid),
                };
                device_sampleable(&r.params, shape, vocab)
            });
        self.check_injected_fault()?;
        let t_prepared_rows;
        let mut sc = std::mem::take(&mut self.scratch);
        sc.jobs.clear();
        sc.sampled.clear();
        let timing = if on_device {
            // One device row per sampling id, in the order of the sequences that sample (the layout's order).
            self.device_batch.clear();
            sc.row_seqs.clear();
            sc.beam_seqs.clear();
            sc.late_masks.clear();
            for s in &out.scheduled {
                for &sid in &s.sample_ids {
                    let req = self.scheduler.request(sid).expect("sampling request exists");
                    if req.params.beam_search.is_some() {
                        // Its logits row is known once the step ran (below).
                        sc.beam_seqs.push((sid, s.request_id));
                        continue;
                    }
                    let (ext, idx) = &self.seq_owner[&sid];
                    let state = self
                        .groups
                        .get_mut(ext)
                        .and_then(|g| g.samples[*idx].as_mut())
                        .expect("sample state");
                    let history = RowHistory {
                        prompt_token_ids: &req.prompt_token_ids,
                        output_token_ids: &req.output_token_ids,
                        eos_token_ids: &req.eos_token_ids,
                    };
                    if self.constraints.contains_key(&sid) {
                        // Its grammar mask is taken once the forward pass runs (below): the mask pool may still
                        // be computing it.
                        let row = self
                            .device_batch
                            .push_with_late_mask(&req.params, &history, vocab, &mut state.rng);
                        sc.late_masks.push((sid, row));
                    } else {
                        self.device_batch.push(&req.params, &history, vocab, &mut state.rng);
                    }
                    sc.row_seqs.push(s.request_id);
                    sc.jobs.push((sid, sc.jobs.len()));
                }
            }
            t_prepared_rows = Instant::now();
            let (constraints, pool) = (&self.constraints, &self.mask_pool);
            let (late_masks, failures, mask_jobs) = (&sc.late_masks, &mut sc.constraint_failures, &mut sc.mask_jobs);
            // While the GPU runs the forward pass: the grammar masks, on the mask pool and this thread (a row's
            // mask not started yet is computed here, so the two share the work).
            let fill_masks = |batch: &mut DeviceSamplingBatch| {
                start_mask_jobs(mask_jobs, pool);
                for &(sid, row) in late_masks {
                    match constraints.get(&sid).map(|c| c.mask()) {
                        Some(Ok(mask)) => batch.set_mask(row, Some(&mask), vocab),
                        Some(Err(e)) => {
                            // This row samples unconstrained; its request fails with the error after the step.
                            failures.push((sid, e));
                            batch.set_mask(row, None, vocab);
                        }
                        None => batch.set_mask(row, None, vocab),
                    }
                }
            };
            let step = self.runner.execute_and_sample(
                &seqs,
                &out.blocks_to_copy,
                &mut self.device_batch,
                &sc.row_seqs,
                !sc.beam_seqs.is_empty(),
                fill_masks,
            )?;
            drop(seqs);
            if !step.logits.is_empty() {
                let t_host = Instant::now();
                self.host_prompt_logprobs(&step.layout, &step.logits, vocab)?;
                if !sc.beam_seqs.is_empty() {
                    sc.beam_jobs.clear();
                    for &(sid, seq) in &sc.beam_seqs {
                        let row = step.layout.sample_rows.iter().find(|(rid, _)| *rid == seq).map(|&(_, row)| row);
                        let row = row.ok_or_else(|| {
                            crate::error::EngineError::Internal(format!("beam {seq} has no logits row this step"))
                        })?;
                        sc.beam_jobs.push((sid, row));
                    }
                    self.propose_beams(&mut sc, |row| &step.logits[row * vocab..(row + 1) * vocab]);
                    self.plan_beams(&mut sc);
                }
                self.stats.step_phase_seconds.host_sampling += t_host.elapsed().as_secs_f64();
            }
            sc.sampled.extend(step.samples.into_iter().map(|d| SampledToken {
                token: d.token,
                logprob: d.logprob,
                rank: d.rank as usize,
                top_logprobs: d.top_logprobs,
            }));
            self.runner.recycle(step.layout);
            step.timing
        } else {
            t_prepared_rows = Instant::now();
            start_mask_jobs(&mut sc.mask_jobs, &self.mask_pool);
            let logits = self.runner.execute(&seqs, &out.blocks_to_copy)?;
            drop(seqs);
            let t_host = Instant::now();
            self.host_prompt_logprobs(&logits.layout, &logits.logits, vocab)?;
            self.host_sample(&out.scheduled, &logits, &mut sc)?;
            self.plan_beams(&mut sc);
            self.stats.step_phase_seconds.host_sampling += t_host.elapsed().as_secs_f64();
            self.runner.recycle(logits.layout);
            logits.timing
        };
        let phases = &mut self.stats.step_phase_seconds;
        phases.prepare += (t_prepared_rows - t_scheduled).as_secs_f64();
        phases.launch += timing.launch;
        phases.masks += timing.masks;
        phases.wait += timing.wait;
        let t_update = Instant::now();

        // 4. Append tokens, token-level stops, free finished requests' blocks.
        sc.pairs.clear();
        sc.pairs
            .extend(sc.jobs.iter().zip(&sc.sampled).map(|((sid, _), t)| (*sid, t.token)));
        let num_sampled = sc.pairs.len();
        sc.pairs.extend(sc.beam_rebases.iter().map(|&(slot, _, token)| (slot, token)));
        let update = self.scheduler.update_from_output(&out, &sc.pairs);
        // Beams that continue another beam's history take it over now (its blocks shared, copy-on-write).
        for (slot, parent, token) in sc.beam_rebases.drain(..) {
            if slot != parent {
                self.scheduler.rebase_beam(slot, parent, token)?;
            }
        }
        sc.pairs.truncate(num_sampled);
        // Queue each continuing constrained sample's token for its matcher. The matcher consumes it and computes
        // the next mask on the mask pool once the next step's forward pass has started (`start_mask_jobs`), all
        // rows as one job: started here, the pool's threads slowed this step's remaining host work ~2x on the
        // GPU machine (outputs 0.6 -> 1.4 ms at batch 128), and a pool wake-up per row cost ~5 µs each.
        if !self.constraints.is_empty() {
            for &(sid, token) in &update.new_tokens {
                let Some(c) = self.constraints.get(&sid) else { continue };
                if update.finished.iter().any(|&(f, _)| f == sid) {
                    continue;
                }
                c.queue(token);
                sc.mask_jobs.push(c.clone());
            }
        }
        self.stats.generation_tokens_total += update.new_tokens.len() as u64;
        let (held, unused) = self.scheduler.kv_slot_usage();
        self.stats.kv_slots_held = held;
        self.stats.kv_slots_unused = unused;
        self.stats.kv_slot_steps_held += held as u64;
        self.stats.kv_slot_steps_unused += unused as u64;
        let t_outputs = Instant::now();
        self.stats.step_phase_seconds.update += (t_outputs - t_update).as_secs_f64();

        // 5. Detokenize, find stop strings, send deltas.
        sc.by_seq.clear();
        sc.by_seq
            .extend(sc.jobs.iter().enumerate().map(|(i, (sid, _))| (*sid, i)));
        sc.touched.clear();
        for &(sid, token) in &update.new_tokens {
            let Some((ext, idx)) = self.seq_owner.get(&sid).cloned() else {
                continue;
            };
            let Some(&job) = sc.by_seq.get(&sid) else {
                continue; // a beam: its output is the search's hypotheses
            };
            let st = &sc.sampled[job];
            let group = self.groups.get_mut(&ext).expect("group");
            let lps = group
                .params
                .logprobs
                .map(|_| position_logprobs(self.tokenizer.as_ref(), token, st.logprob, st.rank, &st.top_logprobs));
            if let Some(stop) = group.push_token(idx, token, lps, st.logprob)? {
                self.scheduler
                    .finish_request(sid, FinishReason::Stop, Some(StopReason::String(stop.clone())));
                group.finish_sample(idx, FinishReason::Stop, Some(StopReason::String(stop)));
            }
            sc.touched.push(ext);
        }
        for &(sid, reason) in &update.finished {
            let Some((ext, idx)) = self.seq_owner.get(&sid).cloned() else {
                continue;
            };
            let done = update.finished_requests.iter().find(|r| r.id == sid);
            let stop_reason = done.and_then(|r| r.stop_reason.clone());
            if let Some(g) = self.groups.get_mut(&ext) {
                if idx == 0 {
                    g.metrics.num_cached_tokens = done.map_or(0, |r| r.num_cached_tokens);
                }
                g.finish_sample(idx, reason, stop_reason);
            }
            sc.touched.push(ext);
        }
        for ext in sc.beams_done.drain(..) {
            let Some(g) = self.groups.get_mut(&ext) else { continue };
            for (idx, sid) in g.samples.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, s.seq_id))).collect::<Vec<_>>() {
                self.scheduler.finish_request(sid, FinishReason::Stop, None);
                g.end_beam(idx);
            }
            sc.touched.push(ext);
        }
        sc.touched.sort();
        sc.touched.dedup();
        let mut finished = Vec::new();
        for (sid, e) in std::mem::take(&mut sc.constraint_failures) {
            let Some((ext, _)) = self.seq_owner.get(&sid).cloned() else {
                continue;
            };
            if let Some(g) = self.groups.get(&ext) {
                let _ = g.tx.send(Err(e));
            }
            self.abort(&ext);
            finished.push(ext.to_string());
        }
        for ext in sc.touched.drain(..) {
            let Some(g) = self.groups.get_mut(&ext) else { continue };
            if g.is_finished() {
                self.retire(&ext);
                finished.push(ext.to_string());
            } else if !g.flush() {
                // The caller went away without aborting: free its work now.
                self.abort(&ext);
                finished.push(ext.to_string());
            }
        }
        self.stats.step_phase_seconds.outputs += t_outputs.elapsed().as_secs_f64();
        self.scratch = sc;
        Ok(finished)
    }

    /// Prompt log-probs from host logits (computed once per request, in order).
    fn host_prompt_logprobs(&mut self, layout: &BatchLayout, logits: &[f32], vocab: usize) -> Result<()> {
        for &(rid, pos0, row0, count) in &layout.prompt_logprob_rows {
            let (ext, _) = self.seq_owner[&rid].clone();
            let group = self.groups.get_mut(&ext).expect("group");
            let k = group.params.prompt_logprobs.unwrap_or(0);
            let next: Vec<u32> = group.prompt_ids[pos0 + 1..pos0 + 1 + count].to_vec();
            for lp in prompt_logprobs(&logits[row0 * vocab..(row0 + count) * vocab], vocab, &next, k)? {
                let pl = position_logprobs(self.tokenizer.as_ref(), lp.token, lp.logprob, lp.rank, &lp.top);
                group.push_prompt_logprob(pl);
            }
        }
        Ok(())
    }

    /// Host sampling: every sampling id reads its scheduled request's last row (forked children share it).
    /// Fills `sc.jobs` with (sampling id, row) and `sc.sampled` with one sampled token per job.
    fn host_sample(&mut self, scheduled: &[ScheduledRequest], logits: &StepLogits, sc: &mut StepScratch) -> Result<()> {
        sc.rows_of.clear();
        sc.rows_of.extend(logits.layout.sample_rows.iter().copied());
        sc.beam_jobs.clear();
        for s in scheduled {
            if let Some(&row) = sc.rows_of.get(&s.request_id) {
                for &sid in &s.sample_ids {
                    let beam = self.scheduler.request(sid).is_some_and(|r| r.params.beam_search.is_some());
                    if beam {
                        sc.beam_jobs.push((sid, row));
                    } else {
                        sc.jobs.push((sid, row));
                    }
                }
            }
        }
        self.propose_beams(sc, |row| logits.row(row));
        let jobs = &sc.jobs;
        let mut rngs: Vec<SequenceRng> = jobs
            .iter()
            .map(|(sid, _)| {
                let (ext, idx) = &self.seq_owner[sid];
                let s = self
                    .groups
                    .get_mut(ext)
                    .and_then(|g| g.samples[*idx].as_mut())
                    .expect("sample state");
                std::mem::replace(&mut s.rng, SequenceRng::new(0))
            })
            .collect();
        // Grammar masks (mostly computed already, on the mask pool, while the forward ran).
        let mut failures = Vec::new();
        let masks: Vec<Option<Arc<Vec<u32>>>> = jobs
            .iter()
            .map(|(sid, _)| match self.constraints.get(sid).map(|c| c.mask()) {
                None => None,
                Some(Ok(mask)) => Some(mask),
                Some(Err(e)) => {
                    // This row samples unconstrained; its request fails with the error after the step.
                    failures.push((*sid, e));
                    None
                }
            })
            .collect();
        let sampled = {
            let mut rows: Vec<SampleRow<'_>> = Vec::with_capacity(jobs.len());
            for (((sid, row), rng), mask) in jobs.iter().zip(rngs.iter_mut()).zip(&masks) {
                let req = self.scheduler.request(*sid).expect("sampling request exists");
                rows.push(SampleRow {
                    logits: logits.row(*row),
                    params: &req.params,
                    prompt_token_ids: &req.prompt_token_ids,
                    output_token_ids: &req.output_token_ids,
                    eos_token_ids: &req.eos_token_ids,
                    rng,
                    allowed_tokens: mask.as_deref().map(|m| m.as_slice()),
                });
            }
            sample_batch(&mut rows)?
        };
        for ((sid, _), rng) in jobs.iter().zip(rngs) {
            let (ext, idx) = &self.seq_owner[sid];
            if let Some(s) = self.groups.get_mut(ext).and_then(|g| g.samples[*idx].as_mut()) {
                s.rng = rng;
            }
        }
        sc.sampled.extend(sampled);
        sc.constraint_failures.extend(failures);
        Ok(())
    }

    /// Each beam row's best next-token log-probs (`sc.beam_jobs`: sequence, logits row) into `sc.beam_proposals`.
    fn propose_beams<'l>(&self, sc: &mut StepScratch, row_logits: impl Fn(usize) -> &'l [f32]) {
        sc.beam_proposals.clear();
        for &(sid, row) in &sc.beam_jobs {
            let (ext, _) = &self.seq_owner[&sid];
            let m = self.groups[ext].beam.as_ref().map_or(0, |b| b.candidates_per_beam());
            sc.beam_proposals.insert(sid, top_logprobs(row_logits(row), m));
        }
    }

    /// Beam search step of every beam request whose live beams all got logits this step: its plan goes into
    /// `sc.beam_rebases` (one token per beam) or `sc.beams_done`. A request with a beam missing (preempted and
    /// still recomputing) feeds no token this step, so its beams recompute their last position and try again
    /// next step; beams only ever advance together.
    fn plan_beams(&mut self, sc: &mut StepScratch) {
        sc.beam_rebases.clear();
        sc.beams_done.clear();
        let mut exts: Vec<Arc<str>> = sc.beam_jobs.iter().map(|(sid, _)| self.seq_owner[sid].0.clone()).collect();
        exts.sort();
        exts.dedup();
        for ext in exts {
            let Some(g) = self.groups.get_mut(&ext) else { continue };
            let seqs: Vec<RequestId> = g.samples.iter().flatten().map(|s| s.seq_id).collect();
            let Some(beam) = g.beam.as_mut() else { continue };
            if seqs.len() != beam.width() || !seqs.iter().all(|s| sc.beam_proposals.contains_key(s)) {
                continue;
            }
            let proposals: Vec<Vec<(u32, f32)>> =
                seqs.iter().map(|s| sc.beam_proposals.remove(s).unwrap_or_default()).collect();
            let params = &g.params;
            let eos = &self.eos_token_ids;
            let stop_strings = g.beam_stops.as_ref();
            let stops = |generated: &[u32], token: u32| -> Option<Stop> {
                if !params.ignore_eos && eos.contains(&token) {
                    return Some((FinishReason::Stop, Some(StopReason::Eos)));
                }
                if params.stop_token_ids.contains(&token) {
                    return Some((FinishReason::Stop, Some(StopReason::TokenId(token))));
                }
                // HF's StopStringCriteria: a stop string ending in this token (see `beam_stop.rs`).
                let hit = stop_strings?.stop_for(generated, token)?;
                Some((FinishReason::Stop, Some(StopReason::String(hit.to_string()))))
            };
            let chosen = match beam.step(&proposals, stops) {
                BeamStep::Continue(moves) => {
                    sc.beam_rebases
                        .extend(moves.iter().map(|m| (seqs[m.slot], seqs[m.parent], m.token)));
                    moves.len()
                }
                BeamStep::Done => {
                    sc.beams_done.push(ext.clone());
                    0
                }
            };
            g.note_beam_step(chosen);
        }
    }

    pub fn stats(&self) -> EngineStats {
        let s = self.scheduler.stats();
        let mut st = self.stats.clone();
        st.num_running = s.num_running;
        st.num_waiting = s.num_waiting;
        st.kv_blocks_total = s.num_blocks_total;
        st.kv_blocks_in_use = s.num_blocks_in_use;
        st.kv_blocks_cached = s.num_blocks_cached_free;
        st.kv_cache_usage = if s.num_blocks_total == 0 {
            0.0
        } else {
            s.num_blocks_in_use as f64 / s.num_blocks_total as f64
        };
        st.prefix_cache_queries = s.prefix_cache_queries as u64;
        st.prefix_cache_hits = s.prefix_cache_hits as u64;
        st.num_preemptions = s.num_preemptions as u64;
        st
    }
}

/// Queues the masks of the samples whose matchers took a token since the last job, as one mask-pool job.
fn start_mask_jobs(jobs: &mut Vec<SampleConstraint>, pool: &MaskPool) {
    SampleConstraint::prefetch_all(jobs, pool);
    jobs.clear();
}
