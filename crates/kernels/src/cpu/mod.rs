//! The CPU backend: multi-threaded (rayon) kernels over f32 activations, reading weights in their stored
//! format. Each kernel is one module; `vec` holds the vectorizable primitives they share.

pub mod activation;
pub mod attention;
pub mod kv_cache;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod vec;

pub use kv_cache::KvCache;
