//! Output processing for one user request: its `n` samples (the submitted sequence plus forked children),
//! their incremental detokenizers and RNGs, and the deltas sent to the caller. A step's new tokens are folded
//! in here; one `RequestOutput` per request per step goes out on the request's channel.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::error::Result;
use crate::request::{FinishReason, RequestId, StopReason};
use crate::sampler::SequenceRng;
use crate::sampling_params::SamplingParams;
use crate::tokenizer::token_bytes::token_display;
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

use super::beam_search::BeamSearch;
use super::beam_stop::BeamStopStrings;
use super::output::{CompletionDelta, PositionLogprobs, RequestMetrics, RequestOutput, TopLogprob};

pub(crate) struct SampleState {
    pub seq_id: RequestId,
    pub rng: SequenceRng,
    detok: Option<IncrementalDetokenizer>,
    pending: CompletionDelta,
    pub finished: bool,
    /// The detokenizer already cut the text at a stop string: don't release held-back text.
    stopped_by_string: bool,
}

pub(crate) struct RequestGroup {
    pub external_id: String,
    pub tx: UnboundedSender<Result<RequestOutput>>,
    pub params: Arc<SamplingParams>,
    pub prompt_ids: Arc<Vec<u32>>,
    pub samples: Vec<Option<SampleState>>,
    pub metrics: RequestMetrics,
    /// Prompt log-probs gathered so far (entry 0 is always `None`); sent with the first delta.
    pub prompt_logprobs: Option<Vec<Option<PositionLogprobs>>>,
    sent_first: bool,
    touched: bool,
    /// Beam search state (`params.beam_search`); its finished hypotheses are the request's outputs.
    pub beam: Option<BeamSearch>,
    /// Decodes the beams' final text.
    tokenizer: Option<Arc<Tokenizer>>,
    /// The beam search's stop strings (HF's matching rule), when it has any and a tokenizer.
    pub beam_stops: Option<BeamStopStrings>,
}

pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl RequestGroup {
    pub fn new(
        external_id: String,
        tx: UnboundedSender<Result<RequestOutput>>,
        params: Arc<SamplingParams>,
        prompt_ids: Arc<Vec<u32>>,
        arrival_time: f64,
    ) -> Self {
        let n = params.num_sequences();
        let prompt_logprobs = params.prompt_logprobs.map(|_| vec![None]);
        Self {
            external_id,
            tx,
            metrics: RequestMetrics {
                arrival_time,
                num_prompt_tokens: prompt_ids.len(),
                ..Default::default()
            },
            params,
            prompt_ids,
            samples: (0..n).map(|_| None).collect(),
            prompt_logprobs,
            sent_first: false,
            touched: false,
            beam: None,
            tokenizer: None,
            beam_stops: None,
        }
    }

    /// Makes this a beam search request (see `beam_search.rs`).
    pub fn set_beam_search(&mut self, beam: BeamSearch, tokenizer: Option<Arc<Tokenizer>>) {
        self.beam = Some(beam);
        self.beam_stops = tokenizer.clone().and_then(|t| {
            BeamStopStrings::new(t, &self.params.stop, &self.prompt_ids, self.params.skip_special_tokens)
        });
        self.tokenizer = tokenizer;
    }

    /// Counts one step of the beam search (`tokens` continuations chosen) in the request's metrics: beams take
    /// no `push_token`, so this is where their first-token time and generated-token count come from.
    pub fn note_beam_step(&mut self, tokens: usize) {
        self.metrics.first_token_time.get_or_insert_with(now_secs);
        self.metrics.num_generation_tokens += tokens;
    }

    /// Marks sample `index` done without output of its own (a beam: the hypotheses carry the output).
    pub fn end_beam(&mut self, index: usize) {
        self.touched = true;
        if let Some(s) = self.samples[index].as_mut() {
            s.finished = true;
        }
    }

    pub fn add_sample(
        &mut self,
        index: usize,
        seq_id: RequestId,
        rng: SequenceRng,
        tokenizer: Option<&Arc<Tokenizer>>,
    ) {
        let detok = tokenizer.map(|t| {
            IncrementalDetokenizer::new(
                t.clone(),
                &self.prompt_ids,
                self.params.skip_special_tokens,
                self.params.stop.clone(),
                self.params.include_stop_str_in_output,
            )
        });
        let pending = CompletionDelta {
            index,
            logprobs: self.params.logprobs.map(|_| Vec::new()),
            ..Default::default()
        };
        self.samples[index] = Some(SampleState {
            seq_id,
            rng,
            detok,
            pending,
            finished: false,
            stopped_by_string: false,
        });
    }

    /// Next prompt position still lacking a log-prob (prompt log-probs are computed once, even after preemption).
    pub fn next_prompt_logprob_pos(&self) -> Option<usize> {
        let have = self.prompt_logprobs.as_ref()?.len();
        (have < self.prompt_ids.len()).then_some(have)
    }

    pub fn push_prompt_logprob(&mut self, lp: PositionLogprobs) {
        if let Some(v) = &mut self.prompt_logprobs {
            v.push(Some(lp));
        }
    }

    /// Folds one generated token into sample `index`. Returns the stop string if the detokenizer found one.
    pub fn push_token(
        &mut self,
        index: usize,
        token: u32,
        logprobs: Option<PositionLogprobs>,
        logprob: f32,
    ) -> Result<Option<String>> {
        self.touched = true;
        let now = now_secs();
        self.metrics.first_token_time.get_or_insert(now);
        self.metrics.num_generation_tokens += 1;
        let s = self.samples[index]
            .as_mut()
            .expect("token for a sample that was never forked");
        s.pending.token_ids.push(token);
        s.pending.cumulative_logprob += logprob;
        if let (Some(v), Some(lp)) = (&mut s.pending.logprobs, logprobs) {
            v.push(lp);
        }
        if let Some(d) = &mut s.detok {
            let step = d.push(token)?;
            s.pending.text.push_str(&step.text);
            if let Some(stop) = step.stop_matched {
                s.stopped_by_string = true;
                return Ok(Some(stop));
            }
        }
        Ok(None)
    }

    pub fn finish_sample(&mut self, index: usize, reason: FinishReason, stop_reason: Option<StopReason>) {
        self.touched = true;
        let Some(s) = self.samples[index].as_mut() else { return };
        if s.finished {
            return;
        }
        s.finished = true;
        if !s.stopped_by_string {
            if let Some(d) = &mut s.detok {
                s.pending.text.push_str(&d.finish());
            }
        }
        s.pending.finish_reason = Some(reason.as_str().to_string());
        s.pending.stop_reason = match stop_reason {
            Some(StopReason::TokenId(t)) => Some(serde_json::json!(t)),
            Some(StopReason::String(st)) => Some(serde_json::json!(st)),
            Some(StopReason::Eos) | None => None,
        };
    }

    /// Marks every sample that is not finished yet (abort, engine failure).
    pub fn finish_all(&mut self, reason: FinishReason) {
        for i in 0..self.samples.len() {
            if self.samples[i].as_ref().is_some_and(|s| !s.finished) {
                self.finish_sample(i, reason, None);
            }
        }
        // Samples never forked (aborted before the prompt finished) also end.
        for i in 0..self.samples.len() {
            if self.samples[i].is_none() {
                self.samples[i] = Some(SampleState {
                    seq_id: RequestId::MAX,
                    rng: SequenceRng::new(0),
                    detok: None,
                    pending: CompletionDelta {
                        index: i,
                        finish_reason: Some(reason.as_str().to_string()),
                        logprobs: self.params.logprobs.map(|_| Vec::new()),
                        ..Default::default()
                    },
                    finished: true,
                    stopped_by_string: false,
                });
            }
        }
        self.touched = true;
    }

    pub fn is_finished(&self) -> bool {
        self.samples.iter().all(|s| s.as_ref().is_some_and(|s| s.finished))
    }

    pub fn live_seq_ids(&self) -> Vec<RequestId> {
        self.samples
            .iter()
            .flatten()
            .filter(|s| !s.finished)
            .map(|s| s.seq_id)
            .collect()
    }

    /// Sends what accumulated this step (if anything). Returns false if the receiver is gone.
    pub fn flush(&mut self) -> bool {
        if !self.touched {
            return true;
        }
        self.touched = false;
        let finished = self.is_finished();
        let mut outputs = Vec::new();
        if self.beam.is_some() {
            // Beam search: nothing goes out until the search is over; then the best n hypotheses.
            if !finished {
                return !self.tx.is_closed();
            }
            outputs = self.beam_outputs().unwrap_or_default();
        } else if self.params.selects_best() {
            // best_of: nothing goes out until every sample is done; then the best n, re-indexed 0..n.
            if !finished {
                return !self.tx.is_closed();
            }
            outputs = self.best_samples();
        }
        let streamed = if self.params.holds_output() { 0 } else { self.samples.len() };
        for s in self.samples.iter_mut().take(streamed).flatten() {
            let has_news =
                !s.pending.token_ids.is_empty() || !s.pending.text.is_empty() || s.pending.finish_reason.is_some();
            if has_news {
                let cumulative = s.pending.cumulative_logprob;
                let fresh = CompletionDelta {
                    index: s.pending.index,
                    cumulative_logprob: cumulative,
                    logprobs: s.pending.logprobs.as_ref().map(|_| Vec::new()),
                    ..Default::default()
                };
                outputs.push(std::mem::replace(&mut s.pending, fresh));
            }
        }
        if finished {
            self.metrics.finished_time = Some(now_secs());
        }
        let first = !self.sent_first;
        self.sent_first = true;
        let out = RequestOutput {
            request_id: self.external_id.clone(),
            prompt_token_ids: first.then(|| self.prompt_ids.as_ref().clone()),
            prompt_logprobs: if first { self.prompt_logprobs.clone() } else { None },
            outputs,
            finished,
            metrics: finished.then(|| self.metrics.clone()),
        };
        self.tx.send(Ok(out)).is_ok()
    }
}

