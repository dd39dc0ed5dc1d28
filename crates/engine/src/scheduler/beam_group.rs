//! Beam searches in the scheduler: the beams of one search are admitted, scheduled and preempted as one unit.
//!
//! The engine advances a search only in a step where every beam got logits (`EngineCore::plan_beams`), so a
//! search with some beams resident and others not could stall, and hold its blocks while doing so. Hence:
//! - **Scheduling.** A search's running beams are planned together ([`Scheduler::plan_unit`]): they reach their
//!   last token (and sample) in the same step or none does; a beam that is still recomputing stops one token short
//!   of its end. If one beam cannot get blocks, the whole search sits the step out or a victim is preempted.
//! - **Preemption.** Preempting any beam preempts all beams of its search (`Scheduler::preemption_group`).
//! - **Admission.** A preempted search comes back all at once, when the free blocks cover its worst case
//!   ([`beam_worst_case_blocks`]), so it never needs to preempt itself. Its beams recompute on shared blocks
//!   as they held them before: the lowest-id beam recomputes its whole sequence; each other beam first takes the
//!   full blocks of its longest common prefix with a lower-id beam once that beam has computed them (waiting,
//!   computing nothing, until then), and computes only its own tail.
//! - **Rejection.** A search whose worst case exceeds the whole cache could never run and is refused when it is
//!   added (`Scheduler::add_request`, and the engine handle before it).
//!
//! vLLM V0 treated a `SequenceGroup` the same way (`BlockSpaceManager.can_allocate` / `can_append_slots` per group,
//! preemption of whole groups); this is our own code.

use super::scheduler::Scheduler;
use crate::error::{EngineError, Result};
use crate::request::{Request, RequestId, RequestStatus};

/// Most KV blocks a beam search can hold at once: every beam holds at most `prompt + max_tokens - 1` tokens (the
/// last generated token is never fed back), and the beams share at least the prompt's full blocks.
pub fn beam_worst_case_blocks(prompt_len: usize, max_tokens: usize, beam_width: usize, block_size: usize) -> usize {
    let shared = prompt_len / block_size;
    let per_beam = (prompt_len + max_tokens.max(1) - 1).div_ceil(block_size);
    shared + beam_width * (per_beam - shared)
}

/// Refuses a beam search that could never run: its worst case exceeds the cache's `usable_blocks`, or its beams
/// (which decode in the same step) exceed the token budget of one step.
pub fn check_beam_search_fits(
    prompt_len: usize,
    max_tokens: usize,
    beam_width: usize,
    block_size: usize,
    usable_blocks: usize,
    max_num_batched_tokens: usize,
) -> Result<()> {
    let worst = beam_worst_case_blocks(prompt_len, max_tokens, beam_width, block_size);
    if worst > usable_blocks {
        return Err(EngineError::invalid(
            "beam_width",
            format!(
                "{beam_width} beams of a {prompt_len}-token prompt with max_tokens {max_tokens} may need {worst} KV \
                 blocks of {block_size} tokens, but the cache has {usable_blocks}: lower the beam width or max_tokens"
            ),
        ));
    }
    if beam_width > max_num_batched_tokens {
        return Err(EngineError::invalid(
            "beam_width",
            format!("{beam_width} beams decode in one step, more than max_num_batched_tokens ({max_num_batched_tokens})"),
        ));
    }
    Ok(())
}

impl Scheduler {
    /// The id of the search `r` belongs to (its first beam's), or `None` when `r` is no beam.
    pub(super) fn beam_root(r: &Request) -> Option<RequestId> {
        r.params.beam_search.as_ref()?;
        Some(r.parent.unwrap_or(r.id))
    }

    /// Worst-case KV blocks of `r`'s search (`None` for an ordinary request).
    pub(super) fn beam_worst_case(&self, r: &Request) -> Option<usize> {
        r.params.beam_search.as_ref()?;
        Some(beam_worst_case_blocks(
            r.num_prompt_tokens(),
            r.max_tokens,
            r.params.num_sequences(),
            self.config.block_size,
        ))
    }

