//! `MaskPool`: the few threads that compute grammar masks while the engine thread runs a step's forward pass.
//!
//! Its own small rayon pool rather than rayon's global one: the CPU backend's matmuls fill the global pool, and a
//! mask job queued behind a whole forward pass would be late by exactly the time it was meant to hide. Masks of a
//! typical JSON schema take tens to hundreds of microseconds each (and advancing the matcher a few more), so
//! with a GPU backend, whose forward leaves the host cores idle, the pool takes most of them: at batch 128 an
//! 8B decode step lasts ~7 ms on an H200, and 128 masks on 4 threads did not fit in it (14% slower decode,
//! bench/results/gpu-structured-overlap-h200-2026-12-02/).

use crate::error::{EngineError, Result};

pub struct MaskPool {
    pool: rayon::ThreadPool,
}

impl MaskPool {
    /// The pool size for a backend: with a GPU, every core but two (the engine thread and the Node/server
    /// thread), at most 16; with the CPU backend, one per four cores, at least one and at most four.
    /// `PAGEDLLM_MASK_THREADS=N` overrides it (for measuring what the pool's size costs the engine thread).
    pub fn default_threads(gpu_backend: bool) -> usize {
        if let Some(n) = std::env::var("PAGEDLLM_MASK_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
            return n.clamp(1, 64);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if gpu_backend {
            cores.saturating_sub(2).clamp(1, 16)
        } else {
            (cores / 4).clamp(1, 4)
        }
    }

    /// `threads` = 0 picks [`default_threads`](Self::default_threads) for the CPU backend.
    pub fn new(threads: usize) -> Result<Self> {
        let threads = if threads == 0 { Self::default_threads(false) } else { threads };
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
