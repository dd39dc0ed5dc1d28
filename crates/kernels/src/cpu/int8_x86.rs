//! The x86 SIMD kernels of the fast-mode matmul (`int8_matmul`): one body, three integer dot instructions.
//!
//! Per weight block the 32 quants become one 256-bit vector of unsigned bytes (4-bit nibbles spread to bytes, as
//! llama.cpp's `bytes_from_nibbles_32`; Q8_0's signed bytes through the sign trick `|w|`, `sign(x, w)` of its
//! `mul_sum_i8_pairs_float`), shared by the 4 activation rows of a group. The u8 x i8 products become eight
//! 32-bit sums with `vpmaddubsw` + `vpmaddwd` on AVX2 (no saturation: at most 2·128·127 < 2^15 per pair) or one
//! `vpdpbusd` with VNNI; each block's sums are converted to f32 and scaled with one FMA. All three reproduce
//! `int8_matmul::block_int_dot` exactly (tested).

use std::arch::x86_64::*;
use std::ops::Range;

use super::matmul::OutPtr;
use super::q8_acts::Q8Acts;
use crate::quant::GgmlType;
use crate::tensor::WeightMatrix;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// Eight 32-bit sums of 4 adjacent u8 x i8 products.
trait DotU8I8 {
    unsafe fn dot(w: __m256i, x: __m256i) -> __m256i;
}

struct Avx2;
impl DotU8I8 for Avx2 {
    #[inline(always)]
    unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }
}

struct AvxVnni;
impl DotU8I8 for AvxVnni {
    #[inline(always)]
    unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
    }
}

struct Avx512Vnni;
impl DotU8I8 for Avx512Vnni {
    #[inline(always)]
    unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
    }
}

/// One f16 scale converted in-register (an out-of-line `half` call per block costs a `vzeroupper` and spills).
#[inline(always)]
unsafe fn f16_at(b: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*b, *b.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The block's quants as `(unsigned bytes, sign source)`: for the 4-bit types the nibbles (weights 0..16 low,
/// 16..32 high, matching the activation order) and no sign; for Q8_0 `|q|` and `q` itself.
#[inline(always)]
unsafe fn weight_bytes<const KIND: u8>(b: *const u8) -> (__m256i, __m256i) {
    if KIND == Q8_0 {
        let q = _mm256_loadu_si256(b.add(2) as *const __m256i);
        (_mm256_sign_epi8(q, q), q)
    } else {
        let qs = b.add(if KIND == Q4_1 { 4 } else { 2 });
        let raw = _mm_loadu_si128(qs as *const __m128i);
        let v = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
        (v, v)
    }
}

/// The integer dot of one prepared weight block with 32 activation quants at `x`.
#[inline(always)]
unsafe fn block_dot<D: DotU8I8, const KIND: u8>(wu: __m256i, ws: __m256i, x: *const i8) -> __m256i {
    let xv = _mm256_loadu_si256(x as *const __m256i);
    let xv = if KIND == Q8_0 { _mm256_sign_epi8(xv, ws) } else { xv };
    D::dot(wu, xv)
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Weight rows `rows` against activation rows `i0..i0 + M`, `R` weight rows at a time: each activation block
/// (its quants, scale and sum) is loaded once for the `R` rows, and the `R·M` accumulators are independent FMA
/// chains, so a one-row decode is not bound by the latency of a single chain.
#[inline(always)]
unsafe fn rows_kind<D: DotU8I8, const KIND: u8, const M: usize, const R: usize>(
    w: &WeightMatrix,
    a: &Q8Acts,
    i0: usize,
    rows: Range<usize>,
    out: OutPtr,
) {
    let (k, n, nb) = (w.cols, w.rows, a.blocks());
    let bb = w.dtype.block_bytes();
    let xq = a.qs.as_ptr().add(i0 * k);
    let xd = a.d.as_ptr().add(i0 * nb);
    let xs = a.s.as_ptr().add(i0 * nb);
    let mut r0 = rows.start;
    while r0 < rows.end {
        if r0 + R > rows.end {
            // The tail: one weight row at a time.
            rows_kind::<D, KIND, M, 1>(w, a, i0, r0..rows.end, out);
            return;
        }
        let row: [*const u8; R] = std::array::from_fn(|j| w.row(r0 + j).as_ptr());
        let mut acc = [[_mm256_setzero_ps(); M]; R];
        let mut off = [[0.0f32; M]; R];
        for blk in 0..nb {
            for j in 0..R {
                let b = row[j].add(blk * bb);
                let d = f16_at(b);
                let (wu, ws) = weight_bytes::<KIND>(b);
                // Q4_1's min, Q4_0's -8·d: the weight of the activation block sum.
                let c = if KIND == Q4_1 { f16_at(b.add(2)) } else { -8.0 * d };
                for i in 0..M {
                    let dot = block_dot::<D, KIND>(wu, ws, xq.add(i * k + blk * 32));
                    let scale = _mm256_set1_ps(d * *xd.add(i * nb + blk));
                    acc[j][i] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[j][i]);
                    if KIND != Q8_0 {
                        off[j][i] += c * *xs.add(i * nb + blk);
                    }
                }
            }
        }
        for j in 0..R {
            for i in 0..M {
                // SAFETY (caller): these rows belong to this task only; `(i0 + i) * n + r < m * n`.
                *out.get().add((i0 + i) * n + r0 + j) = hsum(acc[j][i]) + off[j][i];
            }
        }
        r0 += R;
    }
}

#[inline(always)]
unsafe fn rows_typed<D: DotU8I8, const M: usize>(
    w: &WeightMatrix,
    a: &Q8Acts,
    i0: usize,
    rows: Range<usize>,
    out: OutPtr,
) {
    // Weight rows per pass: 4 for one activation row, 2 for two, then 1 (at most 8 accumulators in flight).
    macro_rules! kinds {
        ($r:literal) => {
            match w.dtype {
                GgmlType::Q4_0 => rows_kind::<D, Q4_0, M, $r>(w, a, i0, rows, out),
                GgmlType::Q4_1 => rows_kind::<D, Q4_1, M, $r>(w, a, i0, rows, out),
                _ => rows_kind::<D, Q8_0, M, $r>(w, a, i0, rows, out),
            }
        };
    }
    match M {
        1 => kinds!(4),
        2 => kinds!(2),
        _ => kinds!(1),
    }
}

/// Activation rows `i0..i0 + M` against weight rows `rows` (`int8_matmul::run_group`'s contract) on AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_avx2<const M: usize>(w: &WeightMatrix, a: &Q8Acts, i0: usize, rows: Range<usize>, out: OutPtr) {
    rows_typed::<Avx2, M>(w, a, i0, rows, out)
}