    /// The beams of `root`'s search with `status`-matching requests, lowest id first.
    fn beams_of(&self, root: RequestId, running: bool) -> Vec<RequestId> {
        let mut ids: Vec<RequestId> = self
            .requests
            .values()
            .filter(|o| Self::beam_root(o) == Some(root) && (o.status == RequestStatus::Running) == running)
            .map(|o| o.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The requests scheduled as one with running request `id`: all running beams of its search (lowest id
    /// first), else itself.
    pub(super) fn unit_of(&self, id: RequestId) -> Vec<RequestId> {
        match Self::beam_root(&self.requests[&id]) {
            Some(root) => self.beams_of(root, true),
            None => vec![id],
        }
    }

    /// Whether the waiting request `id` is a beam of a search that was preempted (its other beams wait too).
    pub(super) fn is_resumed_search(&self, id: RequestId) -> bool {
        let r = &self.requests[&id];
        Self::beam_root(r).is_some_and(|root| self.beams_of(root, false).len() > 1)
    }

    /// Beam `id` takes the full blocks of its longest common prefix with one of `earlier` (lower-id beams of its
    /// search) that the other beam has computed. Returns whether it may compute now: it has all of those blocks,
    /// or it holds blocks of its own past its computed tokens (then it computes on its own).
    fn share_from_siblings(&mut self, id: RequestId, earlier: &[RequestId]) -> bool {
        let bs = self.config.block_size;
        let r = &self.requests[&id];
        let table_len = self.kv.block_table(id).len();
        if r.num_computed_tokens != table_len * bs {
            return true;
        }
        let mut best: Option<(RequestId, usize)> = None;
        for &j in earlier {
            let s = &self.requests[&j];
            let limit = (r.num_tokens() - 1).min(s.num_tokens() - 1);
            let common = (0..limit).take_while(|&i| s.token_at(i) == r.token_at(i)).count();
            if best.is_none_or(|(_, b)| common / bs > b) {
                best = Some((j, common / bs));
            }
        }
        let Some((sibling, target)) = best else { return true };
        if target <= table_len {
            return true;
        }
        let have = (self.requests[&sibling].num_computed_tokens / bs).min(target);
        if have > table_len {
            let blocks = self.kv.block_table(sibling)[table_len..have].to_vec();
            // Sliding window: the sibling may have released blocks this beam would still read (it is further
            // along); then this beam computes them itself.
            let skipped = self.kv.num_skipped_blocks(have * bs);
            if (table_len..have).zip(&blocks).any(|(i, &b)| b == crate::kv::NULL_BLOCK_ID && i >= skipped) {
                return true;
            }
            let r = &self.requests[&id];
            // Blocks a running sibling holds are never free, so this allocates nothing and cannot fail.
            if self.kv.allocate_slots(r, 0, &blocks).is_some() {
                if let Some(r) = self.requests.get_mut(&id) {
                    r.num_computed_tokens += blocks.len() * bs;
                    self.kv.remove_skipped_blocks(r);
                }
            }
        }
        self.kv.block_table(id).len() >= target
    }

    /// Plans and allocates one unit's chunks within `budget`: `Ok((request, tokens))` for those that compute
    /// this step, or `Err(())` when one could not get blocks (the others may keep what they got; they compute
    /// nothing this step). A beam search samples only if every beam can reach its last token in this step.
    pub(super) fn plan_unit(&mut self, unit: &[RequestId], budget: usize) -> Result<Vec<(RequestId, usize)>, ()> {
        let mut plan: Vec<(RequestId, usize)> = Vec::with_capacity(unit.len());
        if let [id] = unit {
            if Self::beam_root(&self.requests[id]).is_none() {
                let r = &self.requests[id];
                plan.push((*id, (r.num_tokens() - r.num_computed_tokens).min(budget)));
            }
        }
        if plan.is_empty() {
            let mut ready = Vec::with_capacity(unit.len());
            for (i, &id) in unit.iter().enumerate() {
                ready.push(self.share_from_siblings(id, &unit[..i]));
            }
            let to_end: Vec<usize> = unit
                .iter()
                .map(|id| {
                    let r = &self.requests[id];
                    r.num_tokens() - r.num_computed_tokens
                })
                .collect();
            let samples = ready.iter().all(|&x| x) && to_end.iter().sum::<usize>() <= budget;
            let mut left = budget;
            for ((&id, &ready), &to_end) in unit.iter().zip(&ready).zip(&to_end) {
                let n = match (samples, ready) {
                    (true, _) => to_end,
                    (false, true) => to_end.saturating_sub(1).min(left),
                    (false, false) => 0,
                };
                left -= n;
                plan.push((id, n));
            }
        }
        plan.retain(|&(_, n)| n > 0);
        for &(id, n) in &plan {
            if self.kv.allocate_slots(&self.requests[&id], n, &[]).is_none() {
                return Err(());
            }
        }
        Ok(plan)
    }

    /// Admits every waiting beam of the preempted search of `id` at once, if the seats and its worst case in free
    /// blocks allow: each beam takes its prefix-cache hits; the search's chunks for this step are planned as in
    /// the running phase. Returns the chunks, or `None` (nothing changed) when the search does not fit yet.
    pub(super) fn admit_search(
        &mut self,
        id: RequestId,
        free_seats: usize,
        budget: usize,
    ) -> Option<Vec<(RequestId, usize)>> {
        let root = Self::beam_root(&self.requests[&id])?;
        let beams = self.beams_of(root, false);
        let worst = self.beam_worst_case(&self.requests[&id])?;
        if beams.len() > free_seats || worst > self.kv.pool().num_free_blocks() {
            return None;
        }
        for &b in &beams {
            let r = &self.requests[&b];
            self.waiting.remove(r);
            let (hit_blocks, hit_tokens) = self.kv.get_computed_blocks(r);
            // The free blocks cover the whole search, so taking its hits cannot fail; without them it recomputes.
            let hit = self.kv.allocate_slots(r, 0, &hit_blocks).is_some();
            if let Some(r) = self.requests.get_mut(&b) {
                r.status = RequestStatus::Running;
                r.num_computed_tokens = if hit { hit_tokens } else { 0 };
            }
            self.running.push(b);
        }
        Some(self.plan_unit(&beams, budget).unwrap_or_default())
    }
}
