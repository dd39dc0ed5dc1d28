//! `out = x · Wᵀ` with `x` f32 `[m, K]` and `W` `[N, K]` in its stored format (f32/f16/bf16/GGML quants).
//!
//! Weights are dequantized per block inside the product, never inflated as a whole (a Q4 matrix stays ~7x
//! smaller than its f32 form, and reading it is what bounds decode speed). Activations stay f32 — unlike
//! llama.cpp, which quantizes them to Q8 for integer dots — because we must match HF float32 log-probs.
//!
//! Two paths, both parallel (`team::parallel_for`) over tiles of output columns (= weight rows), each tile writing a disjoint
//! column range of `out`:
//! - small `m` (decode, `m <= 4`): a fused loop decodes one weight block onto the stack and multiplies it into
//!   8-lane f32 accumulators of all `m` rows, so each weight byte is read once per step (explicit AVX2 kernels
//!   for Q4_0 / Q4_1 / Q8_0, also used in groups of 4 rows up to `m = 16`, where they still beat the GEMM path);
//! - larger `m` (prefill): a tile of weight rows is dequantized into thread-local scratch and multiplied with
//!   the `gemm` crate's packed kernels; large `m` is also split into row chunks so that narrow matrices still
//!   give every thread work.

use std::cell::RefCell;

use gemm::Parallelism;

use super::vec::{has_avx2_fma, sum_lanes};
use crate::quant::{self, GgmlType};
use crate::tensor::WeightMatrix;

/// Largest `m` taken by the fused decode path.
const FUSED_MAX_M: usize = 4;

/// Largest `m` for which the AVX2 quant kernels (in groups of `FUSED_MAX_M` rows) beat dequantize + GEMM. Measured
/// on the default model, 2 threads (`pagedllm-bench throughput`): batch-8 decode 135 -> 261 tok/s, batch 16
/// 218 -> 275; at 32 rows the GEMM path wins again (294 vs 277).
const FUSED_QUANT_MAX_M: usize = 16;

