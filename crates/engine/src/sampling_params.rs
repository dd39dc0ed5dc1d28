//! `SamplingParams`: how one request is sampled and when it stops (vLLM's `SamplingParams`, snake_case).
//! `validate()` names the offending field; the TS layer validates first (zod) but the engine never trusts it.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Most top log-probs a request may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Parallel samples of the same prompt (share the prompt's KV blocks).
    pub n: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 or -1 = off.
    pub top_k: i32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Added to the logits of these token ids before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub include_stop_str_in_output: bool,
    pub ignore_eos: bool,
    pub min_tokens: usize,
    /// `None` = until the context is full.
    pub max_tokens: Option<usize>,
    /// Top-N log-probs per generated token (the sampled token's own log-prob is always returned with them).
    pub logprobs: Option<usize>,
    /// Top-N log-probs per prompt token.
    pub prompt_logprobs: Option<usize>,
    pub skip_special_tokens: bool,
    /// A constraint on the output (vLLM's `structured_outputs`); compiled by `structured::GrammarCache`.
    pub structured_outputs: Option<StructuredOutputs>,
}

/// vLLM's `StructuredOutputsParams`: exactly one of `json`, `regex`, `choice`, `grammar`, `json_object`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StructuredOutputs {
    /// A JSON Schema, as an object or as its JSON text.
    pub json: Option<serde_json::Value>,
    /// A regular expression (Rust `regex` syntax) the whole output must match.
    pub regex: Option<String>,
    /// The output is exactly one of these strings.
    pub choice: Option<Vec<String>>,
    /// A grammar in llguidance's Lark dialect.
    pub grammar: Option<String>,
    /// Any JSON object (OpenAI's `response_format: {type: "json_object"}`).
    pub json_object: bool,
    /// JSON without optional whitespace (vLLM's `disable_any_whitespace`).
    pub disable_any_whitespace: bool,
}

impl StructuredOutputs {
    /// The names of the constraint kinds that are set (valid requests have exactly one).
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.json.is_some() {
            kinds.push("json");
        }
        if self.regex.is_some() {
            kinds.push("regex");
        }
        if self.choice.is_some() {
            kinds.push("choice");
        }
        if self.grammar.is_some() {
            kinds.push("grammar");
        }
        if self.json_object {
            kinds.push("json_object");
        }
        kinds
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            n: 1,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            include_stop_str_in_output: false,
            ignore_eos: false,
            min_tokens: 0,
            max_tokens: Some(16),
            logprobs: None,
            prompt_logprobs: None,
            skip_special_tokens: true,
            structured_outputs: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }

    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let bad = |f: &str, m: String| Err(EngineError::invalid(f, m));
        if self.n < 1 {
            return bad("n", format!("must be at least 1, got {}", self.n));
        }
        if !(self.temperature >= 0.0) || !self.temperature.is_finite() {
            return bad("temperature", format!("must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k < -1 {
            return bad(
                "top_k",
                format!("must be -1 (off), 0 (off) or positive, got {}", self.top_k),
            );
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0) || !self.repetition_penalty.is_finite() {
            return bad(
                "repetition_penalty",
                format!("must be > 0, got {}", self.repetition_penalty),
            );
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad(
                "frequency_penalty",
                format!("must be in [-2, 2], got {}", self.frequency_penalty),
            );
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad(
                "presence_penalty",
                format!("must be in [-2, 2], got {}", self.presence_penalty),
            );
        }
        if let Some(m) = self.max_tokens {
            if m < 1 {
                return bad("max_tokens", format!("must be at least 1, got {m}"));
            }
            if self.min_tokens > m {
                return bad(
                    "min_tokens",
                    format!("must be <= max_tokens ({m}), got {}", self.min_tokens),
                );
            }
        }
        for (f, v) in [("logprobs", self.logprobs), ("prompt_logprobs", self.prompt_logprobs)] {
            if let Some(k) = v {
                if k > MAX_LOGPROBS {
                    return bad(f, format!("must be at most {MAX_LOGPROBS}, got {k}"));
                }
            }
        }
        for &(tok, bias) in &self.logit_bias {
            if tok as usize >= vocab_size {
                return bad(
                    "logit_bias",
                    format!("token id {tok} is outside the vocabulary (size {vocab_size})"),
                );
            }
            if !bias.is_finite() {
                return bad("logit_bias", format!("bias for token {tok} must be finite"));
            }
        }
        for &tok in &self.stop_token_ids {
            if tok as usize >= vocab_size {
                return bad(
                    "stop_token_ids",
                    format!("token id {tok} is outside the vocabulary (size {vocab_size})"),
                );
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("stop", "stop strings must not be empty".to_string());
        }
        if let Some(so) = &self.structured_outputs {
            match so.kinds().as_slice() {
                [_] => {}
                [] => {
                    return bad(
                        "structured_outputs",
                        "set exactly one of json, regex, choice, grammar, json_object".to_string(),
                    )
                }
                many => {
                    return bad(
                        "structured_outputs",
                        format!("set exactly one constraint, got {}", many.join(", ")),
                    )
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_values_naming_the_field() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    temperature: -0.1,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    n: 0,
                    ..Default::default()
                },
                "n",
            ),
            (
                SamplingParams {
                    max_tokens: Some(0),
                    ..Default::default()
                },
                "max_tokens",
            ),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..Default::default()
                },
                "logprobs",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(100, 1.0)],
                    ..Default::default()
                },
                "logit_bias",
            ),
        ];
        for (p, field) in cases {
            match p.validate(100) {
                Err(EngineError::InvalidParam { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected {field} to be rejected, got {other:?}"),
            }
        }
        SamplingParams::default().validate(100).unwrap();
    }
}
