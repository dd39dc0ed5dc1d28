//! `SamplingParams`: how one request is sampled and when it stops (vLLM's `SamplingParams`, snake_case).
//! `validate()` names the offending field; the TS layer validates first (zod) but the engine never trusts it.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Most top log-probs a request may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Samples returned (parallel samples of the same prompt share the prompt's KV blocks).
    pub n: usize,
    /// Samples generated, of which the `n` with the highest cumulative log-prob are returned (OpenAI
    /// completions' `best_of`); `None` = `n`. Output is then sent once, when every sample is done.
    pub best_of: Option<usize>,
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
    /// Deterministic beam search instead of sampling (`n` <= `beam_width` best beams are returned); the
    /// sampling fields (temperature, top-p/k, penalties, seed) are ignored, as in vLLM's beam search.
    pub beam_search: Option<BeamSearchParams>,
}

/// Most beams one request may keep (vLLM's `n` cap on its server).
pub const MAX_BEAM_WIDTH: usize = 128;

/// Beam search settings (HF transformers' `num_beams`, `length_penalty`, `early_stopping`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeamSearchParams {
    pub beam_width: usize,
    /// A finished beam scores `sum_logprobs / generated_len ** length_penalty`.
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
}

impl Default for BeamSearchParams {
    fn default() -> Self {
        Self {
            beam_width: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
        }
    }
}

/// When beam search stops (HF's `early_stopping`): `true` as soon as `beam_width` beams finished; `false` when
/// no live beam can still beat the worst finished one, judged at the current length; `"never"` judged at the
/// best length a beam could still reach (the canonical beam search).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum EarlyStopping {
    /// `true`
    Done,
    /// `false` (HF's default)
    Heuristic,
    /// `"never"`
    Never,
}

impl TryFrom<serde_json::Value> for EarlyStopping {
    type Error = String;
    fn try_from(v: serde_json::Value) -> std::result::Result<Self, String> {
        match v {
            serde_json::Value::Bool(true) => Ok(Self::Done),
            serde_json::Value::Bool(false) => Ok(Self::Heuristic),
            serde_json::Value::String(s) if s == "never" => Ok(Self::Never),
            other => Err(format!("early_stopping must be true, false or \"never\", got {other}")),
        }
    }
}

impl From<EarlyStopping> for serde_json::Value {
    fn from(e: EarlyStopping) -> Self {
        match e {
            EarlyStopping::Done => true.into(),
            EarlyStopping::Heuristic => false.into(),
            EarlyStopping::Never => "never".into(),
        }
    }
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
            best_of: None,
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
            beam_search: None,
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

    /// Sequences generated for the request: the beams of a beam search, else `best_of` when set, else `n`.
    pub fn num_sequences(&self) -> usize {
        if let Some(b) = &self.beam_search {
            return b.beam_width.max(self.n);
        }
        self.best_of.unwrap_or(self.n).max(self.n)
    }

    /// Whether more samples are generated than returned (output is held until the request ends).
    pub fn selects_best(&self) -> bool {
        self.beam_search.is_none() && self.num_sequences() > self.n
    }

    /// Whether output is held until the request ends (best_of, beam search).
    pub fn holds_output(&self) -> bool {
        self.selects_best() || self.beam_search.is_some()
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }

    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let bad = |f: &str, m: String| Err(EngineError::invalid(f, m));
        if self.n < 1 {
            return bad("n", format!("must be at least 1, got {}", self.n));
        }
        if let Some(b) = self.best_of {
            if b < self.n {
                return bad("best_of", format!("must be >= n ({}), got {b}", self.n));
            }
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
        if let Some(b) = &self.beam_search {
            if b.beam_width < 1 || b.beam_width > MAX_BEAM_WIDTH {
                return bad(
                    "beam_width",
                    format!("must be in [1, {MAX_BEAM_WIDTH}], got {}", b.beam_width),
                );
            }
            if 2 * b.beam_width > vocab_size {
                return bad(
                    "beam_width",
                    format!("2 * beam_width candidates exceed the vocabulary (size {vocab_size})"),
                );
            }
            if self.n > b.beam_width {
                return bad("n", format!("must be <= beam_width ({}), got {}", b.beam_width, self.n));
            }
            if !b.length_penalty.is_finite() {
                return bad("length_penalty", "must be finite".to_string());
            }
            // Combinations beam search does not implement: refused, never silently ignored.
            if self.best_of.is_some_and(|x| x != self.n) {
                return bad("best_of", "cannot be combined with beam search".to_string());
            }
            if self.structured_outputs.is_some() {
                return bad("structured_outputs", "cannot be combined with beam search".to_string());
            }
            if self.logprobs.is_some() {
                return bad("logprobs", "cannot be combined with beam search".to_string());
            }
            if self.min_tokens > 0 {
                return bad("min_tokens", "cannot be combined with beam search".to_string());
            }
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
                    n: 3,
                    best_of: Some(2),
                    ..Default::default()
                },
                "best_of",
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
