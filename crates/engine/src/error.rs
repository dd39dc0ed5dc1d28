//! The engine's error type. Every fallible entry point returns `Result<_, EngineError>`; the variants name the
//! offending input so the TS layer can map them to typed errors / HTTP 4xx without parsing strings.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    /// A request field is out of range or inconsistent (maps to HTTP 400 with `param = field`).
    #[error("invalid value for `{field}`: {message}")]
    InvalidParam { field: String, message: String },

    /// Prompt plus requested output does not fit the model's context.
    #[error("prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceeds the model's context length of {max_model_len} tokens")]
    ContextLength {
        prompt_len: usize,
        max_tokens: usize,
        max_model_len: usize,
    },

    /// The model path, file or repo id could not be found.
    #[error("model not found: {0}")]
    ModelNotFound(String),

    /// The model files exist but cannot be used (corrupt, truncated, unsupported).
    #[error("cannot load model from {path}: {message}")]
    ModelLoad { path: String, message: String },

    #[error("unsupported: {0}")]
    Unsupported(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// The engine was closed or its thread has died.
    #[error("engine is closed")]
    Closed,

    #[error("unknown request id {0}")]
    UnknownRequest(String),

    #[error("internal error: {0}")]
    Internal(String),

    /// The compute backend (e.g. the GPU) failed or is not available.
    #[error("backend: {0}")]
    Backend(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidParam {
            field: field.to_string(),
            message: message.into(),
        }
    }
    pub fn load(path: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Self::ModelLoad {
            path: path.to_string(),
            message: message.into(),
        }
    }
    /// A stable machine-readable code for the binding (`EngineError.code` on the TS side).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidParam { .. } => "invalid_param",
            Self::ContextLength { .. } => "context_length_exceeded",
            Self::ModelNotFound(_) => "model_not_found",
            Self::ModelLoad { .. } => "model_load_failed",
            Self::Unsupported(_) => "unsupported",
            Self::Tokenizer(_) => "tokenizer_error",
            Self::ChatTemplate(_) => "chat_template_error",
            Self::Closed => "engine_closed",
            Self::UnknownRequest(_) => "unknown_request",
            Self::Internal(_) => "internal_error",
            Self::Backend(_) => "backend_error",
            Self::Io { .. } => "io_error",
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
