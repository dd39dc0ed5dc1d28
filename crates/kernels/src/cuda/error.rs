//! Errors of the CUDA backend. Driver and cuBLAS failures keep the library's message; nothing here panics.

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// This build or this machine cannot run CUDA (feature off, no driver, no GPU, library missing).
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error("CUDA driver error while {context}: {message}")]
    Driver { context: String, message: String },
    #[error("cuBLASLt error while {context}: {message}")]
    Blas { context: String, message: String },
    /// A model or option the backend does not support (names what and why).
    #[error("{0}")]
    Unsupported(String),
    /// The GPU has too little memory for the model and options.
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),
    #[error("loading weights: {0}")]
    Weights(String),
}
