//! The CPU backend: multi-threaded kernels over f32 activations (a persistent `team` of threads
//! during a forward pass, rayon outside one), reading weights in their stored format. Each kernel is one module; `vec` holds the vectorizable primitives they share; `backend` puts them behind
//! the backend ops a model is written against.

pub mod activation;
pub mod attention;
pub mod exp_sum;
mod backend;
pub mod int8_matmul;
#[cfg(target_arch = "aarch64")]
mod int8_neon;
#[cfg(target_arch = "x86_64")]
mod int8_x86;
pub mod isa;
pub mod kv_cache;
pub mod matmul;
pub mod norm;
pub mod packed_matrix;
#[cfg(target_arch = "x86_64")]
mod packed_x86;
pub mod q8_acts;
pub mod rope;
pub mod team;
pub mod vec;

pub use backend::{CpuBackend, CpuError};
pub use isa::{CpuIsa, CpuPrecision};
pub use kv_cache::{KvCache, KvDtype};
