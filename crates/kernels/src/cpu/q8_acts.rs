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
        let out = BlockOut {
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            qsum: self.qsum.as_mut_ptr(),
            qsum16: self.qsum16.as_mut_ptr(),
        };
        #[cfg(target_arch = "x86_64")]
        let simd = super::vec::has_avx2_fma();
        let run = |blocks: std::ops::Range<usize>| {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: the CPU has the features; `blocks` are in bounds and written by this call only.
                return unsafe { quantize_blocks_avx2(x, out, blocks) };
            }
            // SAFETY: as above.
            unsafe { quantize_blocks(x, out, blocks) }
        };
        // A decode step's inputs are one task (parallel hand-off would cost more than the work); prefill's split.
        if nb <= TASK_BLOCKS {
            run(0..nb);
        } else {
            super::team::parallel_for(nb.div_ceil(TASK_BLOCKS), |t| run(t * TASK_BLOCKS..((t + 1) * TASK_BLOCKS).min(nb)));
        }
    }
}

/// Blocks per parallel task of `quantize` (8,192 activations, a few µs).
const TASK_BLOCKS: usize = 256;

/// Where `quantize`'s tasks write: `Q8Acts`'s buffers, each block's entries written by one task only.
#[derive(Clone, Copy)]
struct BlockOut {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    qsum: *mut i32,
    qsum16: *mut i32,
}
// SAFETY: tasks write disjoint blocks (see `quantize`).
unsafe impl Send for BlockOut {}
unsafe impl Sync for BlockOut {}

impl BlockOut {
    /// Block `b`'s results.
    ///
    /// # Safety
    /// `b` in bounds, written by one caller only.
    #[inline(always)]
    unsafe fn set(self, b: usize, d: f32, lo: i32, hi: i32) {
        let sum = lo + hi;
        *self.d.add(b) = d;
        *self.qsum.add(b) = sum;
        *self.qsum16.add(2 * b) = lo;
        *self.qsum16.add(2 * b + 1) = hi;
        *self.s.add(b) = d * sum as f32;
    }
}

/// The reference: blocks `blocks` of `x` one element at a time.
///
/// # Safety
/// As `BlockOut::set`, for every block of `blocks`.
unsafe fn quantize_blocks(x: &[f32], out: BlockOut, blocks: std::ops::Range<usize>) {
    for b in blocks {
        let q = std::slice::from_raw_parts_mut(out.qs.add(b * QK), QK);
        let (d, sum) = quantize_block(&x[b * QK..(b + 1) * QK], q);
        let lo: i32 = q[..QK / 2].iter().map(|&v| v as i32).sum();
        out.set(b, d, lo, sum - lo);
    }
}

/// `quantize_blocks` in AVX2, bit for bit: the same `d`, and `round` half away from zero as `f32::round` (the
/// hardware's nearest-even differs on ties). Written out because the compiler's version of the scalar loop ran at
/// ~5 ns per activation, which made quantizing a serial ~4% of a decode step and more of prefill.
///
/// # Safety
/// The CPU has AVX2 and FMA; as `quantize_blocks`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_blocks_avx2(x: &[f32], out: BlockOut, blocks: std::ops::Range<usize>) {
    use std::arch::x86_64::*;
    assert!(blocks.end * QK <= x.len());
    let sign = _mm256_set1_ps(-0.0);
    let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    let (lo_q, hi_q) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let hsum = |v: __m256i| {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
    };
    for b in blocks {
        let p = x.as_ptr().add(b * QK);
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let nan = v.iter().fold(_mm256_setzero_ps(), |n, &x| _mm256_or_ps(n, _mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
        if _mm256_movemask_ps(nan) != 0 {
            std::ptr::write_bytes(out.qs.add(b * QK), 0, QK);
            out.set(b, f32::NAN, 0, 0);
            continue;
        }
        let a = v.iter().fold(_mm256_setzero_ps(), |m, &x| _mm256_max_ps(m, _mm256_andnot_ps(sign, x)));
        let m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let q = v.map(|x| {
            let r = _mm256_mul_ps(x, id);
            let t = _mm256_round_ps(r, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            let away = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(r, t)), half, _CMP_GE_OQ);
            let step = _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(r, sign), one));
            // An infinite amax makes `inf · 0` NaN: 0, as the scalar clamp-and-cast gives.
            let ordered = _mm256_cmp_ps(r, r, _CMP_ORD_Q);
            let rounded = _mm256_and_ps(_mm256_add_ps(t, step), ordered);
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(rounded, lo_q), hi_q))
        });
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256(out.qs.add(b * QK) as *mut __m256i, _mm256_permutevar8x32_epi32(bytes, order));
        out.set(b, d, hsum(_mm256_add_epi32(q[0], q[1])), hsum(_mm256_add_epi32(q[2], q[3])));
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

    /// The AVX2 quantizer equals the scalar reference bit for bit, ties (`x / d` exactly `n + 0.5`), zeros,
    /// infinities and NaNs included, and over several parallel tasks.
    #[test]
    fn simd_quantizer_equals_the_reference() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (m, k) = (3, 32 * 200);
        let mut x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        // Block 0: amax 127 gives d = 1, so halves are exact ties either way.
        for (j, v) in x[..32].iter_mut().enumerate() {
            *v = if j == 0 { 127.0 } else { (j as f32 - 16.0) + 0.5 };
        }
        x[32..64].fill(0.0);
        x[64 + 3] = f32::INFINITY;
        x[96 + 7] = f32::NAN;
        x[128 + 1] = f32::NEG_INFINITY;
        let mut a = Q8Acts::default();
        a.quantize(&x, m, k);
        let mut want = Q8Acts { m, k, ..Default::default() };
        want.qs = vec![0; m * k];
        want.d = vec![0.0; m * k / 32];
        want.s = vec![0.0; m * k / 32];
        want.qsum = vec![0; m * k / 32];
        want.qsum16 = vec![0; m * k / 16];
        let out = BlockOut {
            qs: want.qs.as_mut_ptr(),
            d: want.d.as_mut_ptr(),
            s: want.s.as_mut_ptr(),
            qsum: want.qsum.as_mut_ptr(),
            qsum16: want.qsum16.as_mut_ptr(),
        };
        // SAFETY: the buffers hold every block.
        unsafe { quantize_blocks(&x, out, 0..m * k / 32) };
        assert_eq!(a.qs, want.qs);
        assert_eq!(a.qsum, want.qsum);
        assert_eq!(a.qsum16, want.qsum16);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.d), bits(&want.d));
        assert_eq!(bits(&a.s), bits(&want.s));
        assert_eq!(&a.qs[1..32], &(1..32).map(|j| ((j as f32 - 16.0) + 0.5).round() as i8).collect::<Vec<_>>()[..]);
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
