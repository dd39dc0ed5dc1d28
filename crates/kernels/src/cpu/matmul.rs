//! `out = x · Wᵀ` with `x` f32 `[m, K]` and `W` `[N, K]` in its stored format (f32/f16/bf16/GGML quants).
//!
//! Weights are dequantized per block inside the product, never inflated as a whole (a Q4 matrix stays ~7x
//! smaller than its f32 form, and reading it is what bounds decode speed). Activations stay f32 — unlike
//! llama.cpp, which quantizes them to Q8 for integer dots — because we must match HF float32 log-probs.
//!
//! Two paths, both parallel (rayon) over tiles of output columns (= weight rows), each tile writing a disjoint
//! column range of `out`:
//! - small `m` (decode, `m <= 4`): a fused loop decodes one weight block onto the stack and multiplies it into
//!   8-lane f32 accumulators of all `m` rows, so each weight byte is read once per step;
//! - larger `m` (prefill): a tile of weight rows is dequantized into thread-local scratch and multiplied with
//!   the `gemm` crate's packed kernels; large `m` is also split into row chunks so that narrow matrices still
//!   give every thread work.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::vec::{has_avx2_fma, sum_lanes};
use crate::quant::{self, GgmlType};
use crate::tensor::WeightMatrix;

/// Largest `m` taken by the fused decode path.
const FUSED_MAX_M: usize = 4;

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
    } else {
        tiled_gemm(x, m, w, out);
    }
}

/// A raw pointer to `out` shared by tasks that write disjoint elements of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of columns of `out`, which outlives the parallel region.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    // A method (not field access) so closures capture the whole Sync wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One stored block format, decoded into `N` floats. Float types use runs of 32 as their "block" (with a tail
/// when K is not a multiple of 32) so the same loop serves them.
trait Block {
    const N: usize;
    const BYTES: usize;
    fn decode(b: &[u8], y: &mut [f32]);
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
block!(Q40, 32, 18, quant::decode_q4_0);
block!(Q41, 32, 20, quant::decode_q4_1);
block!(Q80, 32, 34, quant::decode_q8_0);
block!(Q4K, 256, 144, quant::decode_q4_k);
block!(Q6K, 256, 210, quant::decode_q6_k);

/// Rows `rows` of `W` against the `M` rows of `x`, results written to `out` (row stride `n`).
#[inline(always)]
fn fused_rows<B: Block, const M: usize>(x: &[f32], w: &WeightMatrix, rows: std::ops::Range<usize>, out: OutPtr) {
    let (k, n) = (w.cols, w.rows);
    let full = k / B::N;
    let tail = k - full * B::N;
    let mut buf = [0.0f32; 256];
    for r in rows {
        let row = w.row(r);
        let mut lanes = [[0.0f32; 8]; M];
        for blk in 0..full {
            let wv = &mut buf[..B::N];
            B::decode(&row[blk * B::BYTES..(blk + 1) * B::BYTES], wv);
            for (i, acc) in lanes.iter_mut().enumerate() {
                let xv = &x[i * k + blk * B::N..i * k + (blk + 1) * B::N];
                for (w8, x8) in wv.chunks_exact(8).zip(xv.chunks_exact(8)) {
                    for l in 0..8 {
                        acc[l] += w8[l] * x8[l];
                    }
                }
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
    w: &WeightMatrix,
    rows: std::ops::Range<usize>,
    out: OutPtr,
) {
    fused_rows::<B, M>(x, w, rows, out)
}

fn fused_typed<B: Block, const M: usize>(x: &[f32], w: &WeightMatrix, out: &mut [f32]) {
    let n = w.rows;
    // ~8 tasks per thread for load balance, but at least 16 rows so the rayon overhead stays small.
    let per_task = n.div_ceil(8 * rayon::current_num_threads()).clamp(16, 512);
    let out = OutPtr(out.as_mut_ptr());
    let avx2 = has_avx2_fma();
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let rows = t * per_task..((t + 1) * per_task).min(n);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU supports the features (checked above).
            return unsafe { fused_rows_avx2::<B, M>(x, w, rows, out) };
        }
        let _ = avx2;
        fused_rows::<B, M>(x, w, rows, out)
    });
}

fn fused_m<const M: usize>(x: &[f32], w: &WeightMatrix, out: &mut [f32]) {
    match w.dtype {
        GgmlType::F32 => fused_typed::<F32Run, M>(x, w, out),
        GgmlType::F16 => fused_typed::<F16Run, M>(x, w, out),
        GgmlType::BF16 => fused_typed::<BF16Run, M>(x, w, out),
        GgmlType::Q4_0 => fused_typed::<Q40, M>(x, w, out),
        GgmlType::Q4_1 => fused_typed::<Q41, M>(x, w, out),
        GgmlType::Q8_0 => fused_typed::<Q80, M>(x, w, out),
        GgmlType::Q4K => fused_typed::<Q4K, M>(x, w, out),
        GgmlType::Q6K => fused_typed::<Q6K, M>(x, w, out),
    }
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
    /// Dequantized weight tile of the gemm path, reused across calls on each rayon worker.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn tiled_gemm(x: &[f32], m: usize, w: &WeightMatrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let threads = rayon::current_num_threads();
    // Wide tiles amortize gemm's packing of `x`; narrow matrices use 32-row tiles and split `m` instead.
    let tile = if n.div_ceil(64) >= 4 * threads { 64 } else { 32 };
    let n_tiles = n.div_ceil(tile);
    let m_chunks = (4 * threads).div_ceil(n_tiles).min(m / 64).max(1);
    let m_chunk = m.div_ceil(m_chunks);
    let out = OutPtr(out.as_mut_ptr());
    (0..n_tiles * m_chunks).into_par_iter().for_each(|task| {
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
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q6K,
        ];
        for (d, dtype) in dtypes.into_iter().enumerate() {
            let cols = if dtype.block_size() == 256 { 512 } else { 96 };
            for (j, m) in [1usize, 3, 17, 64].into_iter().enumerate() {
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
