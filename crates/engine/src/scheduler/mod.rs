//! The scheduler (vLLM V1's token-count scheduler with preemption by recompute, chunked prefill, prefix-cache
//! hits and in-engine `n > 1` forking): `Scheduler::schedule` -> model runner -> `Scheduler::update_from_output`.

mod beam_group;
mod integrity;
pub mod output;
pub mod request_queue;
#[allow(clippy::module_inception)]
pub mod scheduler;
pub mod token_stop;

#[cfg(test)]
mod fake_runner;
#[cfg(test)]
mod randomized_tests;
#[cfg(test)]
mod beam_randomized_tests;
#[cfg(test)]
mod tests;

pub use beam_group::{beam_worst_case_blocks, check_beam_search_fits};
pub use output::{ScheduledRequest, SchedulerOutput, SchedulerStats, UpdateResult};
pub use request_queue::RequestQueue;
pub use scheduler::{Scheduler, SchedulerConfig};
pub use token_stop::check_token_stop;
