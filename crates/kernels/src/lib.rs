//! pagedllm-kernels: the device boundary.
//!
//! Everything that touches numbers in bulk lives here: weight storage formats (`tensor`, `quant`) and the
//! compute kernels of each backend. The CPU backend (`cpu`) is always built; CUDA, ROCm and PJRT backends are
//! added behind cargo features *in this crate only*, so the engine above never sees a `cfg(feature = ...)`.
//! Design after candle's backend split: one boundary, kernels in their own crate.

pub mod backend;
pub mod batch;
pub mod cpu;
pub mod cuda;
pub mod quant;
pub mod tensor;

pub use backend::Backend;
pub use batch::InputBatch;
pub use quant::GgmlType;
pub use tensor::{Storage, WeightMatrix};
