//! `MaskPool`: the few threads that compute grammar masks while the engine thread runs a step's forward pass.
//!
//! Its own small rayon pool rather than rayon's global one: the CPU backend's matmuls fill the global pool, and a
//! mask job queued behind a whole forward pass would be late by exactly the time it was meant to hide. Masks of a
//! typical JSON schema take tens to hundreds of microseconds each (and advancing the matcher a few more), so
//! with a GPU backend, whose forward leaves the host cores idle, the pool takes several of them: at batch 128 an
//! 8B decode step lasts ~7 ms on an H200. The masks of a step start as one job once the next forward is
//! launched, and the engine thread computes the rows the pool has not reached, so a pool of 6 suffices there
//! (bench/results/gpu-structured-phases-h200-2026-12-03/).

use crate::error::{EngineError, Result};

pub struct MaskPool {
    pool: rayon::ThreadPool,
}

impl MaskPool {
    /// The pool size for a backend: with a GPU, every core but two (the engine thread and the Node/server
    /// thread), at most 6; with the CPU backend, one per four cores, at least one and at most four.
    /// `PAGEDLLM_MASK_THREADS=N` overrides it (for measuring what the pool's size costs the engine thread).
    pub fn default_threads(gpu_backend: bool) -> usize {
        if let Some(n) = std::env::var("PAGEDLLM_MASK_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
            return n.clamp(1, 64);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if gpu_backend {
            // At most 6: the engine thread computes masks beside the pool while the GPU runs, and a larger pool
            // slowed the engine thread's other work (H200, batch 128: 14 threads 11.6% decode cost, 6 threads
            // 8.6%, 2 threads 7.8%; bench/results/gpu-structured-phases-h200-2026-12-03/mask-threads).
            cores.saturating_sub(2).clamp(1, 6)
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
