//! `Q8Acts`: f32 activation rows quantized to int8 in blocks of 32, once per matmul input, for the integer-dot
//! (fast-mode) matmuls, plus the scalar reference of the per-block integer dot products.
//!
//! The scheme is llama.cpp's `quantize_row_q8_1` (`ggml-quants.c`): per block `d = amax / 127`, `q = round(x / d)`
//! in [-127, 127], and the block sum `s = d · Σ q` that Q4_1's offset term and Q4_0's `-8` term need. Unlike ggml
//! we keep `d` and `s` in f32 (ggml stores f16): the activations are few next to the weights, and f16 scales would
//! add error for no speed. `q` never takes -128, so the SIMD kernels' sign trick (`|w|`, `sign(x, w)`) is exact.
//! A NaN anywhere in a block makes its scale NaN, so a NaN activation still poisons the result as in exact mode.

/// Weights (and activations) per quant block.
pub const QK: usize = 32;

/// `m` rows of `k` activations (`k` a multiple of 32) as int8 blocks with their f32 scales and sums.
#[derive(Clone, Debug, Default)]
pub struct Q8Acts {
    pub m: usize,
    pub k: usize,
    /// `[m, k]` quants, row-major.
    pub qs: Vec<i8>,
    /// `[m, k / 32]` block scales `d`.
    pub d: Vec<f32>,
    /// `[m, k / 32]` `d · Σ q` per block.
    pub s: Vec<f32>,
    /// `[m, k / 32]` `Σ q` per block (the exact integer the kernels' offset terms scale).
    pub qsum: Vec<i32>,
    /// `[m, k / 16]` `Σ q` per half block (Q6_K's 16-weight sub-blocks each have their own scale).
    pub qsum16: Vec<i32>,
}

impl Q8Acts {
    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.k / QK
    }

    /// Quantizes `x` (`[m, k]`) into `self`, reusing its buffers.
    ///
    /// Panics if `k` is not a multiple of 32 or `x` is not `m * k` long (callers check `k` first; the
    /// model validates shapes at load).
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize) {
        assert!(k % QK == 0, "Q8Acts: row length {k} is not a multiple of {QK}");
        assert_eq!(x.len(), m * k, "Q8Acts: x is not [{m}, {k}]");
        let nb = m * k / QK;
        self.m = m;
        self.k = k;
        self.qs.resize(m * k, 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        self.qsum.resize(nb, 0);
        self.qsum16.resize(2 * nb, 0);
        #[cfg(target_arch = "x86_64")]
        if super::vec::has_avx2_fma() {
            // SAFETY: the CPU has the features.
            return unsafe { self.quantize_blocks_avx2(x) };
        }
        self.quantize_blocks(x);
    }

    /// `quantize_blocks` compiled for AVX2 (+ SSE4.1's rounding: the baseline build calls libm's `roundf` per
    /// element, which cost more than the decode-step matmul it feeds for the narrow matrices).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,sse4.1")]
    unsafe fn quantize_blocks_avx2(&mut self, x: &[f32]) {
        self.quantize_blocks(x)
    }

    #[inline(always)]
    fn quantize_blocks(&mut self, x: &[f32]) {
        for (b, (xb, qb)) in x.chunks_exact(QK).zip(self.qs.chunks_exact_mut(QK)).enumerate() {
            let (d, sum) = quantize_block(xb, qb);
            self.d[b] = d;
            self.qsum[b] = sum;
            let lo: i32 = qb[..QK / 2].iter().map(|&q| q as i32).sum();
            self.qsum16[2 * b] = lo;
            self.qsum16[2 * b + 1] = sum - lo;
            self.s[b] = d * sum as f32;
        }
    }
}

/// One block: writes the quants, returns `(d, Σ q)`.
#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let mut amax = 0.0f32;
    let mut nan = false;
    for &v in x {
        amax = amax.max(v.abs());
        nan |= v.is_nan();
    }
    if nan {
        q.fill(0);
        return (f32::NAN, 0);
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (qv, &v) in q.iter_mut().zip(x) {
        // |v * id| <= 127 up to rounding; the clamp keeps an infinite amax's 0 * inf = NaN -> 0 and rules out -128.
        let r = (v * id).round().clamp(-127.0, 127.0) as i8;
        *qv = r;
        sum += r as i32;
    }
    (d, sum)
}

/// `Σ nibble_j · x_j` over a 4-bit block's 16 packed bytes (low nibble = weight j, high = weight j + 16), the
/// nibbles taken unsigned (0..15): Q4_1 uses it as is, Q4_0 subtracts `8 · Σ x`.
#[inline(always)]
pub fn dot_nibbles_i8(qs: &[u8], x: &[i8]) -> i32 {
    let mut t = 0i32;
    for j in 0..16 {
        t += (qs[j] & 0x0F) as i32 * x[j] as i32 + (qs[j] >> 4) as i32 * x[j + 16] as i32;
    }
    t
}

/// `Σ w_j · x_j` over 32 signed bytes (Q8_0).
#[inline(always)]
pub fn dot_i8(w: &[u8], x: &[i8]) -> i32 {
    w[..QK].iter().zip(&x[..QK]).map(|(&a, &b)| (a as i8) as i32 * b as i32).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_to_the_block_max_and_back() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let mut a = Q8Acts::default();
        a.quantize(&x, 2, 32);
        assert_eq!(a.blocks(), 1);
        for b in 0..2 {
            let xb = &x[b * 32..(b + 1) * 32];
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(a.d[b], amax / 127.0);
            let qb = &a.qs[b * 32..(b + 1) * 32];
            assert!(qb.iter().any(|&q| q.unsigned_abs() == 127));
            assert!(qb.iter().all(|&q| q != -128));
            assert_eq!(a.qsum[b], qb.iter().map(|&q| q as i32).sum::<i32>());
            assert_eq!(a.qsum16[2 * b], qb[..16].iter().map(|&q| q as i32).sum::<i32>());
            assert_eq!(a.qsum16[2 * b + 1], qb[16..].iter().map(|&q| q as i32).sum::<i32>());
            for (q, v) in qb.iter().zip(xb) {
                assert!((*q as f32 * a.d[b] - v).abs() <= a.d[b] * 0.5 + 1e-6);
            }
        }
    }

    #[test]
    fn zero_and_nan_blocks() {
        let mut x = vec![0.0f32; 64];
        x[40] = f32::NAN;
        let mut a = Q8Acts::default();
        a.quantize(&x, 1, 64);
        assert_eq!((a.d[0], a.qsum[0]), (0.0, 0));
        assert!(a.qs[..32].iter().all(|&q| q == 0));
        assert!(a.d[1].is_nan());
    }

    #[test]
    fn scalar_block_dots() {
        let x: Vec<i8> = (0..32).map(|i| (i * 7 % 255 - 127) as i8).collect();
        let qs: Vec<u8> = (0..16).map(|i| (i * 37 % 256) as u8).collect();
        let want: i32 = (0..32)
            .map(|j| {
                let n = if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 };
                n as i32 * x[j] as i32
            })
            .sum();
        assert_eq!(dot_nibbles_i8(&qs, &x), want);
        let w: Vec<u8> = (0..32).map(|i| (i as i8 * -3) as u8).collect();
        assert_eq!(dot_i8(&w, &x), (0..32).map(|j| (j as i32 * -3) * x[j] as i32).sum::<i32>());
    }
}
