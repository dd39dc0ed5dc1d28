//! GLU activations of the MLP (HF `act_fn(gate) * up`): SwiGLU (Llama) `silu(x) = x / (1 + e^-x)`, and
//! GeGLU with the tanh approximation (Gemma, `gelu_pytorch_tanh`: PyTorch's `gelu(x, approximate="tanh")`
//! formula), plus the logit soft-cap `c * tanh(x / c)` (Gemma 2's final logits).

use super::team::par_chunks_mut;

/// Elements per parallel task (small activations run on the calling thread).
const PER_TASK: usize = 16 * 1024;

/// `out = silu(gate) * up`, element-wise.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "silu_mul: lengths differ"
    );
    par_chunks_mut(out, PER_TASK, |i, o| {
        let (g, u) = (&gate[i * PER_TASK..][..o.len()], &up[i * PER_TASK..][..o.len()]);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    });
}

/// `sqrt(2 / pi)`, as PyTorch's tanh-approximate GELU writes it (`M_SQRT2 * M_2_SQRTPI * 0.5`).
const GELU_BETA: f32 = std::f32::consts::SQRT_2 * std::f32::consts::FRAC_2_SQRT_PI * 0.5;
const GELU_KAPPA: f32 = 0.044715;

/// GELU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    let inner = GELU_BETA * (x + GELU_KAPPA * x * x * x);
    0.5 * x * (1.0 + inner.tanh())
}

/// `out = gelu_tanh(gate) * up`, element-wise.
pub fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "gelu_tanh_mul: lengths differ"
    );
    par_chunks_mut(out, PER_TASK, |i, o| {
        let (g, u) = (&gate[i * PER_TASK..][..o.len()], &up[i * PER_TASK..][..o.len()]);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = gelu_tanh(g) * u;
        }
    });
}

/// Soft-capping in place: `x -> cap * tanh(x / cap)` (HF: `x / cap`, `tanh`, `* cap`, in that order).
pub fn softcap(x: &mut [f32], cap: f32) {
    par_chunks_mut(x, PER_TASK, |_, c| {
        for v in c {
            *v = (*v / cap).tanh() * cap;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_definition_and_limits() {
        let gate = [-100.0f32, -3.0, -0.5, 0.0, 0.7, 2.5, 100.0];
        let up = [1.0f32, 2.0, -1.0, 5.0, 0.5, 1.0, 3.0];
        let mut out = [f32::NAN; 7];
        gelu_tanh_mul(&gate, &up, &mut out);
        for i in 0..gate.len() {
            let x = gate[i] as f64;
            let t = ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh();
            let want = 0.5 * x * (1.0 + t) * up[i] as f64;
            assert!(
                (out[i] as f64 - want).abs() < 1e-6 * want.abs().max(1.0),
                "{i}: {} vs {want}",
                out[i]
            );
        }
        // Far left it is 0, far right the identity.
        assert_eq!(out[0], 0.0);
        assert_eq!(out[6], 300.0);
    }

    #[test]
    fn softcap_bounds_and_keeps_small_values() {
        let mut x = vec![-1e6f32, -30.0, -0.01, 0.0, 0.01, 30.0, 1e6];
        softcap(&mut x, 30.0);
        assert_eq!((x[0], x[6]), (-30.0, 30.0));
        assert!((x[5] - 30.0 * 1f32.tanh()).abs() < 1e-5 && (x[1] + x[5]).abs() == 0.0);
        assert!((x[4] - 0.01).abs() < 1e-7 && x[3] == 0.0);
    }

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
