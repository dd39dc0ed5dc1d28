//! `SampleConstraint`: one sample's grammar state (an llguidance `Matcher`) and the allowed-token bitmask for its
//! next position.
//!
//! Masks are computed off the engine thread, vLLM-style (`vllm/v1/structured_output/__init__.py` fills the
//! grammar bitmask while the model runs): when a sample's state changes (it was admitted, or it consumed a
//! token), `prefetch` queues the mask for its next position on the `MaskPool`, so it is computed while the next
//! step's forward pass runs; `mask` at sampling time takes the finished mask, or computes it itself when the job
//! has not run yet (the lock makes "compute once per position" exact: a job that finds the mask already there does
//! nothing).
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
}

impl State {
    fn ensure_mask(&mut self) {
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
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent copy of this state (a forked sample continues from its parent's position).
    pub fn fork(&self) -> Self {
        let s = self.lock();
        Self {
            state: Arc::new(Mutex::new(State {
                matcher: s.matcher.deep_clone(),
                consumed: s.consumed,
                mask: s.mask.clone(),
                mask_at: s.mask_at,
                error: s.error.clone(),
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

    /// Advances past `token` (one the mask allowed).
    pub fn consume(&self, token: u32) -> Result<()> {
        let mut s = self.lock();
        if let Some(e) = &s.error {
            return Err(grammar_error(e));
        }
        if let Err(e) = s.matcher.consume_token(token) {
            let message = format!("token {token} rejected: {e}");
            s.error = Some(message.clone());
            return Err(grammar_error(&message));
        }
        s.consumed += 1;
        Ok(())
    }

    /// Whether the output so far is a complete match (EOS would be allowed now).
    pub fn is_accepting(&self) -> bool {
        self.lock().matcher.is_accepting().unwrap_or(false)
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