/// As `rows_avx2`, with AVX-VNNI's `vpdpbusd`.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn rows_avx_vnni<const M: usize>(w: &WeightMatrix, a: &Q8Acts, i0: usize, rows: Range<usize>, out: OutPtr) {
    rows_typed::<AvxVnni, M>(w, a, i0, rows, out)
}

/// As `rows_avx2`, with AVX-512 VNNI's `vpdpbusd` on 256-bit registers (VL).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn rows_avx512_vnni<const M: usize>(
    w: &WeightMatrix,
    a: &Q8Acts,
    i0: usize,
    rows: Range<usize>,
    out: OutPtr,
) {
    rows_typed::<Avx512Vnni, M>(w, a, i0, rows, out)
}

/// The integer dot of one weight block `b` with 32 activation quants on the given path, lanes summed: the
/// tests compare it with the scalar `block_int_dot` for bit-exactness.
#[cfg(test)]
pub mod probe {
    use super::*;

    #[inline(always)]
    unsafe fn one<D: DotU8I8>(dtype: GgmlType, b: &[u8], x: &[i8]) -> i32 {
        assert!(x.len() >= 32 && b.len() >= dtype.block_bytes());
        let v = match dtype {
            GgmlType::Q4_0 => {
                let (u, s) = weight_bytes::<Q4_0>(b.as_ptr());
                block_dot::<D, Q4_0>(u, s, x.as_ptr())
            }
            GgmlType::Q4_1 => {
                let (u, s) = weight_bytes::<Q4_1>(b.as_ptr());
                block_dot::<D, Q4_1>(u, s, x.as_ptr())
            }
            _ => {
                let (u, s) = weight_bytes::<Q8_0>(b.as_ptr());
                block_dot::<D, Q8_0>(u, s, x.as_ptr())
            }
        };
        let mut lanes = [0i32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v);
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn avx2(dtype: GgmlType, b: &[u8], x: &[i8]) -> i32 {
        one::<Avx2>(dtype, b, x)
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn avx_vnni(dtype: GgmlType, b: &[u8], x: &[i8]) -> i32 {
        one::<AvxVnni>(dtype, b, x)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn avx512_vnni(dtype: GgmlType, b: &[u8], x: &[i8]) -> i32 {
        one::<Avx512Vnni>(dtype, b, x)
    }
}
