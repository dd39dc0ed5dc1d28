//! `MaskPool`: the few threads that compute grammar masks while the engine thread runs a step's forward pass.
//!
//! Its own small rayon pool rather than rayon's global one: the CPU backend's matmuls fill the global pool, and a
//! mask job queued behind a whole forward pass would be late by exactly the time it was meant to hide. Masks of a
//! typical JSON schema take tens of microseconds each (llguidance's figures), so two threads keep up with large
//! batches.

use crate::error::{EngineError, Result};

pub struct MaskPool {
    pool: rayon::ThreadPool,
}

impl MaskPool {
    /// `threads` = 0 picks one per four cores, at least one and at most four.
    pub fn new(threads: usize) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if threads == 0 { (cores / 4).clamp(1, 4) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("pagedllm-mask-{i}"))
            .build()
            .map_err(|e| EngineError::Internal(format!("starting the grammar mask threads: {e}")))?;
        Ok(Self { pool })
    }

    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        self.pool.spawn(job);
    }
}
