//! `RequestHandle`: the JS side of one request's `RequestStream`. `next()` resolves with the next
//! `RequestOutput` delta (camelCase) or `null` once the finished delta was delivered. Dropping the handle (GC)
//! drops the stream, which aborts an unfinished request, so an abandoned request never holds KV blocks for long.

use std::sync::Arc;

use napi::tokio::sync::Mutex;
use napi::Result;
use napi_derive::napi;
use pagedllm_engine::engine::{LLMEngine, RequestStream};
use pagedllm_engine::EngineError;

use crate::errors::{engine_error, guard, joined};

#[napi]
pub struct RequestHandle {
    request_id: String,
    engine: LLMEngine,
    // Shared with the task that awaits the next delta, so `abort()` never waits behind a pending `next()`.
    stream: Arc<Mutex<RequestStream>>,
}

impl RequestHandle {
    pub fn new(engine: LLMEngine, stream: RequestStream) -> Self {
        Self {
            request_id: stream.request_id.clone(),
            engine,
            stream: Arc::new(Mutex::new(stream)),
        }
    }
}

#[napi]
impl RequestHandle {
    #[napi(getter)]
    pub fn request_id(&self) -> String {
        self.request_id.clone()
    }

    /// The next delta, or `null` when the request is done. Calls queue behind each other (one receiver).
    #[napi]
    pub async fn next(&self) -> Result<Option<serde_json::Value>> {
        let stream = Arc::clone(&self.stream);
        // Spawned so that a panic inside the engine's stream surfaces as a JoinError we can report.
        let received = joined(napi::tokio::spawn(async move { stream.lock_owned().await.next().await }).await)?;
        match received {
            None => Ok(None),
            Some(Err(e)) => Err(engine_error(e)),
            Some(Ok(out)) => serde_json::to_value(&out)
                .map(Some)
                .map_err(|e| engine_error(EngineError::Internal(format!("serializing output: {e}")))),
        }
    }

    /// Aborts the request (its stream then ends with a delta whose finish reason is "abort"). False when the
    /// request is no longer live.
    #[napi]
    pub fn abort(&self) -> Result<bool> {
        guard(|| Ok(self.engine.abort(&self.request_id)))
    }
}
