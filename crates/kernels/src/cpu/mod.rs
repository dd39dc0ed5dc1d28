//! The CPU backend: multi-threaded (rayon) kernels over f32 activations, reading weights in their stored
//! format. TODO(kernels helper): matmul, norm, rope, activation, attention.

pub mod kv_cache;

pub use kv_cache::KvCache;
