//! What one scheduler step hands to the model runner (`SchedulerOutput`), what the scheduler reports back after
//! the step's samples arrive (`UpdateResult`), and its counters (`SchedulerStats`).

use smallvec::SmallVec;

use crate::request::{FinishReason, Request, RequestId};

/// One request's share of a step: compute KV for positions `[start_pos, start_pos + num_new_tokens)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledRequest {
    pub request_id: RequestId,
    pub num_new_tokens: usize,
    /// The request's `num_computed_tokens` before this step (after any prefix-cache hit).
    pub start_pos: usize,
    /// Requests that sample a token from the logits of this chunk's last position: empty for a non-final
    /// prefill chunk, `[request_id]` normally, and `[parent, children...]` on the step that forks `n > 1`
    /// samples (the children are not computed; they share the parent's KV and logits). Inline storage for the
    /// usual one id, so a step allocates nothing per request for it.
    pub sample_ids: SmallVec<[RequestId; 2]>,
    /// The chunk starts inside the prompt (prompt-logprob positions may be in it).
    pub is_prefill: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    pub scheduled: Vec<ScheduledRequest>,
    /// `(src, dst)` whole-block copies to apply before this step's KV writes (copy-on-write of shared blocks).
    pub blocks_to_copy: Vec<(u32, u32)>,
    /// Requests evicted this step; they lost their KV and will recompute it when resumed.
    pub preempted: Vec<RequestId>,
    /// `(parent, child)` samples forked this step.
    pub forked: Vec<(RequestId, RequestId)>,
    /// Sum of `num_new_tokens` (never above `max_num_batched_tokens`).
    pub num_batched_tokens: usize,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct UpdateResult {
    /// Tokens appended this step, in schedule order.
    pub new_tokens: Vec<(RequestId, u32)>,
    /// Requests that finished on a token-level stop (length, context, EOS, stop token id).
    pub finished: Vec<(RequestId, FinishReason)>,
    /// Their final state (status, `stop_reason`, output, `num_cached_tokens`); the scheduler no longer holds them.
    pub finished_requests: Vec<Request>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub num_running: usize,
    pub num_waiting: usize,
    /// Usable KV blocks (the null block excluded).
    pub num_blocks_total: usize,
    pub num_blocks_in_use: usize,
    /// Free blocks still holding a cached prefix (evictable).
    pub num_blocks_cached_free: usize,
    /// Prefix-cache lookups and hits, in tokens (vLLM's convention).
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub num_preemptions: u64,
}
