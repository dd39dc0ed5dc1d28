//! The CUDA backend: the backend ops (`crate::backend::Backend`) on one NVIDIA GPU, bf16 or f16 (or, as a
//! reference, f32) weights, activations and KV cache, plus sampling on the device.
//!
//! What it guarantees: the same contract as the CPU backend — one flattened varlen [`InputBatch`] per step,
//! a paged KV cache addressed only through block tables and the slot mapping, logits (or sampled tokens) for
//! `logits_indices` rows; the model's forward is the same code on both. GEMMs go through cuBLASLt (bf16/f16 in, f32 accumulate); everything around them is our
//! own kernels in `kernels/*.cu`, compiled to PTX by build.rs and loaded with cudarc (dynamic loading: a
//! CPU-only build needs no CUDA toolkit, a CUDA build runs on machines without a GPU until one is asked for).
//!
//! The feature gate stops here: without `cuda`, [`CudaBackend`] exists but every constructor returns
//! [`CudaError::Unavailable`], so the engine above never needs a `cfg`. Design after vLLM's GPU model runner
//! (persistent input buffers, memory profiling before sizing the KV cache) and candle's cudarc backend.
//!
//! [`InputBatch`]: crate::InputBatch

mod error;
pub mod graph_sizes;
pub mod memory_plan;
mod sample_params;
mod shape;
mod weight_encoding;

pub use error::CudaError;
pub use memory_plan::{plan_kv_blocks, KvPlan};
pub use sample_params::{
    mask_words, DeviceSample, DeviceSampleParams, TokenEdit, MAX_DEVICE_TOKEN_EDITS, MAX_DEVICE_TOP_LOGPROBS,
};
pub use shape::{ActivationDtype, CudaOptions, ModelShape};
pub use weight_encoding::{encode_weight, encoded_weight};

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod gemm;
#[cfg(feature = "cuda")]
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/cuda_ptx.rs"));
}
#[cfg(feature = "cuda")]
pub use backend::CudaBackend;

#[cfg(not(feature = "cuda"))]
mod unavailable;
#[cfg(not(feature = "cuda"))]
pub use unavailable::CudaBackend;

/// Whether this build has the CUDA backend compiled in.
pub const COMPILED: bool = cfg!(feature = "cuda");
