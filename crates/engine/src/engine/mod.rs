//! The engine: `LLMEngine` (a thread-safe handle) owns an engine thread that runs `EngineCore::step` in a loop.
//! One command channel goes in; each request gets its own output channel (TGI's actor design). The engine
//! thread never waits on JavaScript and JavaScript never waits on a step.

pub(crate) mod beam_search;
mod beam_stop;
mod builder;
mod core;
pub mod handle;
pub mod output;
mod request_group;
pub mod request_input;
pub mod sampling_defaults;
pub mod stats;
mod threads;

pub use handle::{LLMEngine, RequestStream};
pub use output::{CompletionDelta, PositionLogprobs, RequestMetrics, RequestOutput, TopLogprob};
pub use request_input::{Prompt, RequestInput};
pub use stats::{EngineStats, ModelInfo};