impl RequestGroup {
    /// The best `n` finished beams as outputs `0..n`, best first: tokens (the stop token included, as for a
    /// sampled request), text cut where a stop string begins (`beam_stop.rs`), the raw cumulative log-prob.
    /// An aborted search (no hypotheses yet) returns its samples' abort markers instead.
    fn beam_outputs(&mut self) -> Option<Vec<CompletionDelta>> {
        let beam = self.beam.as_ref()?;
        if !beam.is_done() {
            return Some(self.samples.iter_mut().flatten().map(|s| std::mem::take(&mut s.pending)).collect());
        }
        let mut outs = Vec::new();
        for (index, h) in beam.best(self.params.n).iter().enumerate() {
            let text = match (&h.stop.1, &self.beam_stops, &self.tokenizer) {
                (Some(StopReason::String(_)), Some(stops), _) => {
                    stops.stopped_text(&h.tokens, self.params.include_stop_str_in_output)
                }
                (_, _, Some(t)) => t.decode(&h.tokens, self.params.skip_special_tokens).unwrap_or_default(),
                (_, _, None) => String::new(),
            };
            outs.push(CompletionDelta {
                index,
                text,
                token_ids: h.tokens.clone(),
                logprobs: None,
                cumulative_logprob: h.sum_logprob,
                finish_reason: Some(h.stop.0.as_str().to_string()),
                stop_reason: match &h.stop.1 {
                    Some(StopReason::TokenId(t)) => Some(serde_json::json!(t)),
                    Some(StopReason::String(st)) => Some(serde_json::json!(st)),
                    Some(StopReason::Eos) | None => None,
                },
            });
        }
        Some(outs)
    }

    /// The `n` finished samples with the highest cumulative log-prob (ties to the lower index), as indices
    /// `0..n` in that order: what a `best_of` request returns.
    fn best_samples(&mut self) -> Vec<CompletionDelta> {
        let mut all: Vec<CompletionDelta> = self
            .samples
            .iter_mut()
            .flatten()
            .map(|s| std::mem::take(&mut s.pending))
            .collect();
        all.sort_by(|a, b| {
            b.cumulative_logprob
                .total_cmp(&a.cumulative_logprob)
                .then(a.index.cmp(&b.index))
        });
        all.truncate(self.params.n);
        for (i, d) in all.iter_mut().enumerate() {
            d.index = i;
        }
        all
    }
}

/// Log-probs at one position with token strings filled in.
pub(crate) fn position_logprobs(
    tokenizer: Option<&Arc<Tokenizer>>,
    token: u32,
    logprob: f32,
    rank: usize,
    top: &[(u32, f32)],
) -> PositionLogprobs {
    // Without a tokenizer (token-id-only engines) tokens have no text.
    let shown = |t: u32| {
        let bytes = tokenizer.and_then(|tk| tk.token_bytes(t).ok()).unwrap_or_default();
        (token_display(&bytes), bytes)
    };
    let (text, bytes) = shown(token);
    PositionLogprobs {
        token_id: token,
        token: text,
        bytes,
        logprob,
        rank,
        top: top
            .iter()
            .map(|&(id, lp)| {
                let (token, bytes) = shown(id);
                TopLogprob {
                    token_id: id,
                    token,
                    bytes,
                    logprob: lp,
                }
            })
            .collect(),
    }
}
