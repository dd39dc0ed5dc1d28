//! `PackedMatrix`: a Q4_0 / Q4_1 / Q8_0 weight re-laid at load for the fast-mode matmuls on x86, 16 rows
//! interleaved so that one SIMD lane holds one output row, and the matmul over it.
//!
//! In the file's layout (`int8_matmul`) a decode step's product is a dot per row: each 32-weight block costs a
//! nibble unpack, an integer dot, a horizontal fold into one scale FMA and a scalar offset, about sixteen
//! instructions per block and row, and the 20-byte blocks of four rows are read as four strided streams. That
//! is compute-bound far below the memory's speed (measured: 5 ns per row-block at one thread, while the
//! weights stream from L3 at 26 GB/s). Packed, a tile of 16 rows is one linear stream, and a block of all 16
//! rows is eight `vpdpbusd` on 512-bit registers (lane `r` = row `r`, the 4 activation bytes broadcast), one
//! f16 scale vector and one FMA: about two instructions per row-block, and no horizontal sums (the 16 outputs
//! are one store). The idea is llama.cpp's repacked `block_q4_0x8` GEMV (`ggml-cpu/repack.cpp`); the layout
//! and kernels are our own, and cover Q4_1 and Q8_0 too.
//!
//! Layout of one tile (rows `16t .. 16t + 16`, padded with zero rows; `nb` blocks of 32 per row):
//!
//! - quants, `nb` records: 4-bit types 4 chunks of 64 bytes, chunk `j` holding row `r`'s file bytes
//!   `qs[4j .. 4j + 4]` at `4r` (low nibbles: weights `4j..4j+4`, high: `16+4j..`); Q8_0 8 chunks, chunk `g`
//!   holding row `r`'s weights `4g .. 4g + 4` (signed) at `4r`;
//! - scales, `nb` records of 16 f16 `d`;
//! - Q4_1 only, mins, `nb` records of 16 f16 `m`.
//!
//! Per row and block the integer dot `I = Σ q·q_a` is exact on every path; then `out += d·d_a·(I − c·Σq_a)`
//! with `c` = 8 for Q4_0 (`w = d(q − 8)`), 0 for Q8_0, and for Q4_1 `out += d·d_a·I + m·s_a` (`s_a = d_a·Σq_a`).

use std::ops::Range;

use super::isa::CpuIsa;
use super::matmul::OutPtr;
use super::q8_acts::{Q8Acts, QK};
use crate::quant::GgmlType;
use crate::tensor::WeightMatrix;

/// Rows per tile: one 512-bit register of 32-bit lanes.
pub const TILE: usize = 16;

/// Activation rows per kernel pass: each unpacked weight block is shared by this many rows.
pub const GROUP_ROWS: usize = 4;

/// One cache line, so the tiles start 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A weight matrix in the tile layout above (see the module docs).
pub struct PackedMatrix {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    data: Vec<Line>,
    tile_bytes: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({:?} [{}, {}])", self.dtype, self.rows, self.cols)
    }
}

/// Whether `w` can be packed: a 32-weight fast-mode type with whole blocks per row.
pub fn packable(w: &WeightMatrix) -> bool {
    matches!(w.dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) && w.cols % QK == 0 && w.cols > 0
}

/// Whether fast mode uses packed weights on `isa`: the x86 levels (and the scalar reference). Arm keeps the
/// file layout and its `sdot` kernels (`int8_neon`), which have no packed counterpart yet.
pub fn packs_on(isa: CpuIsa) -> bool {
    !matches!(isa, CpuIsa::NeonDotprod)
}

/// Bytes of one block's quants for all 16 rows of a tile.
fn quant_record(dtype: GgmlType) -> usize {
    if dtype == GgmlType::Q8_0 {
        8 * 64
    } else {
        4 * 64
    }
}

