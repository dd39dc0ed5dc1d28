//! What the engine sends back per request: `RequestOutput` deltas (one per step that produced something for
//! the request). The TS layer accumulates them into vLLM-shaped `RequestOutput`s or streams them as they come.
//! Field names are camelCase on the wire (the binding passes them to JavaScript as they are).

use serde::{Deserialize, Serialize};

/// One of the top log-probs at a position.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopLogprob {
    pub token_id: u32,
    /// The token's text (decoded alone), or `bytes:\xNN..` when it is part of a UTF-8 character.
    pub token: String,
    /// The raw bytes the token stands for (OpenAI's `bytes`).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Log-probs at one position: the chosen (or, for prompts, the actual next) token and the top-N.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PositionLogprobs {
    pub token_id: u32,
    /// As in [`TopLogprob`].
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// 1-based rank of `token_id` in the model's distribution.
    pub rank: usize,
    pub top: Vec<TopLogprob>,
}

/// New output of one sample (`index` of `n`) since the previous delta.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CompletionDelta {
    pub index: usize,
    /// New text, safe to show (never broken UTF-8; text that may still become a stop string is held back).
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Present when the request asked for `logprobs`; one entry per token in `token_ids`.
    pub logprobs: Option<Vec<PositionLogprobs>>,
    pub cumulative_logprob: f32,
    /// "stop" | "length" | "abort" once this sample is done.
    pub finish_reason: Option<String>,
    /// The stop string or stop token id that ended it (vLLM's `stop_reason`); `None` for EOS or length.
    pub stop_reason: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestMetrics {
    /// Seconds since the UNIX epoch.
    pub arrival_time: f64,
    pub first_scheduled_time: Option<f64>,
    pub first_token_time: Option<f64>,
    pub finished_time: Option<f64>,
    pub num_prompt_tokens: usize,
    pub num_generation_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestOutput {
    pub request_id: String,
    /// Set on the first delta only.
    pub prompt_token_ids: Option<Vec<u32>>,
    /// Set on the first delta only, when asked for: `None` for the first prompt token (nothing predicts it).
    pub prompt_logprobs: Option<Vec<Option<PositionLogprobs>>>,
    pub outputs: Vec<CompletionDelta>,
    /// True on the last delta of the request (all samples done).
    pub finished: bool,
    /// Set on the last delta.
    pub metrics: Option<RequestMetrics>,
}
