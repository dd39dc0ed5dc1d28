//! Engine errors and panics as napi errors. The JS side cannot see Rust enum variants, so the stable code
//! (`EngineError::code()`) and, for `InvalidParam`, the offending field travel in a `[code:field]` prefix of the
//! message; the `source()` chain becomes the JS error's `cause` chain.

use std::any::Any;
use std::error::Error as StdError;
use std::panic::{catch_unwind, AssertUnwindSafe};

use napi::{Error, Result, Status};
use pagedllm_engine::EngineError;

/// `[code] message`, or `[invalid_param:field] message` when the engine named a field.
pub fn tagged_message(err: &EngineError) -> String {
    match err {
        EngineError::InvalidParam { field, .. } => format!("[{}:{}] {}", err.code(), field, err),
        _ => format!("[{}] {}", err.code(), err),
    }
}

/// Converts an engine error, keeping its cause chain as nested JS `cause`s.
pub fn engine_error(err: EngineError) -> Error {
    let mut out = Error::new(Status::GenericFailure, tagged_message(&err));
    if let Some(cause) = cause_chain(err.source()) {
        out.set_cause(cause);
    }
    out
}

fn cause_chain(source: Option<&(dyn StdError + 'static)>) -> Option<Error> {
    let source = source?;
    let mut err = Error::new(Status::GenericFailure, source.to_string());
    if let Some(next) = cause_chain(source.source()) {
        err.set_cause(next);
    }
    Some(err)
}

/// A bad argument that never reached the engine (malformed JSON from a direct caller of the binding).
pub fn invalid_argument(field: &str, message: impl std::fmt::Display) -> Error {
    engine_error(EngineError::invalid(field, message.to_string()))
}

/// What a panic said, for the error that replaces it.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

pub fn panic_error(payload: &(dyn Any + Send)) -> Error {
    engine_error(EngineError::Internal(format!(
        "panic in native code: {}",
        panic_message(payload)
    )))
}

/// Runs one synchronous entry point; a panic becomes an `internal_error` instead of unwinding into Node (which
/// would abort the process).
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(panic_error(payload.as_ref())),
    }
}

/// Maps a finished tokio task (blocking load or stream receive): a panic inside it becomes an `internal_error`.
pub fn joined<T>(result: std::result::Result<T, napi::tokio::task::JoinError>) -> Result<T> {
    match result {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => Err(panic_error(e.into_panic().as_ref())),
        Err(e) => Err(engine_error(EngineError::Internal(format!(
            "native task was cancelled: {e}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_param_carries_code_and_field() {
        let msg = tagged_message(&EngineError::invalid("top_p", "must be in (0, 1], got 0"));
        assert!(msg.starts_with("[invalid_param:top_p] "), "{msg}");
        assert!(msg.contains("must be in (0, 1]"), "{msg}");
    }

    #[test]
    fn other_errors_carry_their_code() {
        for (err, code) in [
            (EngineError::Closed, "engine_closed"),
            (EngineError::ModelNotFound("/nope.gguf".into()), "model_not_found"),
            (
                EngineError::ContextLength {
                    prompt_len: 10,
                    max_tokens: 5,
                    max_model_len: 12,
                },
                "context_length_exceeded",
            ),
        ] {
            let msg = tagged_message(&err);
            assert!(msg.starts_with(&format!("[{code}] ")), "{msg}");
        }
    }

    #[test]
    fn io_source_becomes_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = engine_error(EngineError::Io {
            context: "reading /x.gguf".into(),
            source: io,
        });
        assert!(err.reason.starts_with("[io_error] reading /x.gguf"));
        assert_eq!(err.cause.as_ref().map(|c| c.reason.as_str()), Some("no such file"));
    }

    #[test]
    fn guard_turns_a_panic_into_an_internal_error() {
        let err = guard::<()>(|| panic!("boom {}", 42)).unwrap_err();
        assert!(err.reason.starts_with("[internal_error] "), "{}", err.reason);
        assert!(err.reason.contains("boom 42"), "{}", err.reason);
        assert_eq!(guard(|| Ok(7)).unwrap(), 7);
    }
}