/// `out[m, w.rows] = x[m, w.cols] · Wᵀ`.
///
/// Panics if the slice lengths disagree with `m` and the weight shape (the model validates shapes at load).
pub fn matmul(x: &[f32], m: usize, w: &WeightMatrix, out: &mut [f32]) {
    assert_eq!(x.len(), m * w.cols, "matmul: x is not [{m}, {}]", w.cols);
    assert_eq!(out.len(), m * w.rows, "matmul: out is not [{m}, {}]", w.rows);
    if m == 0 || w.rows == 0 {
        return;
    }
    if w.cols == 0 {
        out.fill(0.0);
        return;
    }
    if m <= FUSED_MAX_M {
        fused(x, m, w, out);
    } else if m <= FUSED_QUANT_MAX_M
        && has_avx2_fma()
        && matches!(w.dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
    {
        let (k, n) = (w.cols, w.rows);
        for (xc, oc) in x.chunks(FUSED_MAX_M * k).zip(out.chunks_mut(FUSED_MAX_M * n)) {
            fused(xc, xc.len() / k, w, oc);
        }
    } else {
        tiled_gemm(x, m, w, out);
    }
}

/// A raw pointer to `out` shared by tasks that write disjoint elements of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: every task writes a disjoint set of columns of `out`, which outlives the parallel region.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    // A method (not field access) so closures capture the whole Sync wrapper, not the raw field.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// One stored block format, decoded into `N` floats. Float types use runs of 32 as their "block" (with a tail
/// when K is not a multiple of 32) so the same loop serves them.
trait Block {
    const N: usize;
    const BYTES: usize;
    fn decode(b: &[u8], y: &mut [f32]);

    /// Adds the dot product of block `b` with `x` (`N` floats) into `acc`. `xsum` is `Σ x` over the block,
    /// precomputed once per call for the formats with an offset term. The default decodes into `buf` first;
    /// the 32-weight quants override it with `d·Σ x·q (+ m·Σ x)`, which skips the per-weight scale and the
    /// scratch round trip (about half the work of decode-then-dot, same f32 arithmetic up to rounding order).
    #[inline(always)]
    fn dot(b: &[u8], x: &[f32], xsum: f32, acc: &mut [f32; 8], buf: &mut [f32]) {
        let _ = xsum;
        let wv = &mut buf[..Self::N];
        Self::decode(b, wv);
        for (w8, x8) in wv.chunks_exact(8).zip(x.chunks_exact(8)) {
            for l in 0..8 {
                acc[l] += w8[l] * x8[l];
            }
        }
    }
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `Σ x·q` over a 32-weight block of 4-bit quants (`qs[j]` low nibble = weight j, high nibble = weight j+16).
#[inline(always)]
fn dot_nibbles(qs: &[u8], x: &[f32]) -> [f32; 8] {
    let mut t = [0.0f32; 8];
    for h in 0..2 {
        for l in 0..8 {
            let q = qs[h * 8 + l];
            t[l] += x[h * 8 + l] * (q & 0x0F) as f32 + x[16 + h * 8 + l] * (q >> 4) as f32;
        }
    }
    t
}

/// Q4_0: `y = (q - 8)·d`, so `Σ x·y = d·(Σ x·q − 8·Σ x)`.
struct Q40;
impl Block for Q40 {
    const N: usize = 32;
    const BYTES: usize = 18;
    #[inline(always)]
    fn decode(b: &[u8], y: &mut [f32]) {
        quant::decode_q4_0(b, y)
    }
    #[inline(always)]
    fn dot(b: &[u8], x: &[f32], xsum: f32, acc: &mut [f32; 8], _buf: &mut [f32]) {
        let d = f16_at(b, 0);
        let t = dot_nibbles(&b[2..18], x);
        for l in 0..8 {
            acc[l] += d * t[l];
        }
        acc[0] -= 8.0 * d * xsum;
    }
}

/// Q4_1: `y = q·d + m`, so `Σ x·y = d·Σ x·q + m·Σ x`.
struct Q41;
impl Block for Q41 {
    const N: usize = 32;
    const BYTES: usize = 20;
    #[inline(always)]
    fn decode(b: &[u8], y: &mut [f32]) {
        quant::decode_q4_1(b, y)
    }
    #[inline(always)]
    fn dot(b: &[u8], x: &[f32], xsum: f32, acc: &mut [f32; 8], _buf: &mut [f32]) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let t = dot_nibbles(&b[4..20], x);
        for l in 0..8 {
            acc[l] += d * t[l];
        }
        acc[0] += m * xsum;
    }
}

/// Q8_0: `y = q·d`, so `Σ x·y = d·Σ x·q`.
struct Q80;
impl Block for Q80 {
    const N: usize = 32;
    const BYTES: usize = 34;
    #[inline(always)]
    fn decode(b: &[u8], y: &mut [f32]) {
        quant::decode_q8_0(b, y)
    }
    #[inline(always)]
    fn dot(b: &[u8], x: &[f32], _xsum: f32, acc: &mut [f32; 8], _buf: &mut [f32]) {
        let d = f16_at(b, 0);
        let qs = &b[2..34];
        let mut t = [0.0f32; 8];
        for h in 0..4 {
            for l in 0..8 {
                t[l] += x[h * 8 + l] * (qs[h * 8 + l] as i8) as f32;
            }
        }
        for l in 0..8 {
            acc[l] += d * t[l];
        }
    }
}

macro_rules! block {
    ($name:ident, $n:expr, $bytes:expr, $decode:path) => {
        struct $name;
        impl Block for $name {
            const N: usize = $n;
            const BYTES: usize = $bytes;
            #[inline(always)]
            fn decode(b: &[u8], y: &mut [f32]) {
                $decode(b, y)
            }
        }
    };
}
block!(F32Run, 32, 128, quant::decode_f32);
block!(F16Run, 32, 64, quant::decode_f16);
block!(BF16Run, 32, 64, quant::decode_bf16);
block!(Q50, 32, 22, quant::decode_q5_0);
block!(Q51, 32, 24, quant::decode_q5_1);
block!(Q4K, 256, 144, quant::decode_q4_k);
block!(Q5K, 256, 176, quant::decode_q5_k);
block!(Q6K, 256, 210, quant::decode_q6_k);

/// Rows `rows` of `W` against the `M` rows of `x`, results written to `out` (row stride `n`).
#[inline(always)]
fn fused_rows<B: Block, const M: usize>(
    x: &[f32],
    xsums: &[f32],
    w: &WeightMatrix,
    rows: std::ops::Range<usize>,
    out: OutPtr,
) {
    let (k, n) = (w.cols, w.rows);
    let full = k / B::N;
    let tail = k - full * B::N;
    let mut buf = [0.0f32; 256];
    for r in rows {
        let row = w.row(r);
        let mut lanes = [[0.0f32; 8]; M];
        for blk in 0..full {
            let b = &row[blk * B::BYTES..(blk + 1) * B::BYTES];
            for (i, acc) in lanes.iter_mut().enumerate() {
                let xv = &x[i * k + blk * B::N..i * k + (blk + 1) * B::N];
                let xsum = xsums.get(i * full + blk).copied().unwrap_or(0.0);
                B::dot(b, xv, xsum, acc, &mut buf);
            }
        }
        let mut res = [0.0f32; M];
        for (i, acc) in lanes.iter().enumerate() {
            res[i] = sum_lanes(acc);
        }
        if tail > 0 {
            // Only float types get here (quant rows are whole blocks); they decode element-wise.
            let wv = &mut buf[..tail];
            B::decode(&row[full * B::BYTES..], wv);
            for (i, r) in res.iter_mut().enumerate() {
                let xv = &x[i * k + full * B::N..(i + 1) * k];
                *r += wv.iter().zip(xv).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        for (i, v) in res.into_iter().enumerate() {
            // SAFETY: row `r` belongs to this task only; `i * n + r < m * n = out.len()`.
            unsafe { *out.get().add(i * n + r) = v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fused_rows_avx2<B: Block, const M: usize>(
    x: &[f32],
    xsums: &[f32],
    w: &WeightMatrix,
    rows: std::ops::Range<usize>,
    out: OutPtr,
) {
    fused_rows::<B, M>(x, xsums, w, rows, out)
}

fn fused_typed<B: Block, const M: usize>(x: &[f32], w: &WeightMatrix, out: &mut [f32]) {
    let n = w.rows;
    // ~8 tasks per thread for load balance, but at least 16 rows so the per-task overhead stays small.
    let per_task = n.div_ceil(8 * crate::cpu::team::current_threads()).clamp(16, 512);
    let out = OutPtr(out.as_mut_ptr());
    let avx2 = has_avx2_fma();
    // Σ x per block and row of x, shared by every weight row (the offset term of Q4_0 / Q4_1).
    let k = w.cols;
    let xsums: Vec<f32> = if k % 32 == 0 && matches!(w.dtype, GgmlType::Q4_0 | GgmlType::Q4_1) {
        x[..M * k].chunks_exact(32).map(|c| c.iter().sum()).collect()
    } else {
        Vec::new()
    };
    let xsums = xsums.as_slice();
    crate::cpu::team::parallel_for(n.div_ceil(per_task), |t| {
        let rows = t * per_task..((t + 1) * per_task).min(n);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU supports the features (checked above).
            return unsafe { fused_rows_avx2::<B, M>(x, xsums, w, rows, out) };
        }
        let _ = avx2;
        fused_rows::<B, M>(x, xsums, w, rows, out)
    });
}

fn fused_m<const M: usize>(x: &[f32], w: &WeightMatrix, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        let kind = match w.dtype {
            GgmlType::Q4_0 => Some(avx2::Q4_0),
            GgmlType::Q4_1 => Some(avx2::Q4_1),
            GgmlType::Q8_0 => Some(avx2::Q8_0),
            _ => None,
        };
        if let Some(kind) = kind {
            return avx2::fused::<M>(kind, x, w, out);
        }
    }
    match w.dtype {
        GgmlType::F32 => fused_typed::<F32Run, M>(x, w, out),
        GgmlType::F16 => fused_typed::<F16Run, M>(x, w, out),
        GgmlType::BF16 => fused_typed::<BF16Run, M>(x, w, out),
        GgmlType::Q4_0 => fused_typed::<Q40, M>(x, w, out),
        GgmlType::Q4_1 => fused_typed::<Q41, M>(x, w, out),
        GgmlType::Q5_0 => fused_typed::<Q50, M>(x, w, out),
        GgmlType::Q5_1 => fused_typed::<Q51, M>(x, w, out),
        GgmlType::Q8_0 => fused_typed::<Q80, M>(x, w, out),
        GgmlType::Q4K => fused_typed::<Q4K, M>(x, w, out),
        GgmlType::Q5K => fused_typed::<Q5K, M>(x, w, out),
        GgmlType::Q6K => fused_typed::<Q6K, M>(x, w, out),
    }
}

/// Explicit AVX2 + FMA kernels for the 32-weight quants (Q4_0, Q4_1, Q8_0), the formats of the default model.
/// Auto-vectorization of the generic loop gives 4-wide SSE with separate multiply and add; here each block's
/// 32 quants become four 8-lane f32 vectors once, shared by all `M` activation rows, and are consumed with FMA:
/// `Σ x·y = d·Σ x·q (+ m·Σ x for Q4_1)`. Activations stay f32 (HF parity), unlike llama.cpp's Q8 activations.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{OutPtr, WeightMatrix};

    pub const Q4_0: u8 = 0;
    pub const Q4_1: u8 = 1;
    pub const Q8_0: u8 = 2;

    fn block_bytes(kind: u8) -> usize {
        match kind {
            Q4_0 => 18,
            Q4_1 => 20,
            _ => 34,
        }
    }

    /// One f16 scale, converted in-register: `half`'s conversion is an out-of-line call here, and a call per
    /// block costs a `vzeroupper` plus spilling the accumulators (measured: ~40% of decode time).
    #[inline(always)]
    unsafe fn f16_at(b: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*b, *b.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// The block's 32 quants as f32 vectors (weights 0-7, 8-15, 16-23, 24-31), its scale d and offset m.
    #[inline(always)]
    unsafe fn block_weights(kind: u8, b: *const u8) -> ([__m256; 4], f32, f32) {
        let d = f16_at(b);
        match kind {
            Q8_0 => {
                let q = b.add(2);
                let cvt =
                    |o: usize| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(o) as *const __m128i)));
                ([cvt(0), cvt(8), cvt(16), cvt(24)], d, 0.0)
            }
            _ => {
                let (qs, m) = if kind == Q4_1 {
                    (b.add(4), f16_at(b.add(2)))
                } else {
                    (b.add(2), 0.0)
                };
                let raw = _mm_loadu_si128(qs as *const __m128i);
                let nib = _mm_set1_epi8(0x0F);
                let mut lo = _mm_and_si128(raw, nib);
                let mut hi = _mm_and_si128(_mm_srli_epi16(raw, 4), nib);
                if kind == Q4_0 {
                    // y = (q - 8)·d: shift to signed before widening, so no Σx term is needed.
                    lo = _mm_sub_epi8(lo, _mm_set1_epi8(8));
                    hi = _mm_sub_epi8(hi, _mm_set1_epi8(8));
                }
                let cvt = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
                (
                    [cvt(lo), cvt(_mm_srli_si128(lo, 8)), cvt(hi), cvt(_mm_srli_si128(hi, 8))],
                    d,
                    m,
                )
            }
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows<const M: usize>(
        kind: u8,
        x: &[f32],
        xsums: &[f32],
        w: &WeightMatrix,
        rows: std::ops::Range<usize>,
        out: OutPtr,
    ) {
        let (k, n) = (w.cols, w.rows);
        let nb = k / 32;
        let bb = block_bytes(kind);
        let xp = x.as_ptr();
        for r in rows {
            let row = w.row(r).as_ptr();
            let mut acc = [_mm256_setzero_ps(); M];
            let mut off = [0.0f32; M];
            for blk in 0..nb {
                let (ws, d, m) = block_weights(kind, row.add(blk * bb));
                let dv = _mm256_set1_ps(d);
                for i in 0..M {
                    let xb = xp.add(i * k + blk * 32);
                    let mut a = _mm256_mul_ps(ws[0], _mm256_loadu_ps(xb));
                    a = _mm256_fmadd_ps(ws[1], _mm256_loadu_ps(xb.add(8)), a);
                    a = _mm256_fmadd_ps(ws[2], _mm256_loadu_ps(xb.add(16)), a);
                    a = _mm256_fmadd_ps(ws[3], _mm256_loadu_ps(xb.add(24)), a);
                    acc[i] = _mm256_fmadd_ps(dv, a, acc[i]);
                    if kind == Q4_1 {
                        off[i] += m * *xsums.get_unchecked(i * nb + blk);
                    }
                }
            }
            for i in 0..M {
                // SAFETY: row `r` belongs to this task only; `i * n + r < m * n = out.len()`.
                *out.get().add(i * n + r) = hsum(acc[i]) + off[i];
            }
        }
    }

    /// `matmul_row_parts` on these kernels: `parts` as `(kind, matrix)`, every one `x.len()` columns wide (a
    /// multiple of 32); the caller checked AVX2 + FMA + F16C support.
    pub fn fused_row_parts<'a>(parts: impl Iterator<Item = (u8, &'a WeightMatrix)>, x: &[f32], out: &mut [f32]) {
        let parts: Vec<(u8, &WeightMatrix)> = parts.collect();
        let total: usize = parts.iter().map(|(_, w)| w.rows).sum();
        assert!(x.len() % 32 == 0 && out.len() >= total);
        // Σ x per block: only Q4_1's offset term reads it.
        let xsums: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
        let tasks = super::part_tasks(parts.iter().map(|(_, w)| w.rows));
        let out = OutPtr(out.as_mut_ptr());
        let (xsums, parts) = (xsums.as_slice(), parts.as_slice());
        crate::cpu::team::parallel_for(tasks.len(), |t| {
            let (p, rs, off) = tasks[t].clone();
            let (kind, w) = parts[p];
            let xs = if kind == Q4_1 { xsums } else { &[] };
            // SAFETY: AVX2 + FMA + F16C detected by the caller; one row, so part `p`'s output `r` is at
            // `off + r`; tasks write disjoint rows.
            unsafe { rows::<1>(kind, x, xs, w, rs, OutPtr(out.get().add(off))) }
        });
    }

    /// `out[M, N] = x · Wᵀ` for a Q4_0 / Q4_1 / Q8_0 `w`; the caller checked AVX2 + FMA + F16C support.
    pub fn fused<const M: usize>(kind: u8, x: &[f32], w: &WeightMatrix, out: &mut [f32]) {
        let (k, n) = (w.cols, w.rows);
        assert!(k % 32 == 0 && x.len() >= M * k && out.len() >= M * n);
        let xsums: Vec<f32> = if kind == Q4_1 {
            x[..M * k].chunks_exact(32).map(|c| c.iter().sum()).collect()
        } else {
            Vec::new()
        };
        let xsums = xsums.as_slice();
        let per_task = n.div_ceil(8 * crate::cpu::team::current_threads()).clamp(16, 512);
        let out = OutPtr(out.as_mut_ptr());
        crate::cpu::team::parallel_for(n.div_ceil(per_task), |t| {
            let rs = t * per_task..((t + 1) * per_task).min(n);
            // SAFETY: AVX2 + FMA + F16C were detected by the caller; slice bounds asserted above.
            unsafe { rows::<M>(kind, x, xsums, w, rs, out) }
        });
    }
}

/// `out = x · [W_0; W_1; ...]ᵀ` for one row `x`: the parts' outputs side by side (`out` is `Σ rows` long) in
/// one parallel op when every part is a Q4_0 / Q4_1 / Q8_0 matrix on an AVX2 CPU (a decode step's q, k, v and
/// gate, up: small products whose separate ops cost more in start and drain than the k and v products
/// themselves); otherwise one `matmul` per part.
///
/// Panics if `x` or `out` disagree with the parts' shapes.
pub fn matmul_row_parts(x: &[f32], parts: &[WeightMatrix], out: &mut [f32]) {
    let total: usize = parts.iter().map(|w| w.rows).sum();
    assert_eq!(out.len(), total, "matmul_row_parts: out is not [1, {total}]");
    #[cfg(target_arch = "x86_64")]
    {
        let kind = |w: &WeightMatrix| match w.dtype {
            GgmlType::Q4_0 => Some(avx2::Q4_0),
            GgmlType::Q4_1 => Some(avx2::Q4_1),
            GgmlType::Q8_0 => Some(avx2::Q8_0),
            _ => None,
        };
        if has_avx2_fma() && parts.iter().all(|w| kind(w).is_some() && w.cols == x.len() && w.cols % 32 == 0) {
            return avx2::fused_row_parts(parts.iter().map(|w| (kind(w).unwrap(), w)), x, out);
        }
    }
    let mut off = 0;
    for w in parts {
        matmul(x, 1, w, &mut out[off..off + w.rows]);
        off += w.rows;
    }
}

/// The tasks of a one-op product over a fused weight's parts (`matmul_row_parts` and its int8 twin): `(part, rows
/// of it, offset of the part's outputs)`, ~16 per thread over all parts' rows (finer than a single matrix's 8: the
/// parts' tails make tasks uneven), 16-512 rows each.
pub(super) fn part_tasks(part_rows: impl Iterator<Item = usize> + Clone) -> Vec<(usize, std::ops::Range<usize>, usize)> {
    let total: usize = part_rows.clone().sum();
    let per_task = total.div_ceil(16 * crate::cpu::team::current_threads()).clamp(16, 512);
    let mut tasks = Vec::new();
    let mut off = 0;
    for (p, rows) in part_rows.enumerate() {
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + per_task).min(rows);
            tasks.push((p, r0..r1, off));
            r0 = r1;
        }
        off += rows;
    }
    tasks
}

