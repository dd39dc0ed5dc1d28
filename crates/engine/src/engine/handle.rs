//! `LLMEngine`: the public handle. API surface only in this commit; the engine thread is wired next.

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};

use super::{EngineStats, ModelInfo, RequestInput, RequestOutput};

#[derive(Clone)]
pub struct LLMEngine {
    info: ModelInfo,
}

impl LLMEngine {
    /// Loads the model (`""` = the embedded default) and starts the engine thread. Blocking: seconds.
    pub fn start(model: &str, config: EngineConfig) -> Result<Self> {
        let _ = (model, config);
        Err(EngineError::Internal("engine not wired yet".into()))
    }
    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }
    /// Validates and tokenizes on the caller's thread (errors come back at once), then queues the request.
    pub fn add_request(&self, input: RequestInput) -> Result<RequestStream> {
        let _ = input;
        Err(EngineError::Closed)
    }
    /// Aborts a live request; returns false when no such request is live.
    pub fn abort(&self, request_id: &str) -> bool {
        let _ = request_id;
        false
    }
    pub fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let _ = (text, add_special_tokens);
        Err(EngineError::Closed)
    }
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let _ = (ids, skip_special_tokens);
        Err(EngineError::Closed)
    }
    /// Renders chat messages (`[{role, content}]`) with the model's template, or `chat_template` when given.
    pub fn apply_chat_template(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        chat_template: Option<&str>,
        extra: Option<&serde_json::Value>,
    ) -> Result<String> {
        let _ = (messages, add_generation_prompt, chat_template, extra);
        Err(EngineError::Closed)
    }
    /// False once the engine thread has exited (closed or died).
    pub fn is_alive(&self) -> bool {
        false
    }
    /// Idempotent: aborts in-flight requests, stops and joins the engine thread.
    pub fn shutdown(&self) {}
}

/// The output channel of one request. Dropping it before the request finished aborts the request.
pub struct RequestStream {
    pub request_id: String,
}

impl RequestStream {
    /// Next delta; `None` after the finished one was delivered (or the engine went away).
    pub async fn next(&mut self) -> Option<Result<RequestOutput>> {
        None
    }
    pub fn blocking_next(&mut self) -> Option<Result<RequestOutput>> {
        None
    }
    pub fn abort(&self) {}
}
