//! `SampleConstraint`: one sample's grammar state (an llguidance `Matcher`) and the allowed-token bitmask for its
//! next position.
//!
//! Masks are computed off the engine thread, vLLM-style (`vllm/v1/structured_output/__init__.py` fills the
//! grammar bitmask while the model runs): when a sample's state changes (it was admitted, or it sampled a
//! token), `prefetch` / `advance` queue the work on the `MaskPool` — advancing the matcher past the token, then
//! the mask for the next position —, so it runs while the engine finishes this step and the next step's forward
//! pass runs; `mask` at sampling time takes the finished mask, or does the queued work itself when the job has
//! not run yet. The lock makes this exact: tokens are queued in order under it (`pending`), whoever holds it
//! first consumes them, and a job that finds the mask already there does nothing.
//!
//! The state lives with the engine's per-sample output state, not with the scheduler's request, so preemption and
//! resume (which recompute KV but keep the output tokens) leave it as it was; a forked sample (`n > 1`) starts from
//! a deep copy of its parent's state.

use std::sync::{Arc, Mutex};

use llguidance::Matcher;

use super::mask_pool::MaskPool;
use crate::error::{EngineError, Result};

struct State {
    matcher: Matcher,
    /// Tokens consumed so far (the position the matcher is at).
    consumed: usize,
    /// The mask for position `mask_at`, one bit per token id (bit `t % 32` of word `t / 32`).
    mask: Arc<Vec<u32>>,
    mask_at: Option<usize>,
    /// The first error the matcher reported (the request is failed with it).
    error: Option<String>,
    /// Sampled tokens not consumed by the matcher yet (`advance` queued them; the next holder of the lock
    /// consumes them, in order).
    pending: Vec<u32>,
}

impl State {
    /// Consumes the queued tokens (stops at the first the grammar rejects: the error is kept).
    fn catch_up(&mut self) {
        for token in std::mem::take(&mut self.pending) {
            if self.error.is_some() {
                return;
            }
            match self.matcher.consume_token(token) {
                Ok(_) => self.consumed += 1,
                Err(e) => self.error = Some(format!("token {token} rejected: {e}")),
            }
        }
    }

    fn ensure_mask(&mut self) {
        self.catch_up();
        if self.mask_at == Some(self.consumed) || self.error.is_some() {
            return;
        }
        // `_or_eos`: once the grammar is complete and can take nothing more, only EOS is allowed.
        match self.matcher.compute_mask_or_eos() {
            Ok(vob) => {
                self.mask = Arc::new(vob.as_slice().to_vec());
                self.mask_at = Some(self.consumed);
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct SampleConstraint {
    state: Arc<Mutex<State>>,
}

impl SampleConstraint {
    pub fn new(matcher: Matcher) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                matcher,
                consumed: 0,
                mask: Arc::new(Vec::new()),
                mask_at: None,
                error: None,
                pending: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent copy of this state (a forked sample continues from its parent's position).
    pub fn fork(&self) -> Self {
        let mut s = self.lock();
        s.catch_up();
        Self {
            state: Arc::new(Mutex::new(State {
                matcher: s.matcher.deep_clone(),
                consumed: s.consumed,
                mask: s.mask.clone(),
                mask_at: s.mask_at,
                error: s.error.clone(),
                pending: Vec::new(),
            })),
        }
    }

    /// Queues the mask for the current position on `pool` (returns at once).
    pub fn prefetch(&self, pool: &MaskPool) {
        let state = self.state.clone();
        pool.spawn(move || state.lock().unwrap_or_else(|e| e.into_inner()).ensure_mask());
    }

    /// The allowed tokens at the current position (waits for a running prefetch, computes it if none ran).
    pub fn mask(&self) -> Result<Arc<Vec<u32>>> {
        let mut s = self.lock();
        s.ensure_mask();
        match &s.error {
            Some(e) => Err(grammar_error(e)),
            None => Ok(s.mask.clone()),
        }
    }

    /// Advances past `token` (one the mask allowed) now, on this thread.
    pub fn consume(&self, token: u32) -> Result<()> {
        let mut s = self.lock();
        s.pending.push(token);
        s.catch_up();
        match &s.error {
            Some(e) => Err(grammar_error(e)),
            None => Ok(()),
        }
    }

    /// Queues `token` (one the mask allowed) and the next position's mask on `pool`; returns at once. A token
    /// the grammar rejects fails the next `mask` (and so the request) with the matcher's error.
    pub fn advance(&self, token: u32, pool: &MaskPool) {
        self.lock().pending.push(token);
        self.prefetch(pool);
    }

    /// Queues `token` (one the mask allowed) without computing anything: the next `mask`, or a `prefetch_all`
    /// job, consumes it. A token the grammar rejects fails the next `mask` with the matcher's error.
    pub fn queue(&self, token: u32) {
        self.lock().pending.push(token);
    }

    /// `prefetch` for many samples as one job on `pool` (their masks in parallel inside it): one hand-off.
    pub fn prefetch_all(items: &[SampleConstraint], pool: &MaskPool) {
        if items.is_empty() {
            return;
        }
        let states: Vec<_> = items.iter().map(|c| c.state.clone()).collect();
        pool.spawn(move || {
            use rayon::prelude::*;
            states
                .par_iter()
                .for_each(|s| s.lock().unwrap_or_else(|e| e.into_inner()).ensure_mask());
        });
    }

    /// Whether the output so far is a complete match (EOS would be allowed now).
    pub fn is_accepting(&self) -> bool {
        let mut s = self.lock();
        s.catch_up();
        s.matcher.is_accepting().unwrap_or(false)
    }
}

fn grammar_error(message: &str) -> EngineError {
    EngineError::Internal(format!("structured output matcher: {message}"))
}

/// Whether bit `token` is set in `mask` (tokens past the mask's end are not allowed).
#[inline]
pub fn mask_allows(mask: &[u32], token: usize) -> bool {
    mask.get(token / 32).is_some_and(|w| w & (1 << (token % 32)) != 0)
}
