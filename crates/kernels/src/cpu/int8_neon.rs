//! The Arm kernel of the fast-mode matmul (`int8_matmul`): NEON with the dot-product extension (`sdot`, four
//! i8 x i8 products summed into each 32-bit lane), as llama.cpp's `ggml_vec_dot_q4_1_q8_1` on `__ARM_FEATURE_DOTPROD`.
//!
//! Per weight block the 32 quants are two 16-byte vectors (4-bit types: low nibbles = weights 0..16, high =
//! 16..32, taken unsigned 0..15, which `sdot` reads as non-negative signed bytes; Q8_0: the signed bytes), shared
//! by the 4 activation rows of a group; each block's four 32-bit sums are converted to f32 and scaled with one
//! FMA. The integer sums equal `int8_matmul::block_int_dot` exactly (tested under qemu-aarch64).
//!
//! `sdot` is emitted with inline assembly: Rust's `vdotq_s32` intrinsic is still unstable
//! (`stdarch_neon_dotprod`, rust-lang/rust#117224), and the workspace builds on stable.

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use super::matmul::OutPtr;
use super::q8_acts::Q8Acts;
use crate::quant::GgmlType;
use crate::tensor::WeightMatrix;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// `acc + Σ4 a·b` per 32-bit lane.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!(
        ".arch_extension dotprod",
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

#[inline(always)]
unsafe fn f16_at(b: *const u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([*b, *b.add(1)])).to_f32()
}

/// The block's quants as (weights 0..16, weights 16..32).
#[inline(always)]
unsafe fn weight_bytes<const KIND: u8>(b: *const u8) -> (int8x16_t, int8x16_t) {
    if KIND == Q8_0 {
        (vld1q_s8(b.add(2) as *const i8), vld1q_s8(b.add(18) as *const i8))
    } else {
        let raw = vld1q_u8(b.add(if KIND == Q4_1 { 4 } else { 2 }));
        (vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8::<4>(raw)))
    }
}

#[inline(always)]
unsafe fn block_dot(lo: int8x16_t, hi: int8x16_t, x: *const i8) -> int32x4_t {
    sdot(sdot(vdupq_n_s32(0), lo, vld1q_s8(x)), hi, vld1q_s8(x.add(16)))
}

#[inline(always)]
unsafe fn rows_kind<const KIND: u8, const M: usize>(w: &WeightMatrix, a: &Q8Acts, i0: usize, rows: Range<usize>, out: OutPtr) {
    let (k, n, nb) = (w.cols, w.rows, a.blocks());
    let bb = w.dtype.block_bytes();
    let xq = a.qs.as_ptr().add(i0 * k);
    let xd = a.d.as_ptr().add(i0 * nb);
    let xs = a.s.as_ptr().add(i0 * nb);
    for r in rows {
        let row = w.row(r).as_ptr();
        let mut acc = [vdupq_n_f32(0.0); M];
        let mut off = [0.0f32; M];
        for blk in 0..nb {
            let b = row.add(blk * bb);
            let d = f16_at(b);
            let (lo, hi) = weight_bytes::<KIND>(b);
            // Q4_1's min, Q4_0's -8·d: the weight of the activation block sum.
            let c = if KIND == Q4_1 { f16_at(b.add(2)) } else { -8.0 * d };
            for i in 0..M {
                let dot = block_dot(lo, hi, xq.add(i * k + blk * 32));
                acc[i] = vfmaq_f32(acc[i], vcvtq_f32_s32(dot), vdupq_n_f32(d * *xd.add(i * nb + blk)));
                if KIND != Q8_0 {
                    off[i] += c * *xs.add(i * nb + blk);
                }
            }
        }
        for i in 0..M {
            // SAFETY (caller): row `r` belongs to this task only; `(i0 + i) * n + r < m * n`.
            *out.get().add((i0 + i) * n + r) = vaddvq_f32(acc[i]) + off[i];
        }
    }
}

/// Activation rows `i0..i0 + M` against weight rows `rows` (`int8_matmul::run_group`'s contract) with `sdot`.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn rows_neon_dotprod<const M: usize>(w: &WeightMatrix, a: &Q8Acts, i0: usize, rows: Range<usize>, out: OutPtr) {
    match w.dtype {
        GgmlType::Q4_0 => rows_kind::<Q4_0, M>(w, a, i0, rows, out),
        GgmlType::Q4_1 => rows_kind::<Q4_1, M>(w, a, i0, rows, out),
        _ => rows_kind::<Q8_0, M>(w, a, i0, rows, out),
    }
}

/// One block's integer dot, lanes summed, for the bit-exactness tests.
#[cfg(test)]
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn probe(dtype: GgmlType, b: &[u8], x: &[i8]) -> i32 {
    assert!(x.len() >= 32 && b.len() >= dtype.block_bytes());
    let (lo, hi) = match dtype {
        GgmlType::Q4_0 => weight_bytes::<Q4_0>(b.as_ptr()),
        GgmlType::Q4_1 => weight_bytes::<Q4_1>(b.as_ptr()),
        _ => weight_bytes::<Q8_0>(b.as_ptr()),
    };
    vaddvq_s32(block_dot(lo, hi, x.as_ptr()))
}
