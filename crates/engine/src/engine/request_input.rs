//! `RequestInput`: what a caller submits. Prompts come as text (tokenized by the engine) or token ids.

use serde::{Deserialize, Serialize};

use crate::sampling_params::SamplingParams;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    TokenIds(Vec<u32>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestInput {
    /// Caller-chosen id (must be unique among live requests); generated when absent.
    pub request_id: Option<String>,
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// Lower runs first under the priority policy.
    #[serde(default)]
    pub priority: i32,
    /// Requests with different salts never share prefix-cache blocks.
    #[serde(default)]
    pub cache_salt: Option<String>,
    /// Add BOS etc. when tokenizing a text prompt (true for completions; chat prompts already contain them).
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

fn yes() -> bool {
    true
}
