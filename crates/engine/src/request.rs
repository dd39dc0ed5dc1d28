//! A request as the scheduler sees it: vLLM V1's token-count model. A request has `num_tokens()` (prompt +
//! output so far) and `num_computed_tokens` (how many of those have KV in the cache). Each step the scheduler
//! hands out tokens until the second catches up with the first; prefill, chunked prefill, decode, prefix-cache
//! hits and recompute after preemption are all that one rule.
//!
//! With `n > 1` the engine submits one request; when its prompt is done the scheduler forks `n - 1` children that
//! share its KV blocks (copy on write of the partial last block). Children are ordinary requests afterwards.

use std::borrow::Cow;
use std::sync::Arc;

use crate::sampling_params::SamplingParams;

/// Engine-internal request id (the binding maps user-facing string ids to these).
pub type RequestId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// Aborted by the user (or the client went away).
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestStatus {
    Waiting,
    Running,
    /// Evicted to free blocks; waits again and recomputes its KV (prompt + output so far) when resumed.
    Preempted,
    Finished(FinishReason),
}

impl RequestStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Finished(_))
    }
}

/// What stopped a request with `FinishReason::Stop` (vLLM's `stop_reason`): a token id or a stop string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    TokenId(u32),
    String(String),
}

#[derive(Clone, Debug)]
pub struct Request {
    pub id: RequestId,
    /// For a forked sample: the request it was forked from; `None` for the request the user submitted.
    pub parent: Option<RequestId>,
    /// Which of the `n` samples this is (0 for the submitted request).
    pub sample_index: usize,
    pub prompt_token_ids: Arc<Vec<u32>>,
    pub output_token_ids: Vec<u32>,
    /// Tokens with KV in the cache (computed this life or found in the prefix cache).
    pub num_computed_tokens: usize,
    /// Prompt tokens served from the prefix cache when the request was first scheduled.
    pub num_cached_tokens: usize,
    pub status: RequestStatus,
    pub stop_reason: Option<StopReason>,
    pub params: Arc<SamplingParams>,
    /// `params.max_tokens`, resolved against the context length.
    pub max_tokens: usize,
    /// Lower runs first under the priority policy.
    pub priority: i32,
    /// Monotonic arrival order (FCFS tie-breaker).
    pub arrival: u64,
    /// Extra key mixed into this request's block hashes: requests with different salts never share KV.
    pub cache_salt: Option<String>,
    pub eos_token_ids: Arc<Vec<u32>>,
    pub num_preemptions: usize,
}

impl Request {
    pub fn new(
        id: RequestId,
        prompt_token_ids: Vec<u32>,
        params: Arc<SamplingParams>,
        max_tokens: usize,
        eos_token_ids: Arc<Vec<u32>>,
        arrival: u64,
    ) -> Self {
        Self {
            id,
            parent: None,
            sample_index: 0,
            prompt_token_ids: Arc::new(prompt_token_ids),
            output_token_ids: Vec::new(),
            num_computed_tokens: 0,
            num_cached_tokens: 0,
            status: RequestStatus::Waiting,
            stop_reason: None,
            params,
            max_tokens,
            priority: 0,
            arrival,
            cache_salt: None,
            eos_token_ids,
            num_preemptions: 0,
        }
    }

    pub fn num_prompt_tokens(&self) -> usize {
        self.prompt_token_ids.len()
    }

    pub fn num_tokens(&self) -> usize {
        self.prompt_token_ids.len() + self.output_token_ids.len()
    }

    /// Token at absolute position `i` (prompt first, then output).
    pub fn token_at(&self, i: usize) -> u32 {
        let p = self.prompt_token_ids.len();
        if i < p {
            self.prompt_token_ids[i]
        } else {
            self.output_token_ids[i - p]
        }
    }

    /// Tokens `[start, end)` of prompt + output: borrowed when the range lies in one of them (every prompt chunk
    /// and decode), copied only when it spans both (recomputing after a preemption).
    pub fn tokens(&self, start: usize, end: usize) -> Cow<'_, [u32]> {
        let p = self.prompt_token_ids.len();
        if end <= p {
            Cow::Borrowed(&self.prompt_token_ids[start..end])
        } else if start >= p {
            Cow::Borrowed(&self.output_token_ids[start - p..end - p])
        } else {
            Cow::Owned((start..end).map(|i| self.token_at(i)).collect())
        }
    }

    /// Samples still to fork from this request once its prompt is computed.
    pub fn pending_forks(&self) -> usize {
        if self.parent.is_none() && self.output_token_ids.is_empty() {
            self.params.num_sequences().saturating_sub(1)
        } else {
            0
        }
    }

    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ranges_borrow_unless_they_span_prompt_and_output() {
        let mut r = Request::new(
            1,
            vec![1, 2, 3],
            Arc::new(SamplingParams::default()),
            8,
            Arc::new(vec![]),
            0,
        );
        r.output_token_ids = vec![4, 5];
        assert!(matches!(r.tokens(0, 3), Cow::Borrowed(&[1, 2, 3])));
        assert!(matches!(r.tokens(3, 5), Cow::Borrowed(&[4, 5])));
        assert!(matches!(r.tokens(4, 5), Cow::Borrowed(&[5])));
        assert!(matches!(r.tokens(2, 2), Cow::Borrowed(&[])));
        let spanning = r.tokens(1, 5);
        assert!(matches!(spanning, Cow::Owned(_)));
        assert_eq!(&*spanning, &[2, 3, 4, 5]);
        assert_eq!(&*r.tokens(0, 5), &[1, 2, 3, 4, 5]);
    }
}
