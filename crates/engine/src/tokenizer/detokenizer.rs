//! Streaming detokenization: turns sampled token ids into text deltas that are safe to send to a client, and
//! applies stop strings.
//!
//! Guarantees:
//! - Never emits a broken character. Text is decoded over a small sliding window of recent tokens (vLLM's
//!   prefix/read-offset idea, kept char-aligned): the window starts a few tokens back so decoders that depend on
//!   context (SentencePiece's leading-space strip) see it, and a trailing run of U+FFFD (an incomplete UTF-8
//!   sequence: one U+FFFD from byte-level BPE's lossy decode; SentencePiece's byte fallback turns the whole run of
//!   byte tokens into U+FFFDs until it is valid) is held back until later tokens complete it. Valid text completes
//!   a character at least every [`MAX_STALL`] tokens (a character is at most 4 bytes, a token at least 1), so once
//!   that many tokens pass without new text the bytes are invalid, not incomplete: all but the last U+FFFD are
//!   released (for invalid input the replacement characters may then differ from a one-shot decode). `finish`
//!   releases everything held.
//! - Per-token cost does not grow with the output: each step decodes at most [`MAX_WINDOW`] + 1 tokens and scans
//!   only the not-yet-emitted tail for stop strings.
//! - Stop strings are matched in the output text (never the prompt), across token boundaries. Text that could still
//!   grow into a stop string (the longest suffix that is a proper prefix of one) is held back. On a match the
//!   output is cut before the stop string (after it with `include_stop_str_in_output`); the match that ends first
//!   wins (as if text arrived one character at a time, so the result does not depend on token boundaries), and
//!   later `push` calls are ignored.

use std::sync::Arc;

use super::tokenizer::Tokenizer;
use crate::error::Result;

/// Tokens of prompt context the first window starts with.
const PROMPT_CONTEXT: usize = 5;
/// Once the window exceeds this many tokens and its text ends cleanly, it is trimmed to [`KEEP_ON_TRIM`] tokens.
const MAX_WINDOW: usize = 24;
/// Tokens kept on a trim: context for the decoder, and more than a held-back tail can span.
const KEEP_ON_TRIM: usize = 12;
/// Trim even when the text does not end cleanly (a stream of invalid bytes), so the cost stays bounded.
const HARD_MAX_WINDOW: usize = 96;
/// Tokens without new text after which trailing U+FFFDs are treated as invalid bytes rather than incomplete.
const MAX_STALL: usize = 4;
const REPLACEMENT_LEN: usize = '\u{FFFD}'.len_utf8();

/// What one `push` produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DetokenizedStep {
    /// New output text that is safe to emit now (may be empty).
    pub text: String,
    /// The stop string that ended the output, if one matched in this step.
    pub stop_matched: Option<String>,
}

pub struct IncrementalDetokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    stop: Vec<String>,
    include_stop_str_in_output: bool,
    /// Recent token ids whose decoding produces the newest text.
    window: Vec<u32>,
    /// Bytes of `decode(window)` already appended to `text`.
    window_consumed: usize,
    /// Tokens pushed since the text last grew while it ends in U+FFFD.
    stalled: usize,
    /// All output text decoded so far (cut at the stop string once one matched).
    text: String,
    /// Bytes of `text` handed out; `text[emitted..]` is held back.
    emitted: usize,
    stopped: bool,
}

