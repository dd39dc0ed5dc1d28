//! pagedllm's Node-API binding (napi-rs v3): a thin `Engine` class over `pagedllm_engine::LLMEngine` and a
//! `RequestHandle` per submitted request. Everything JavaScript-facing (validation, camelCase API, accumulation of
//! deltas, typed errors) lives in the TypeScript layer (`src/`); this crate only moves JSON across the boundary.
//!
//! Guarantees: no entry point blocks the event loop for long (model loading runs on a blocking thread, waiting
//! for output is a Promise), no panic crosses into Node (every entry is wrapped, a panic becomes a JS Error with
//! code `internal_error`), and every engine error carries `EngineError::code()` in its message as
//! `[code] message` (`[invalid_param:field] message` for a bad field), which `src/errors.ts` turns into a typed
//! error.

mod backends;
mod engine;
mod errors;
mod request;

pub use backends::backends;
pub use engine::Engine;
pub use errors::{engine_error, guard, tagged_message};
pub use request::RequestHandle;
