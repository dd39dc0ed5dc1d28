//! Small f32 vector primitives shared by the CPU kernels, written so LLVM vectorizes them: fixed 8-lane
//! accumulators over `chunks_exact(8)` (the lanes map onto one AVX register or two SSE ones), scalar tails.
//!
//! The workspace builds for baseline x86-64 (SSE2), so the hot kernels are compiled twice — as written and
//! inside a `#[target_feature(enable = "avx2,fma")]` wrapper — and pick one at run time with
//! [`has_avx2_fma`]. Everything here is `#[inline(always)]` so it inherits the wrapper's features.

/// Whether the running CPU has AVX2 and FMA (the detection macro caches its answer).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // F16C (f16 block scales converted inline) comes with every AVX2 CPU; checked anyway.
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sums 8 lanes pairwise (fixed order, so results do not depend on the instruction set).
#[inline(always)]
pub fn sum_lanes(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// Adds `a · b` into the 8 lanes (`a.len() == b.len()`, a multiple of 8 for the vector part).
#[inline(always)]
pub fn dot_into(lanes: &mut [f32; 8], a: &[f32], b: &[f32]) {
    for (a8, b8) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += a8[l] * b8[l];
        }
    }
}

/// `a · b` with f32 lane accumulators.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; 8];
    dot_into(&mut lanes, a, b);
    let tail = a.len() / 8 * 8;
    let mut s = sum_lanes(&lanes);
    for (x, y) in a[tail..].iter().zip(&b[tail..]) {
        s += x * y;
    }
    s
}

/// `y += alpha * x`.
#[inline(always)]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

/// `y *= alpha`.
#[inline(always)]
pub fn scale(y: &mut [f32], alpha: f32) {
    for v in y {
        *v *= alpha;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_handles_tails_and_matches_f64() {
        for n in [0usize, 1, 7, 8, 9, 31, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-5, "n = {n}");
        }
    }

    #[test]
    fn axpy_and_scale() {
        let mut y = vec![1.0f32; 10];
        let x: Vec<f32> = (0..10).map(|i| i as f32).collect();
        axpy(&mut y, 2.0, &x);
        scale(&mut y, 0.5);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (1.0 + 2.0 * i as f32) * 0.5);
        }
    }
}