impl PackedMatrix {
    /// `w` re-laid in tiles. Panics unless `packable(w)` (callers check).
    pub fn pack(w: &WeightMatrix) -> Self {
        assert!(packable(w), "PackedMatrix: {:?} [{}, {}] cannot be packed", w.dtype, w.rows, w.cols);
        let nb = w.cols / QK;
        let (qr, bb) = (quant_record(w.dtype), w.dtype.block_bytes());
        let scale_sections = if w.dtype == GgmlType::Q4_1 { 2 } else { 1 };
        let tile_bytes = (nb * (qr + scale_sections * 2 * TILE)).next_multiple_of(64);
        let tiles = w.rows.div_ceil(TILE);
        let mut data = vec![Line([0; 64]); tiles * tile_bytes / 64];
        // SAFETY: `Line` is 64 plain bytes; the slice covers exactly the vector's memory.
        let bytes = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr() as *mut u8, data.len() * 64) };
        for row in 0..w.rows {
            let (t, r) = (row / TILE, row % TILE);
            let tile = &mut bytes[t * tile_bytes..(t + 1) * tile_bytes];
            let (quants, scales) = tile.split_at_mut(nb * qr);
            for (b, block) in w.row(row).chunks_exact(bb).enumerate() {
                scales[b * 32 + 2 * r..b * 32 + 2 * r + 2].copy_from_slice(&block[..2]);
                let q = &mut quants[b * qr..(b + 1) * qr];
                let file_qs = match w.dtype {
                    GgmlType::Q4_1 => {
                        let mins = nb * 32 + b * 32 + 2 * r;
                        scales[mins..mins + 2].copy_from_slice(&block[2..4]);
                        &block[4..20]
                    }
                    GgmlType::Q4_0 => &block[2..18],
                    _ => &block[2..34],
                };
                for (g, word) in file_qs.chunks_exact(4).enumerate() {
                    q[g * 64 + 4 * r..g * 64 + 4 * r + 4].copy_from_slice(word);
                }
            }
        }
        Self { dtype: w.dtype, rows: w.rows, cols: w.cols, data, tile_bytes }
    }

    pub fn blocks(&self) -> usize {
        self.cols / QK
    }

    pub fn tiles(&self) -> usize {
        self.rows.div_ceil(TILE)
    }

    /// Resident bytes (the loader's memory report).
    pub fn bytes(&self) -> usize {
        self.data.len() * 64
    }

    /// Tile `t`'s first byte (64-byte aligned).
    pub(super) fn tile_ptr(&self, t: usize) -> *const u8 {
        debug_assert!(t < self.tiles());
        // SAFETY: `t < tiles()`, so the offset stays inside `data`.
        unsafe { (self.data.as_ptr() as *const u8).add(t * self.tile_bytes) }
    }

    /// The file bytes of row `row`'s block `b`, rebuilt from the tiles (tests check the layout with it).
    pub fn file_block(&self, row: usize, b: usize) -> Vec<u8> {
        let (t, r, nb, qr) = (row / TILE, row % TILE, self.blocks(), quant_record(self.dtype));
        // SAFETY: as `pack`.
        let bytes = unsafe { std::slice::from_raw_parts(self.data.as_ptr() as *const u8, self.data.len() * 64) };
        let tile = &bytes[t * self.tile_bytes..(t + 1) * self.tile_bytes];
        let mut out = tile[nb * qr + b * 32 + 2 * r..][..2].to_vec();
        if self.dtype == GgmlType::Q4_1 {
            out.extend_from_slice(&tile[nb * qr + nb * 32 + b * 32 + 2 * r..][..2]);
        }
        for g in 0..qr / 64 {
            out.extend_from_slice(&tile[b * qr + g * 64 + 4 * r..][..4]);
        }
        out
    }
}

/// Where a kernel writes: output row `i` of the activations, column `col0 + 16t + lane`, rows `ld` apart.
#[derive(Clone, Copy)]
pub(super) struct OutTiles {
    pub ptr: OutPtr,
    pub ld: usize,
    pub col0: usize,
}

/// `out[m, w.rows] = acts · Wᵀ` on the `isa` kernels. Panics on shape mismatches or an unsupported `isa` (as
/// `int8_matmul::matmul_q8`).
pub fn matmul_packed(acts: &Q8Acts, w: &PackedMatrix, out: &mut [f32], isa: CpuIsa) {
    matmul_packed_parts(acts, std::slice::from_ref(w), out, isa)
}

