//! The `Engine` class: owns an `LLMEngine` until `close()`. Every method takes JSON strings or plain values in and
//! gives plain JS values out (the engine's serde types, camelCase), so this file holds no schema of its own.
//! After `close()` every method fails with `engine_closed` (`isAlive()` answers false). Work whose cost grows with
//! the input (tokenizing, compiling and rendering a chat template) also comes as `...Async` methods that run on a
//! blocking thread, so the server never stalls its event loop (and other requests' streams) on one big request.

use napi::bindgen_prelude::spawn_blocking;
use napi::Result;
use napi_derive::napi;
use pagedllm_engine::engine::LLMEngine;
use pagedllm_engine::{EngineConfig, EngineError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::errors::{engine_error, guard, invalid_argument, joined};
use crate::request::RequestHandle;

#[napi]
pub struct Engine {
    inner: Option<LLMEngine>,
}

fn parse<T: DeserializeOwned>(field: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| invalid_argument(field, format!("malformed JSON: {e}")))
}

fn to_js<T: Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| engine_error(EngineError::Internal(format!("serializing output: {e}"))))
}

#[napi]
impl Engine {
    /// Loads `model` (a path, or `""` for the default model) with `configJson` (an `EngineConfig`, snake_case)
    /// on a blocking thread: loading takes seconds and must not stall the event loop.
    #[napi(factory)]
    pub async fn create(model: String, config_json: String) -> Result<Engine> {
        let config: EngineConfig = guard(|| parse("config", &config_json))?;
        let started = joined(spawn_blocking(move || LLMEngine::start(&model, config)).await)?;
        Ok(Engine {
            inner: Some(started.map_err(engine_error)?),
        })
    }

    fn engine(&self) -> Result<&LLMEngine> {
        self.inner.as_ref().ok_or_else(|| engine_error(EngineError::Closed))
    }

    /// `ModelInfo` (camelCase).
    #[napi]
    pub fn model_info(&self) -> Result<serde_json::Value> {
        guard(|| to_js(self.engine()?.model_info()))
    }

    /// Validates, tokenizes and queues one request (`RequestInput` JSON, snake_case). Errors come back here, at
    /// once; output comes through the returned handle.
    #[napi]
    pub fn add_request(&self, input_json: String) -> Result<RequestHandle> {
        guard(|| {
            let engine = self.engine()?;
            // Fields the caller left out take the model's generation defaults (generation_config.json).
            let input = engine.request_input_from_json(&input_json).map_err(engine_error)?;
            let stream = engine.add_request(input).map_err(engine_error)?;
            Ok(RequestHandle::new(engine.clone(), stream))
        })
    }

    /// `addRequest` on a blocking thread: tokenizing a long prompt and compiling a `structured_outputs` grammar
    /// the cache has not seen (a large JSON Schema can take long) then never stall the event loop, and so never
    /// other requests' streams. The compile still happens before the request reaches the engine thread, so it
    /// never runs inside a step either.
    #[napi]
    pub async fn add_request_async(&self, input_json: String) -> Result<RequestHandle> {
        let engine = self.engine()?.clone();
        let added = joined(
            spawn_blocking(move || {
                let input = engine.request_input_from_json(&input_json)?;
                let stream = engine.add_request(input)?;
                Ok::<_, EngineError>(RequestHandle::new(engine, stream))
            })
            .await,
        )?;
        added.map_err(engine_error)
    }

    /// Aborts a live request by id; false when none is live.
    #[napi]
    pub fn abort(&self, request_id: String) -> Result<bool> {
        guard(|| Ok(self.engine()?.abort(&request_id)))
    }

    /// `EngineStats` (camelCase).
    #[napi]
    pub fn stats(&self) -> Result<serde_json::Value> {
        guard(|| to_js(&self.engine()?.stats()))
    }

    #[napi]
    pub fn encode(&self, text: String, add_special_tokens: bool) -> Result<Vec<u32>> {
        guard(|| self.engine()?.encode(&text, add_special_tokens).map_err(engine_error))
    }

    /// `encode` on a blocking thread.
    #[napi]
    pub async fn encode_async(&self, text: String, add_special_tokens: bool) -> Result<Vec<u32>> {
        let engine = self.engine()?.clone();
        let encoded = joined(spawn_blocking(move || engine.encode(&text, add_special_tokens)).await)?;
        encoded.map_err(engine_error)
    }

    #[napi]
    pub fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> Result<String> {
        guard(|| self.engine()?.decode(&ids, skip_special_tokens).map_err(engine_error))
    }

    /// Renders `messagesJson` (`[{role, content}]`) with the model's chat template or `chatTemplate`;
    /// `extraJson` holds extra template variables.
    #[napi]
    pub fn apply_chat_template(
        &self,
        messages_json: String,
        add_generation_prompt: bool,
        chat_template: Option<String>,
        extra_json: Option<String>,
    ) -> Result<String> {
        guard(|| {
            let engine = self.engine()?;
            let messages: serde_json::Value = parse("messages", &messages_json)?;
            let extra: Option<serde_json::Value> = extra_json.as_deref().map(|j| parse("extra", j)).transpose()?;
            engine
                .apply_chat_template(
                    &messages,
                    add_generation_prompt,
                    chat_template.as_deref(),
                    extra.as_ref(),
                )
                .map_err(engine_error)
        })
    }

    /// `applyChatTemplate` on a blocking thread (parsing the messages JSON too).
    #[napi]
    pub async fn apply_chat_template_async(
        &self,
        messages_json: String,
        add_generation_prompt: bool,
        chat_template: Option<String>,
        extra_json: Option<String>,
    ) -> Result<String> {
        let engine = self.engine()?.clone();
        let rendered = joined(
            spawn_blocking(move || -> Result<String> {
                let messages: serde_json::Value = parse("messages", &messages_json)?;
                let extra: Option<serde_json::Value> = extra_json.as_deref().map(|j| parse("extra", j)).transpose()?;
                engine
                    .apply_chat_template(&messages, add_generation_prompt, chat_template.as_deref(), extra.as_ref())
                    .map_err(engine_error)
            })
            .await,
        )?;
        rendered
    }

    /// False after `close()` or when the engine thread has died.
    #[napi]
    pub fn is_alive(&self) -> bool {
        guard(|| Ok(self.inner.as_ref().is_some_and(|e| e.is_alive()))).unwrap_or(false)
    }

    /// Aborts in-flight requests and stops the engine thread. Idempotent.
    #[napi]
    pub fn close(&mut self) -> Result<()> {
        guard(|| {
            if let Some(engine) = self.inner.take() {
                engine.shutdown();
            }
            Ok(())
        })
    }
}
