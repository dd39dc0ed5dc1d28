//! Fast-mode matmul: `out = x · Wᵀ` for Q4_0 / Q4_1 / Q8_0 weights with the activations `x` quantized to int8
//! blocks once per matmul input (`Q8Acts`), integer dot products per block and the scales applied per block in
//! f32 — llama.cpp's `ggml_vec_dot_q4_0_q8_0` / `ggml_vec_dot_q4_1_q8_1` / `ggml_vec_dot_q8_0_q8_0` math
//! (`ggml-cpu/arch/x86/quants.c`), in our own loops. Per weight block `b` and activation block `a`:
//!
//! - Q4_1 (`w = d_b·q + m_b`, q in 0..15): `Σ w·x ≈ d_b·d_a·Σ q·q_a + m_b·s_a`
//! - Q4_0 (`w = d_b·(q − 8)`):             `Σ w·x ≈ d_b·d_a·Σ q·q_a − 8·d_b·s_a`
//! - Q8_0 (`w = d_b·q`, q signed):          `Σ w·x ≈ d_b·d_a·Σ q·q_a`
//!
//! with `s_a = d_a·Σ q_a`. The integer sums are exact and identical on every ISA path (the tests check that);
//! only the f32 accumulation order differs between the scalar reference and the SIMD kernels.
//!
//! Tiling keeps the decode structure of `matmul`: parallel tasks (`team::parallel_for`) over tiles of weight rows, each weight
//! block decoded once and multiplied into up to 4 activation rows. With more rows, a task walks sub-tiles of
//! `SUBTILE_ROWS` weight rows and runs every group of 4 activation rows over each, so the sub-tile is re-read
//! from cache rather than from memory.

use std::ops::Range;

use super::isa::CpuIsa;
use super::matmul::OutPtr;
use super::q8_acts::{dot_i8, dot_nibbles_i8, Q8Acts, QK};
use crate::quant::GgmlType;
use crate::tensor::WeightMatrix;

/// Activation rows per kernel call: each decoded weight block is shared by this many rows (as in `matmul`).
pub const GROUP_ROWS: usize = 4;

/// Weight rows a task runs all its activation groups over before moving on: 64 rows of the widest matrix of the
/// default model (K = 1536, Q4_1) are 60 KiB, a size that stays in L2 on the CPUs we target.
const SUBTILE_ROWS: usize = 64;

/// Whether the fast path handles `w`: a 32-weight quant with whole blocks per row.
pub fn supports(w: &WeightMatrix) -> bool {
    matches!(w.dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) && w.cols % QK == 0 && w.cols > 0
}

/// `out[m, w.rows] = acts · Wᵀ` on the `isa` kernels (the caller picks `CpuIsa::detect()`; tests pick each
/// supported one).
///
/// Panics if `w` is not `supports`-ed, `acts.k != w.cols`, `out` is not `[acts.m, w.rows]`, or `isa` is not
/// supported by this CPU (callers check; the model validates shapes at load).
pub fn matmul_q8(acts: &Q8Acts, w: &WeightMatrix, out: &mut [f32], isa: CpuIsa) {
    assert!(
        supports(w),
        "matmul_q8: {:?} [{}, {}] is not a fast-mode weight",
        w.dtype,
        w.rows,
        w.cols
    );
    assert_eq!(
        acts.k, w.cols,
        "matmul_q8: activations have {} columns, the weight {}",
        acts.k, w.cols
    );
    assert_eq!(
        out.len(),
        acts.m * w.rows,
        "matmul_q8: out is not [{}, {}]",
        acts.m,
        w.rows
    );
    assert!(
        isa.is_supported(),
        "matmul_q8: {} kernels on a CPU without them",
        isa.name()
    );
    let (m, n) = (acts.m, w.rows);
    if m == 0 || n == 0 {
        return;
    }
    // ~8 tasks per thread for load balance, at least 16 rows so the per-task overhead stays small (as `matmul`).
    let per_task = n.div_ceil(8 * super::team::current_threads()).clamp(16, 512);
    let out = OutPtr(out.as_mut_ptr());
    super::team::parallel_for(n.div_ceil(per_task), |t| {
        let task = t * per_task..((t + 1) * per_task).min(n);
        let mut r0 = task.start;
        while r0 < task.end {
            let sub = r0..(r0 + SUBTILE_ROWS).min(task.end);
            let mut i0 = 0;
            while i0 < m {
                let g = (m - i0).min(GROUP_ROWS);
                // SAFETY: rows `sub` of `out` belong to this task only; shapes asserted above; `isa` supported.
                unsafe { run_group(isa, w, acts, i0, g, sub.clone(), out) };
                i0 += g;
            }
            r0 = sub.end;
        }
    });
}

