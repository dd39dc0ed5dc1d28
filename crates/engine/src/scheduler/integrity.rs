//! `Scheduler::check_integrity`: the executable invariants of the scheduler and its KV cache (after
//! mini-sglang's `check_integrity`). Tests call it after every step; a failure names the broken invariant.

use std::collections::HashSet;

use super::scheduler::Scheduler;
use crate::request::RequestStatus;

impl Scheduler {
    /// Checks: every live request is in exactly one of running / waiting with a matching status; waiting requests
    /// hold no KV and have computed nothing; seats never exceed `max_num_seqs`; token counts stay within
    /// `max_tokens` and the context; forked children are well formed; and the KV cache's own invariants
    /// (block accounting, free list, prefix map, ref counts == tables, tables cover computed tokens).
    pub fn check_integrity(&self) -> Result<(), String> {
        let running: HashSet<_> = self.running.iter().copied().collect();
        if running.len() != self.running.len() {
            return Err("a request is listed twice in running".to_string());
        }
        let waiting_ids = self.waiting.ids();
        let waiting: HashSet<_> = waiting_ids.iter().copied().collect();
        if waiting.len() != waiting_ids.len() {
            return Err("a request is listed twice in waiting".to_string());
        }
        if let Some(id) = running.intersection(&waiting).next() {
            return Err(format!("request {id} is both running and waiting"));
        }
        if running.len() + waiting.len() != self.requests.len() {
            return Err(format!(
                "{} running + {} waiting but {} live requests",
                running.len(),
                waiting.len(),
                self.requests.len()
            ));
        }
        let mut seats = 0;
        for (&id, r) in &self.requests {
            if r.id != id {
                return Err(format!("request stored under id {id} says it is {}", r.id));
            }
            let listed_running = running.contains(&id);
            match r.status {
                RequestStatus::Running if listed_running => seats += self.seats(r),
                RequestStatus::Waiting | RequestStatus::Preempted if waiting.contains(&id) => {
                    if r.num_computed_tokens != 0 || self.kv.has_blocks(id) {
                        return Err(format!("waiting request {id} holds KV or computed tokens"));
                    }
                }
                s => return Err(format!("request {id} has status {s:?} but running = {listed_running}")),
            }
            if r.num_computed_tokens > r.num_tokens() {
                return Err(format!(
                    "request {id}: {} computed of {} tokens",
                    r.num_computed_tokens,
                    r.num_tokens()
                ));
            }
            if r.num_tokens() > self.config.max_model_len || r.output_token_ids.len() > r.max_tokens {
                return Err(format!("request {id} outgrew its context or max_tokens"));
            }
            if r.num_tokens() == self.config.max_model_len || r.output_token_ids.len() == r.max_tokens {
                return Err(format!("request {id} reached a length limit but did not finish"));
            }
            if let Some(p) = r.parent {
                if r.sample_index == 0
                    || r.sample_index >= r.params.num_sequences()
                    || !self.forked_parents.contains(&p) && self.requests.contains_key(&p)
                {
                    return Err(format!(
                        "forked request {id} (sample {}) of parent {p} is malformed",
                        r.sample_index
                    ));
                }
            }
        }
        if seats > self.config.max_num_seqs {
            return Err(format!(
                "{seats} seats taken, max_num_seqs is {}",
                self.config.max_num_seqs
            ));
        }
        if let Some(id) = self.forked_parents.iter().find(|id| !self.requests.contains_key(id)) {
            return Err(format!("finished request {id} is still marked as forked"));
        }
        if let Some(&id) = self.requests.keys().find(|&&id| id >= self.next_id) {
            return Err(format!("request id {id} was not drawn from alloc_request_id"));
        }
        self.kv.check_integrity(&self.requests)
    }
}
