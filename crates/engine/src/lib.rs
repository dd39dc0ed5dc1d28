//! pagedllm-engine: the pure-Rust core of pagedllm (no device code; kernels live in `pagedllm-kernels`).
//!
//! Data flow of one step (see `engine`): `Scheduler::schedule` -> `ModelRunner::execute` (one flattened
//! varlen batch) -> backend forward -> logits -> `Sampler` -> `Scheduler::update_from_output` -> incremental
//! detokenizer -> per-request channel. Design after vLLM V1 (token-count scheduling, BlockPool with prefix
//! caching), TGI (actor + channels at the async boundary) and candle (one backend boundary).

pub mod config;
pub mod engine;
pub mod error;
pub mod kv;
pub mod loader;
pub mod model;
pub mod request;
pub mod runner;
pub mod sampler;
pub mod sampling_params;
pub mod scheduler;
pub mod structured;
pub mod tokenizer;

pub use config::{CpuPrecisionChoice, EngineConfig, SchedulingPolicy};
pub use error::{EngineError, Result};
pub use request::{FinishReason, RequestId};
pub use sampling_params::{BeamSearchParams, EarlyStopping, SamplingParams};