/// `out = acts · [W_0; W_1; ...]ᵀ`: the parts' outputs side by side in each row (`out` is `[m, Σ rows]`), as one
/// parallel op (a decode step's q, k, v or gate, up), tasks over the tiles of every part.
pub fn matmul_packed_parts(acts: &Q8Acts, parts: &[PackedMatrix], out: &mut [f32], isa: CpuIsa) {
    for w in parts {
        assert_eq!(acts.k, w.cols, "matmul_packed: activations have {} columns, a weight {}", acts.k, w.cols);
    }
    let total: usize = parts.iter().map(|w| w.rows).sum();
    assert_eq!(out.len(), acts.m * total, "matmul_packed: out is not [{}, {total}]", acts.m);
    assert!(isa.is_supported(), "matmul_packed: {} kernels on a CPU without them", isa.name());
    if acts.m == 0 || total == 0 {
        return;
    }
    // ~8 tasks per thread for load balance; a task is whole tiles of one part.
    let all_tiles: usize = parts.iter().map(|w| w.tiles()).sum();
    let per_task = all_tiles.div_ceil(8 * super::team::current_threads()).clamp(1, 64);
    let mut tasks = Vec::new();
    let mut col0 = 0;
    for (p, w) in parts.iter().enumerate() {
        let mut t0 = 0;
        while t0 < w.tiles() {
            tasks.push((p, t0..(t0 + per_task).min(w.tiles()), col0));
            t0 += per_task;
        }
        col0 += w.rows;
    }
    let ptr = OutPtr(out.as_mut_ptr());
    super::team::parallel_for(tasks.len(), |t| {
        let (p, ref tiles, col0) = tasks[t];
        let to = OutTiles { ptr, ld: total, col0 };
        // Each tile is read once and run against every group of activation rows while it sits in L1.
        for tile in tiles.clone() {
            let mut i0 = 0;
            while i0 < acts.m {
                let g = (acts.m - i0).min(GROUP_ROWS);
                // SAFETY: tile `tile` of part `p` is this task's only; shapes asserted above; `isa` supported.
                unsafe { run_group(isa, &parts[p], acts, i0, g, tile..tile + 1, to) };
                i0 += g;
            }
        }
    });
}

/// Activation rows `i0..i0 + g` (`g` in 1..=4) against `tiles`.
///
/// # Safety
/// `isa` supported; the tiles' output columns not written concurrently; shapes as `matmul_packed_parts` asserts.
unsafe fn run_group(isa: CpuIsa, w: &PackedMatrix, a: &Q8Acts, i0: usize, g: usize, tiles: Range<usize>, out: OutTiles) {
    macro_rules! by_rows {
        ($f:ident) => {
            match g {
                1 => $f::<1>(w, a, i0, tiles, out),
                2 => $f::<2>(w, a, i0, tiles, out),
                3 => $f::<3>(w, a, i0, tiles, out),
                _ => $f::<4>(w, a, i0, tiles, out),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx512Vnni => {
            use super::packed_x86::tiles_avx512_vnni;
            by_rows!(tiles_avx512_vnni)
        }
        #[cfg(target_arch = "x86_64")]
        CpuIsa::AvxVnni => {
            use super::packed_x86::tiles_avx_vnni;
            by_rows!(tiles_avx_vnni)
        }
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx2 => {
            use super::packed_x86::tiles_avx2;
            by_rows!(tiles_avx2)
        }
        _ => by_rows!(tiles_scalar),
    }
}

/// The scalar reference kernel (any CPU): per row and block the exact integer dot, then the scales in f32.
///
/// # Safety
/// As `run_group` (no ISA requirement).
unsafe fn tiles_scalar<const M: usize>(w: &PackedMatrix, a: &Q8Acts, i0: usize, tiles: Range<usize>, out: OutTiles) {
    let (nb, k, qr) = (w.blocks(), w.cols, quant_record(w.dtype));
    let f16 = |p: *const u8| half::f16::from_le_bytes([*p, *p.add(1)]).to_f32();
    for t in tiles {
        let tile = w.tile_ptr(t);
        let scales = tile.add(nb * qr);
        for r in 0..TILE.min(w.rows - t * TILE) {
            let mut acc = [0.0f32; M];
            for b in 0..nb {
                let q = tile.add(b * qr);
                let d = f16(scales.add(b * 32 + 2 * r));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let ai = (i0 + i) * nb + b;
                    let x = &a.qs[(i0 + i) * k + b * QK..][..QK];
                    let mut dot = 0i32;
                    for g in 0..qr / 64 {
                        for l in 0..4 {
                            let byte = *q.add(g * 64 + 4 * r + l);
                            dot += match w.dtype {
                                GgmlType::Q8_0 => byte as i8 as i32 * x[4 * g + l] as i32,
                                _ => {
                                    (byte & 0x0F) as i32 * x[4 * g + l] as i32
                                        + (byte >> 4) as i32 * x[16 + 4 * g + l] as i32
                                }
                            };
                        }
                    }
                    *acc += match w.dtype {
                        GgmlType::Q4_1 => d * a.d[ai] * dot as f32 + f16(scales.add(nb * 32 + b * 32 + 2 * r)) * a.s[ai],
                        GgmlType::Q4_0 => d * a.d[ai] * (dot - 8 * a.qsum[ai]) as f32,
                        _ => d * a.d[ai] * dot as f32,
                    };
                }
            }
            for (i, v) in acc.into_iter().enumerate() {
                // SAFETY (caller): this tile's columns belong to this task only.
                *out.ptr.get().add((i0 + i) * out.ld + out.col0 + t * TILE + r) = v;
            }
        }
    }
}

#[cfg(test)]
#[path = "packed_matrix_tests.rs"]
mod tests;