impl IncrementalDetokenizer {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        prompt_token_ids: &[u32],
        skip_special_tokens: bool,
        stop: Vec<String>,
        include_stop_str_in_output: bool,
    ) -> Self {
        let window = prompt_token_ids[prompt_token_ids.len().saturating_sub(PROMPT_CONTEXT)..].to_vec();
        let mut detokenizer = Self {
            tokenizer,
            skip_special_tokens,
            // An empty stop string would match everywhere; the API layer rejects them, we ignore them.
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            include_stop_str_in_output,
            window,
            window_consumed: 0,
            stalled: 0,
            text: String::new(),
            emitted: 0,
            stopped: false,
        };
        // Prompt text is context only. An undecodable prompt tail (bad ids) just leaves the window without context.
        match detokenizer.decode_window() {
            Ok(prompt_text) => {
                detokenizer.window_consumed = prompt_text.len() - trailing_replacements(&prompt_text) * REPLACEMENT_LEN
            }
            Err(_) => detokenizer.window.clear(),
        }
        detokenizer
    }

    /// Adds one generated token and returns the text that became safe to emit.
    pub fn push(&mut self, token: u32) -> Result<DetokenizedStep> {
        if self.stopped {
            return Ok(DetokenizedStep::default());
        }
        self.window.push(token);
        let decoded = self.decode_window()?;
        let trailing = trailing_replacements(&decoded);
        let mut end = decoded.len() - trailing * REPLACEMENT_LEN;
        if trailing > 0 && end <= self.window_consumed {
            self.stalled += 1;
            if self.stalled >= MAX_STALL {
                // Invalid bytes: release the replacement characters, except one that may still be completed.
                end = decoded.len() - REPLACEMENT_LEN;
            }
        }
        if end > self.window_consumed {
            let start = ceil_char_boundary(&decoded, self.window_consumed);
            self.text.push_str(&decoded[start..end]);
            self.window_consumed = end;
            self.stalled = 0;
        }
        if self.window.len() > HARD_MAX_WINDOW || (self.window.len() > MAX_WINDOW && trailing == 0) {
            self.trim_window(decoded.len().saturating_sub(self.window_consumed))?;
        }
        Ok(self.emit(true))
    }

    /// Ends the stream (EOS, length limit, abort): returns all held-back text, including an unfinished character
    /// as U+FFFD. Stop strings are still honoured. Idempotent.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        if let Ok(decoded) = self.decode_window() {
            if decoded.len() > self.window_consumed {
                let start = ceil_char_boundary(&decoded, self.window_consumed);
                self.text.push_str(&decoded[start..]);
                self.window_consumed = decoded.len();
            }
        }
        self.emit(false).text
    }

    /// The output text emitted so far.
    pub fn output_text(&self) -> &str {
        &self.text[..self.emitted]
    }

    fn decode_window(&self) -> Result<String> {
        self.tokenizer.decode(&self.window, self.skip_special_tokens)
    }

    /// Drops the oldest tokens of the window, re-deriving how much of the shorter window's text is consumed: the
    /// `held` trailing bytes (none unless the stream is invalid) are the same in both decodings because the kept
    /// tokens cover them. The new window must start at a token that decodes cleanly on its own: starting inside a
    /// character, or inside a run of SentencePiece byte-fallback tokens, would turn the whole run into U+FFFDs.
    fn trim_window(&mut self, held: usize) -> Result<()> {
        let len = self.window.len();
        let mut start = None;
        for candidate in (len - MAX_WINDOW..=len - KEEP_ON_TRIM).rev() {
            let alone = self
                .tokenizer
                .decode(&self.window[candidate..=candidate], self.skip_special_tokens)?;
            if !alone.is_empty() && !alone.contains('\u{FFFD}') {
                start = Some(candidate);
                break;
            }
        }
        let start = match start {
            Some(start) => start,
            None if len > HARD_MAX_WINDOW => len - KEEP_ON_TRIM,
            None => return Ok(()),
        };
        self.window.drain(..start);
        let decoded = self.decode_window()?;
        self.window_consumed = decoded.len().saturating_sub(held);
        Ok(())
    }

    /// Checks `text[emitted..]` for stop strings and hands out what is safe.
    fn emit(&mut self, hold_stop_prefixes: bool) -> DetokenizedStep {
        let pending = &self.text[self.emitted..];
        let earliest = self
            .stop
            .iter()
            .filter_map(|stop| pending.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|&(at, stop)| (at + stop.len(), at));
        if let Some((at, stop)) = earliest {
            let stop = stop.clone();
            let cut = self.emitted + at + if self.include_stop_str_in_output { stop.len() } else { 0 };
            self.text.truncate(cut);
            self.stopped = true;
            return DetokenizedStep {
                text: self.take_until(cut),
                stop_matched: Some(stop),
            };
        }
        let held = if hold_stop_prefixes {
            longest_stop_prefix_suffix(pending, &self.stop)
        } else {
            0
        };
        let until = self.text.len() - held;
        DetokenizedStep {
            text: self.take_until(until),
            stop_matched: None,
        }
    }

    fn take_until(&mut self, until: usize) -> String {
        let out = self.text[self.emitted..until].to_string();
        self.emitted = until;
        out
    }
}

/// Number of U+FFFD characters ending `text`.
fn trailing_replacements(text: &str) -> usize {
    text.chars().rev().take_while(|&c| c == '\u{FFFD}').count()
}

/// Smallest char boundary >= `at` (a decoder that rewrote earlier text could leave `at` inside a char).
fn ceil_char_boundary(text: &str, mut at: usize) -> usize {
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    at.min(text.len())
}

/// Bytes at the end of `text` that are a proper prefix of some stop string (and so may still become one).
fn longest_stop_prefix_suffix(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .filter_map(|stop| {
            (1..stop.len().min(text.len() + 1))
                .rev()
                .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_prefix_suffix_finds_longest_partial_match() {
        let stops = vec!["</end>".to_string(), "STOP".to_string()];
        assert_eq!(longest_stop_prefix_suffix("hello </e", &stops), 3);
        assert_eq!(longest_stop_prefix_suffix("hello ST", &stops), 2);
        assert_eq!(longest_stop_prefix_suffix("hello", &stops), 0);
        assert_eq!(longest_stop_prefix_suffix("<", &stops), 1);
        // A whole stop string is a match, not a prefix to hold.
        assert_eq!(longest_stop_prefix_suffix("STOP", &["STOP".to_string()]), 0);
        assert_eq!(longest_stop_prefix_suffix("ab😀", &["😀x".to_string()]), 4);
    }

    #[test]
    fn window_stays_bounded_and_invalid_bytes_are_released() {
        let (tok, _) = super::super::reference_tests::spm_synthetic();
        let ids = tok.encode(&"hello 日本 the test, ".repeat(40), false).unwrap();
        let mut detok = IncrementalDetokenizer::new(tok.clone(), &[], false, vec![], false);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&detok.push(id).unwrap().text);
            assert!(
                detok.window.len() <= MAX_WINDOW + 1,
                "window grew to {}",
                detok.window.len()
            );
        }
        out.push_str(&detok.finish());
        assert_eq!(out, tok.decode(&ids, false).unwrap());
        // A stream of lone continuation bytes never becomes valid: U+FFFDs must come out, with bounded cost.
        let continuation = tok.token_to_id("<0x80>").unwrap();
        let mut detok = IncrementalDetokenizer::new(tok.clone(), &[], false, vec![], false);
        let mut out = String::new();
        for _ in 0..300 {
            out.push_str(&detok.push(continuation).unwrap().text);
            assert!(detok.window.len() <= HARD_MAX_WINDOW + 1);
        }
        assert!(
            out.chars().count() >= 290 && out.chars().all(|c| c == '\u{FFFD}'),
            "{}",
            out.chars().count()
        );
    }

    #[test]
    fn counts_trailing_replacements() {
        assert_eq!(trailing_replacements("ab"), 0);
        assert_eq!(trailing_replacements("a\u{FFFD}b\u{FFFD}\u{FFFD}"), 2);
        assert_eq!(trailing_replacements(""), 0);
    }
}
