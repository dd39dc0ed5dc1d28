//! RMSNorm (`x / sqrt(mean(x²) + eps) * weight`, HF `LlamaRMSNorm` in float32) over rows, and residual adds.
//! Rows are independent, so the kernels run in parallel over rows when there are enough to pay for it.

use super::team::{par_chunks_mut, par_chunks_mut2};

use super::vec::{dot, sum_lanes};

/// Rows per parallel task: a decode batch (a few rows) runs on the calling thread.
const ROWS_PER_TASK: usize = 16;

#[inline(always)]
fn norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ss = dot(x, x);
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        // HF order: normalize in f32, then scale by the weight.
        *o = w * (v * inv);
    }
}

/// `out[r] = rms_norm(x[r]) * weight` for every row of `weight.len()` elements.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    assert_eq!(x.len(), out.len(), "rms_norm: x and out differ in length");
    assert!(
        d > 0 && x.len() % d == 0,
        "rms_norm: length {} is not a multiple of {d}",
        x.len()
    );
    let n = d * ROWS_PER_TASK;
    par_chunks_mut(out, n, |i, o| {
        for (o, xr) in o.chunks_exact_mut(d).zip(x[i * n..].chunks_exact(d)) {
            norm_row(xr, weight, eps, o);
        }
    });
}

/// `dst += src`.
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "add_assign: lengths differ");
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// The residual step between sub-layers in one pass: `residual += delta`, then `out = rms_norm(residual)`.
pub fn add_rms_norm(residual: &mut [f32], delta: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    assert!(
        residual.len() == delta.len() && residual.len() == out.len(),
        "add_rms_norm: lengths differ"
    );
    assert!(
        d > 0 && residual.len() % d == 0,
        "add_rms_norm: length {} is not a multiple of {d}",
        residual.len()
    );
    let n = d * ROWS_PER_TASK;
    par_chunks_mut2(residual, n, out, n, |i, res, o| {
        let del = &delta[i * n..][..res.len()];
        {
            for ((r, dl), o) in res
                .chunks_exact_mut(d)
                .zip(del.chunks_exact(d))
                .zip(o.chunks_exact_mut(d))
            {
                let mut lanes = [0.0f32; 8];
                // Fused: add and accumulate the square sum in the same sweep.
                for (r8, d8) in r.chunks_exact_mut(8).zip(dl.chunks_exact(8)) {
                    for l in 0..8 {
                        r8[l] += d8[l];
                        lanes[l] += r8[l] * r8[l];
                    }
                }
                let tail = d / 8 * 8;
                let mut ss = sum_lanes(&lanes);
                for (rv, dv) in r[tail..].iter_mut().zip(&dl[tail..]) {
                    *rv += dv;
                    ss += *rv * *rv;
                }
                let inv = 1.0 / (ss / d as f32 + eps).sqrt();
                for ((o, &v), &w) in o.iter_mut().zip(r.iter()).zip(weight) {
                    *o = w * (v * inv);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn reference(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
        let d = w.len();
        x.chunks(d)
            .flat_map(|r| {
                let ms = r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + eps).sqrt();
                r.iter()
                    .zip(w)
                    .map(move |(v, w)| *v as f64 * inv * *w as f64)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn rms_norm_and_fused_add_match_f64() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (rows, d) in [(1usize, 64usize), (3, 45), (40, 576)] {
            let x: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let delta: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let w: Vec<f32> = (0..d).map(|_| rng.random_range(0.5f32..1.5)).collect();
            let mut out = vec![0.0f32; rows * d];
            rms_norm(&x, &w, 1e-5, &mut out);
            for (a, b) in out.iter().zip(reference(&x, &w, 1e-5)) {
                assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
            }

            let sum: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
            let mut res = x.clone();
            add_rms_norm(&mut res, &delta, &w, 1e-5, &mut out);
            assert_eq!(res, sum);
            for (a, b) in out.iter().zip(reference(&sum, &w, 1e-5)) {
                assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
            }

            let mut res2 = x.clone();
            add_assign(&mut res2, &delta);
            assert_eq!(res2, sum);
        }
    }

    #[test]
    fn eps_guards_zero_rows() {
        let mut out = [1.0f32; 4];
        rms_norm(&[0.0; 4], &[1.0; 4], 1e-6, &mut out);
        assert_eq!(out, [0.0; 4]);
    }
}