/// `out = acts · [W_0; W_1; ...]ᵀ` for one activation row: the parts' outputs side by side (`out` is
/// `Σ rows` long), as one parallel op. A decode step's q, k, v (and gate, up) are small products; run one after
/// another, each pays an op's start and its threads' drain, which costs more than the k and v products themselves.
///
/// Panics as `matmul_q8` does, per part, and if `acts.m != 1`.
pub fn matmul_q8_row_parts(acts: &Q8Acts, parts: &[WeightMatrix], out: &mut [f32], isa: CpuIsa) {
    assert_eq!(acts.m, 1, "matmul_q8_row_parts: {} activation rows (one expected)", acts.m);
    for w in parts {
        assert!(supports(w) && acts.k == w.cols, "matmul_q8_row_parts: a {:?} [{}, {}] part", w.dtype, w.rows, w.cols);
    }
    let total: usize = parts.iter().map(|w| w.rows).sum();
    assert_eq!(out.len(), total, "matmul_q8_row_parts: out is not [1, {total}]");
    assert!(isa.is_supported(), "matmul_q8_row_parts: {} kernels on a CPU without them", isa.name());
    let tasks = super::matmul::part_tasks(parts.iter().map(|w| w.rows));
    let out = OutPtr(out.as_mut_ptr());
    super::team::parallel_for(tasks.len(), |t| {
        let (p, rows, off) = tasks[t].clone();
        // One activation row: the part's output `r` sits at `off + r`, so its kernels see `out + off`.
        // SAFETY: tasks cover disjoint rows of disjoint parts; shapes asserted above; `isa` supported.
        unsafe { run_group(isa, &parts[p], acts, 0, 1, rows, OutPtr(out.get().add(off))) };
    });
}

/// Activation rows `i0..i0 + g` (`g` in 1..=4) against weight rows `rows`.
///
/// # Safety
/// `isa` must be supported; `rows` of `out` must not be written concurrently; shapes as `matmul_q8` asserts.
unsafe fn run_group(isa: CpuIsa, w: &WeightMatrix, a: &Q8Acts, i0: usize, g: usize, rows: Range<usize>, out: OutPtr) {
    macro_rules! by_rows {
        ($f:ident) => {
            match g {
                1 => $f::<1>(w, a, i0, rows, out),
                2 => $f::<2>(w, a, i0, rows, out),
                3 => $f::<3>(w, a, i0, rows, out),
                _ => $f::<4>(w, a, i0, rows, out),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx2 => {
            use super::int8_x86::rows_avx2;
            by_rows!(rows_avx2)
        }
        #[cfg(target_arch = "x86_64")]
        CpuIsa::AvxVnni => {
            use super::int8_x86::rows_avx_vnni;
            by_rows!(rows_avx_vnni)
        }
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx512Vnni => {
            use super::int8_x86::rows_avx512_vnni;
            by_rows!(rows_avx512_vnni)
        }
        #[cfg(target_arch = "aarch64")]
        CpuIsa::NeonDotprod => {
            use super::int8_neon::rows_neon_dotprod;
            by_rows!(rows_neon_dotprod)
        }
        _ => by_rows!(rows_scalar),
    }
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The exact integer dot of weight block `b` (its raw bytes) with activation block `x`: nibbles unsigned for the
/// 4-bit types, signed bytes for Q8_0. Every SIMD path must reproduce this bit for bit.
#[inline(always)]
pub fn block_int_dot(dtype: GgmlType, b: &[u8], x: &[i8]) -> i32 {
    match dtype {
        GgmlType::Q4_0 => dot_nibbles_i8(&b[2..18], x),
        GgmlType::Q4_1 => dot_nibbles_i8(&b[4..20], x),
        _ => dot_i8(&b[2..34], x),
    }
}

/// The scalar reference kernel (any CPU): one f32 sum per output, blocks in order.
///
/// # Safety
/// As `run_group` (no ISA requirement).
unsafe fn rows_scalar<const M: usize>(w: &WeightMatrix, a: &Q8Acts, i0: usize, rows: Range<usize>, out: OutPtr) {
    let (k, n, nb, bb) = (w.cols, w.rows, a.blocks(), w.dtype.block_bytes());
    for r in rows {
        let row = w.row(r);
        let mut res = [0.0f32; M];
        for blk in 0..nb {
            let b = &row[blk * bb..(blk + 1) * bb];
            let d = f16_at(b, 0);
            // The per-block offset weight: Q4_1's min, Q4_0's -8·d, none for Q8_0.
            let c = match w.dtype {
                GgmlType::Q4_1 => f16_at(b, 2),
                GgmlType::Q4_0 => -8.0 * d,
                _ => 0.0,
            };
            for (i, acc) in res.iter_mut().enumerate() {
                let ai = (i0 + i) * nb + blk;
                let x = &a.qs[(i0 + i) * k + blk * QK..(i0 + i) * k + (blk + 1) * QK];
                let dot = block_int_dot(w.dtype, b, x);
                *acc += d * a.d[ai] * dot as f32 + c * a.s[ai];
            }
        }
        for (i, v) in res.into_iter().enumerate() {
            // SAFETY: row `r` belongs to this task only; `(i0 + i) * n + r < m * n`.
            *out.get().add((i0 + i) * n + r) = v;
        }
    }
}

#[cfg(test)]
#[path = "int8_matmul_tests.rs"]
mod tests;
