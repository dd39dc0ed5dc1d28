//! Stop strings of a beam search, as HF transformers' `StopStringCriteria` (`generation/stopping_criteria.py`)
//! decides them, and the text a finished beam returns.
//!
//! Match rule (HF's): a continuation stops when one of the stop strings ends inside its last token. HF checks
//! the whole sequence, prompt included, so a stop string that begins in the prompt's text and ends in the first
//! generated token counts too; an occurrence wholly before the last token does not (it would have stopped an
//! earlier step). `StopStringCriteria` works on the tokens' strings; we decode the tail of the prompt plus the
//! beam and look for an occurrence ending after the text the tokens before the last one gave, which is the same
//! test whenever decoding is per-token concatenation (byte-level BPE, as the default model's).
//!
//! Returned text (vLLM's, as its V0 engine beam search and every OpenAI surface do): the token ids keep the token
//! that completed the stop string; the text ends where the stop string begins, unless
//! `include_stop_str_in_output`, then it ends with the stop string. A stop string that began in the prompt
//! leaves an empty text (only its tail was generated).

use std::sync::Arc;

use crate::tokenizer::Tokenizer;

/// The earliest stop-string occurrence in `after` that ends past byte `boundary` (the length of the text
/// without the last token): `(index into stops, byte offset where it starts)`.
pub(crate) fn stop_ending_after(after: &str, boundary: usize, stops: &[String]) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    for (i, stop) in stops.iter().enumerate() {
        if stop.is_empty() {
            continue;
        }
        // Occurrences that end past `boundary` start at or after `boundary + 1 - len`.
        let mut from = (boundary + 1).saturating_sub(stop.len()).min(after.len());
        while !after.is_char_boundary(from) {
            from -= 1;
        }
        let found = after[from..]
            .match_indices(stop.as_str())
            .map(|(at, _)| from + at)
            .find(|&at| at + stop.len() > boundary);
        if let Some(at) = found {
            if best.is_none_or(|(_, b)| at < b) {
                best = Some((i, at));
            }
        }
    }
    best
}

/// Length of the longest common prefix of `a` and `b` that ends on a char boundary of both.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// A beam request's stop strings with the prompt context they are matched in.
pub(crate) struct BeamStopStrings {
    tokenizer: Arc<Tokenizer>,
    stops: Vec<String>,
    /// The last prompt tokens: enough text for any stop string that begins in the prompt.
    prompt_tail: Vec<u32>,
    skip_special_tokens: bool,
}

impl BeamStopStrings {
    /// `None` without stop strings.
    pub fn new(tokenizer: Arc<Tokenizer>, stops: &[String], prompt: &[u32], skip_special_tokens: bool) -> Option<Self> {
        let longest = stops.iter().map(String::len).max().filter(|&l| l > 0)?;
        // Every token decodes to at least one byte (special tokens aside), so this many tokens hold the
        // longest stop string's bytes.
        let tail = prompt.len().saturating_sub(longest);
        Some(Self {
            tokenizer,
            stops: stops.to_vec(),
            prompt_tail: prompt[tail..].to_vec(),
            skip_special_tokens,
        })
    }

    fn decode(&self, generated: &[u32]) -> String {
        let mut ids = self.prompt_tail.clone();
        ids.extend_from_slice(generated);
        self.tokenizer.decode(&ids, self.skip_special_tokens).unwrap_or_default()
    }

    /// `(stop index, start in the text of prompt tail + tokens, end of the text before the last token)` of the
    /// stop string `tokens`' last token completes, and that text.
    fn find(&self, tokens: &[u32]) -> Option<((usize, usize, usize), String)> {
        let (&_, before) = tokens.split_last()?;
        let text_before = self.decode(before);
        let text = self.decode(tokens);
        let boundary = common_prefix_len(&text_before, &text);
        let (i, at) = stop_ending_after(&text, boundary, &self.stops)?;
        Some(((i, at, boundary), text))
    }

    /// The stop string that `generated` followed by `token` completes, if any.
    pub fn stop_for(&self, generated: &[u32], token: u32) -> Option<&str> {
        let mut tokens = generated.to_vec();
        tokens.push(token);
        let ((i, _, _), _) = self.find(&tokens)?;
        Some(&self.stops[i])
    }

    /// The text a beam that ended on a stop string returns (see the module doc).
    pub fn stopped_text(&self, tokens: &[u32], include_stop_str: bool) -> String {
        let tail_len = {
            let t = self.decode(&[]);
            let full = self.decode(tokens);
            if full.starts_with(&t) { t.len() } else { 0 }
        };
        let Some(((i, at, _), text)) = self.find(tokens) else {
            return self.decode(tokens).get(tail_len..).unwrap_or_default().to_string();
        };
        let end = if include_stop_str { at + self.stops[i].len() } else { at };
        text.get(tail_len.min(end)..end).unwrap_or_default().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_stop_must_end_in_the_last_token() {
        let st = stops(&["stop"]);
        // ["st", "op"], ["stop"], ["st", "opera"], ["las", "topper"]: HF's positive examples.
        assert_eq!(stop_ending_after("stop", 2, &st), Some((0, 0)));
        assert_eq!(stop_ending_after("stop", 0, &st), Some((0, 0)));
        assert_eq!(stop_ending_after("stopera", 2, &st), Some((0, 0)));
        assert_eq!(stop_ending_after("lastopper", 3, &st), Some((0, 2)));
        // ["stop", "at"], ["st", "opera", "tion"]: the stop string is complete before the last token.
        assert_eq!(stop_ending_after("stopat", 4, &st), None);
        assert_eq!(stop_ending_after("stoperation", 7, &st), None);
        // Inside the last token, with text on both sides of it (" stops" after "x").
        assert_eq!(stop_ending_after("x stops", 1, &st), Some((0, 2)));
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_empty_stops_never_match() {
        let st = stops(&["", "b c", "a b"]);
        assert_eq!(stop_ending_after("a b c", 2, &st), Some((2, 0)));
        assert_eq!(stop_ending_after("abc", 0, &stops(&[""])), None);
    }

    #[test]
    fn boundaries_inside_multibyte_characters_are_safe() {
        let st = stops(&["é!"]);
        assert_eq!(stop_ending_after("café!", 5, &st), Some((0, 3)));
        assert_eq!(common_prefix_len("caf\u{fffd}", "café"), 3);
    }
}
