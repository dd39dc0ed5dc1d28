//! SwiGLU, the Llama MLP activation: `silu(gate) * up` with `silu(x) = x / (1 + e^-x)` (HF `act_fn(gate) * up`).

use rayon::prelude::*;

/// Elements per rayon task (small activations run on the calling thread).
const PER_TASK: usize = 16 * 1024;

/// `out = silu(gate) * up`, element-wise.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "silu_mul: lengths differ"
    );
    out.par_chunks_mut(PER_TASK)
        .zip(gate.par_chunks(PER_TASK))
        .zip(up.par_chunks(PER_TASK))
        .for_each(|((o, g), u)| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_definition_including_extremes() {
        let gate = [-100.0f32, -2.0, 0.0, 0.5, 3.0, 100.0];
        let up = [2.0f32, 1.5, 7.0, -1.0, 0.25, 1.0];
        let mut out = [f32::NAN; 6];
        silu_mul(&gate, &up, &mut out);
        for i in 0..6 {
            let g = gate[i] as f64;
            let want = g / (1.0 + (-g).exp()) * up[i] as f64;
            assert!(
                (out[i] as f64 - want).abs() < 1e-6 * want.abs().max(1.0),
                "{i}: {} vs {want}",
                out[i]
            );
            assert!(out[i].is_finite());
        }
    }

    #[test]
    fn large_inputs_split_across_tasks() {
        let n = 3 * PER_TASK + 5;
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 * 0.001).sin() * 4.0).collect();
        let up = vec![2.0f32; n];
        let mut out = vec![0.0f32; n];
        silu_mul(&gate, &up, &mut out);
        for i in (0..n).step_by(997) {
            let g = gate[i];
            assert!((out[i] - 2.0 * g / (1.0 + (-g).exp())).abs() < 1e-6);
        }
    }
}
