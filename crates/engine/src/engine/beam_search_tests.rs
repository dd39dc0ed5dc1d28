//! Unit tests of the beam bookkeeping on hand-made log-probs (the HF comparison on a real model is
//! `tests/beam_search.rs`).

use super::*;

const EOS: u32 = 99;

fn params(k: usize, length_penalty: f32, early_stopping: EarlyStopping) -> BeamSearchParams {
    BeamSearchParams {
        beam_width: k,
        length_penalty,
        early_stopping,
    }
}

fn eos_stops(_: &[u32], t: u32) -> Option<Stop> {
    (t == EOS).then_some((FinishReason::Stop, Some(StopReason::Eos)))
}

#[test]
fn first_step_expands_beam_zero_only_and_keeps_the_best_k() {
    let mut b = BeamSearch::new(params(2, 1.0, EarlyStopping::Heuristic), 10, 1);
    assert_eq!(b.candidates_per_beam(), 4);
    // Beam 1's proposals would win if they counted; at the first step they must not.
    let p0 = vec![(5, -0.1), (6, -0.5), (7, -1.0), (8, -2.0)];
    let p1 = vec![(1, -0.01), (2, -0.02), (3, -0.03), (4, -0.04)];
    let step = b.step(&[p0, p1], eos_stops);
    assert_eq!(
        step,
        BeamStep::Continue(vec![
            BeamMove {
                slot: 0,
                parent: 0,
                token: 5
            },
            BeamMove {
                slot: 1,
                parent: 0,
                token: 6
            },
        ])
    );
    assert_eq!(b.generated_len(), 1);
}

#[test]
fn a_beam_chosen_twice_takes_a_dropped_slot_and_eos_becomes_a_hypothesis() {
    let mut b = BeamSearch::new(params(2, 1.0, EarlyStopping::Heuristic), 10, 1);
    b.step(&[vec![(5, -0.1), (6, -0.5), (7, -1.0), (8, -2.0)], vec![]], eos_stops);
    // Beam 0 (sum -0.1) has the two best continuations; beam 1 (sum -0.5) proposes EOS as its best, which ranks
    // second overall: inside the first k, so it is a finished hypothesis, and never a live beam.
    let p0 = vec![(10, -0.2), (11, -0.6), (12, -3.0), (13, -4.0)];
    let p1 = vec![(EOS, -0.15), (21, -3.0), (22, -3.5), (23, -4.0)];
    let step = b.step(&[p0, p1], eos_stops);
    assert_eq!(
        step,
        BeamStep::Continue(vec![
            BeamMove {
                slot: 0,
                parent: 0,
                token: 10
            },
            BeamMove {
                slot: 1,
                parent: 0,
                token: 11
            },
        ])
    );
    let h = &b.best(2)[0];
    assert_eq!(h.tokens, vec![6, EOS]);
    assert!((h.sum_logprob - -0.65).abs() < 1e-6);
    assert!((h.score - -0.65 / 2.0).abs() < 1e-6, "generated length counts the EOS");
    assert_eq!(h.stop, (FinishReason::Stop, Some(StopReason::Eos)));
}

#[test]
fn eos_outside_the_first_k_is_dropped() {
    let mut b = BeamSearch::new(params(2, 1.0, EarlyStopping::Heuristic), 10, 1);
    b.step(&[vec![(5, -0.1), (EOS, -5.0), (6, -0.5), (7, -1.0)], vec![]], eos_stops);
    assert!(b.best(2).is_empty());
}

#[test]
fn the_length_limit_ends_every_beam_ranked_by_normalized_score() {
    // max_tokens 2: the second step finishes the best k continuations.
    let mut b = BeamSearch::new(params(2, 1.0, EarlyStopping::Heuristic), 2, 1);
    b.step(&[vec![(5, -0.1), (6, -0.5), (7, -1.0), (8, -2.0)], vec![]], eos_stops);
    let step = b.step(
        &[
            vec![(10, -1.0), (11, -2.0), (12, -3.0), (13, -4.0)],
            vec![(20, -0.2), (21, -3.0), (22, -3.5), (23, -4.0)],
        ],
        eos_stops,
    );
    assert_eq!(step, BeamStep::Done);
    assert!(b.is_done());
    let best: Vec<(Vec<u32>, FinishReason)> = b.best(2).iter().map(|h| (h.tokens.clone(), h.stop.0)).collect();
    assert_eq!(
        best,
        vec![(vec![6, 20], FinishReason::Length), (vec![5, 10], FinishReason::Length)]
    );
}

#[test]
fn early_stopping_true_ends_as_soon_as_k_hypotheses_finished() {
    let mut b = BeamSearch::new(params(1, 1.0, EarlyStopping::Done), 100, 1);
    assert_eq!(
        b.step(&[vec![(5, -0.1), (6, -0.2)]], eos_stops),
        BeamStep::Continue(vec![BeamMove {
            slot: 0,
            parent: 0,
            token: 5
        }])
    );
    // EOS is the best continuation: one hypothesis fills the single slot and the search is over.
    assert_eq!(b.step(&[vec![(EOS, -0.1), (7, -0.3)]], eos_stops), BeamStep::Done);
    assert_eq!(b.best(1)[0].tokens, vec![5, EOS]);
}

#[test]
fn top_logprobs_is_log_softmax_best_first_ties_to_lower_ids() {
    let logits = [1.0f32, 3.0, 3.0, -1.0];
    let top = top_logprobs(&logits, 3);
    let z = logits.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
    assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2, 0]);
    for (t, lp) in top {
        assert!((lp as f64 - (logits[t as usize] as f64 - z)).abs() < 1e-6);
    }
}
