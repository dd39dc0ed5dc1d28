//! The model runner: turns a `SchedulerOutput` into ONE flattened varlen `InputBatch`, runs the backend's
//! forward pass, and says which logits row belongs to which request.

pub mod batch_builder;
pub mod model_runner;

pub use batch_builder::{build_input_batch, BatchLayout, ScheduledSeq};
pub use model_runner::{ModelOn, ModelRunner, StepLogits};
