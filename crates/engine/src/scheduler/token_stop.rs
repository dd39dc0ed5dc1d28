//! Token-level stop conditions, checked by the scheduler right after a token is appended (vLLM V1's
//! `check_stop`). Stop strings need detokenized text and are the detokenizer's job (it calls
//! `Scheduler::finish_request`).
//!
//! Order: `max_tokens` reached, then context full (both `Length`), then EOS (unless `ignore_eos`) and
//! `stop_token_ids` (`Stop`). EOS and stop ids only count once the output has at least `min_tokens` tokens.

use crate::request::{FinishReason, Request, StopReason};

/// Why `request` must stop after its latest output token, if it must.
pub fn check_token_stop(request: &Request, max_model_len: usize) -> Option<(FinishReason, Option<StopReason>)> {
    let out_len = request.output_token_ids.len();
    let &last = request.output_token_ids.last()?;
    if out_len >= request.max_tokens || request.num_tokens() >= max_model_len {
        return Some((FinishReason::Length, None));
    }
    if out_len < request.params.min_tokens {
        return None;
    }
    if !request.params.ignore_eos && request.eos_token_ids.contains(&last) {
        return Some((FinishReason::Stop, Some(StopReason::Eos)));
    }
    if request.params.stop_token_ids.contains(&last) {
        return Some((FinishReason::Stop, Some(StopReason::TokenId(last))));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling_params::SamplingParams;
    use std::sync::Arc;

    const EOS: u32 = 2;

    fn req(params: SamplingParams, max_tokens: usize, outputs: &[u32]) -> Request {
        let mut r = Request::new(
            1,
            vec![10, 11, 12],
            Arc::new(params),
            max_tokens,
            Arc::new(vec![EOS]),
            0,
        );
        r.output_token_ids = outputs.to_vec();
        r
    }

    #[test]
    fn stop_conditions_in_order() {
        let p = SamplingParams::default;
        assert_eq!(check_token_stop(&req(p(), 5, &[]), 100), None);
        assert_eq!(check_token_stop(&req(p(), 5, &[7]), 100), None);
        assert_eq!(
            check_token_stop(&req(p(), 2, &[7, 7]), 100),
            Some((FinishReason::Length, None))
        );
        // Length wins over EOS on the last allowed token.
        assert_eq!(
            check_token_stop(&req(p(), 2, &[7, EOS]), 100),
            Some((FinishReason::Length, None))
        );
        // Context full: 3 prompt + 2 output tokens in a 5-token context.
        assert_eq!(
            check_token_stop(&req(p(), 9, &[7, 7]), 5),
            Some((FinishReason::Length, None))
        );
        assert_eq!(
            check_token_stop(&req(p(), 9, &[EOS]), 100),
            Some((FinishReason::Stop, Some(StopReason::Eos)))
        );
        let ignore = SamplingParams {
            ignore_eos: true,
            ..p()
        };
        assert_eq!(check_token_stop(&req(ignore, 9, &[EOS]), 100), None);
        let stop_ids = SamplingParams {
            stop_token_ids: vec![42],
            ..p()
        };
        assert_eq!(
            check_token_stop(&req(stop_ids, 9, &[7, 42]), 100),
            Some((FinishReason::Stop, Some(StopReason::TokenId(42))))
        );
    }

    #[test]
    fn min_tokens_defers_eos_and_stop_ids() {
        let p = SamplingParams {
            min_tokens: 3,
            stop_token_ids: vec![42],
            ..Default::default()
        };
        assert_eq!(check_token_stop(&req(p.clone(), 9, &[EOS]), 100), None);
        assert_eq!(check_token_stop(&req(p.clone(), 9, &[EOS, 42]), 100), None);
        assert_eq!(
            check_token_stop(&req(p.clone(), 9, &[1, 1, EOS]), 100),
            Some((FinishReason::Stop, Some(StopReason::Eos)))
        );
        // min_tokens never delays a length stop.
        assert_eq!(
            check_token_stop(&req(p, 2, &[1, 1]), 100),
            Some((FinishReason::Length, None))
        );
    }
}