fn fused(x: &[f32], m: usize, w: &WeightMatrix, out: &mut [f32]) {
    match m {
        1 => fused_m::<1>(x, w, out),
        2 => fused_m::<2>(x, w, out),
        3 => fused_m::<3>(x, w, out),
        _ => fused_m::<4>(x, w, out),
    }
}

thread_local! {
    /// Dequantized weight tile of the gemm path, reused across calls on each compute thread.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn tiled_gemm(x: &[f32], m: usize, w: &WeightMatrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let threads = crate::cpu::team::current_threads();
    // Wide tiles amortize gemm's packing of `x`; narrow matrices use 32-row tiles and split `m` instead.
    let tile = if n.div_ceil(64) >= 4 * threads { 64 } else { 32 };
    let n_tiles = n.div_ceil(tile);
    let m_chunks = (4 * threads).div_ceil(n_tiles).min(m / 64).max(1);
    let m_chunk = m.div_ceil(m_chunks);
    let out = OutPtr(out.as_mut_ptr());
    crate::cpu::team::parallel_for(n_tiles * m_chunks, |task| {
        let (t, c) = (task / m_chunks, task % m_chunks);
        let (r0, r1) = (t * tile, ((t + 1) * tile).min(n));
        let (i0, i1) = (c * m_chunk, ((c + 1) * m_chunk).min(m));
        if i0 >= i1 {
            return;
        }
        TILE.with(|s| {
            let mut s = s.borrow_mut();
            s.resize(tile * k, 0.0);
            for r in r0..r1 {
                quant::dequantize_row(w.dtype, w.row(r), &mut s[(r - r0) * k..(r - r0 + 1) * k]);
            }
            // SAFETY: dst is `out[i0..i1, r0..r1]` (row stride n), disjoint between tasks and in bounds; lhs is
            // `x[i0..i1, :]` (row stride k); rhs[kk, j] = tile[j * k + kk] is the transposed tile.
            unsafe {
                gemm::gemm(
                    i1 - i0,
                    r1 - r0,
                    k,
                    out.get().add(i0 * n + r0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr().add(i0 * k),
                    1,
                    k as isize,
                    s.as_ptr(),
                    k as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    use super::*;
    use crate::quant::testing::encode;
    use crate::tensor::Storage;

    fn reference(x: &[f32], m: usize, w: &WeightMatrix) -> Vec<f64> {
        let mut dense = vec![0.0f32; w.rows * w.cols];
        for r in 0..w.rows {
            quant::dequantize_row(w.dtype, w.row(r), &mut dense[r * w.cols..(r + 1) * w.cols]);
        }
        let mut out = vec![0.0f64; m * w.rows];
        for i in 0..m {
            for r in 0..w.rows {
                out[i * w.rows + r] = (0..w.cols)
                    .map(|j| x[i * w.cols + j] as f64 * dense[r * w.cols + j] as f64)
                    .sum();
            }
        }
        out
    }

    fn check(dtype: GgmlType, rows: usize, cols: usize, m: usize, seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let wf: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let bytes = encode(dtype, &wf, seed);
        let w = WeightMatrix::new(dtype, rows, cols, Storage::Owned(Arc::new(bytes))).unwrap();
        let x: Vec<f32> = (0..m * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut out = vec![f32::NAN; m * rows];
        matmul(&x, m, &w, &mut out);
        let want = reference(&x, m, &w);
        let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
        for (idx, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 2e-5 * scale * (cols as f64).sqrt(),
                "{dtype:?} [{rows}x{cols}] m={m} at ({}, {}): {a} vs {b}",
                idx / rows,
                idx % rows
            );
        }
    }

    #[test]
    fn every_dtype_matches_f64_reference() {
        let dtypes = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ];
        for (d, dtype) in dtypes.into_iter().enumerate() {
            let cols = if dtype.block_size() == 256 { 512 } else { 96 };
            for (j, m) in [1usize, 3, 9, 17, 64].into_iter().enumerate() {
                check(dtype, 37, cols, m, (d * 10 + j) as u64);
            }
        }
    }

    #[test]
    fn float_rows_of_any_length_and_many_rows() {
        // K not a multiple of 32 exercises the tail; N spanning many tiles exercises the task split.
        for m in [1usize, 2, 4, 5, 130] {
            check(GgmlType::F32, 301, 45, m, m as u64);
            check(GgmlType::F16, 3, 7, m, 100 + m as u64);
        }
        check(GgmlType::Q8_0, 1000, 64, 200, 9);
    }

    #[test]
    fn empty_shapes() {
        let w = WeightMatrix::from_f32(3, 0, &[]);
        let mut out = vec![1.0f32; 6];
        matmul(&[], 2, &w, &mut out);
        assert_eq!(out, vec![0.0; 6]);
        matmul(&[], 0, &w, &mut []);
    }
}
