//! `PackedMatrix`: a Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K weight re-laid at load for the fast-mode matmuls on x86,
//! 16 rows interleaved so that one SIMD lane holds one output row, and the matmul over it.
//!
//! In the file's layout (`int8_matmul`) a decode step's product is a dot per row: each 32-weight block costs a
//! nibble unpack, an integer dot, a horizontal fold into one scale FMA and a scalar offset, about sixteen
//! instructions per block and row, and the 20-byte blocks of four rows are read as four strided streams. That
//! is compute-bound far below the memory's speed (measured: 5 ns per row-block at one thread, while the
//! weights stream from L3 at 26 GB/s). Packed, a tile of 16 rows is one linear stream, and a block of all 16
//! rows is eight `vpdpbusd` on 512-bit registers (lane `r` = row `r`, the 4 activation bytes broadcast), one
//! f16 scale vector and one FMA: about two instructions per row-block, and no horizontal sums (the 16 outputs
//! are one store). The idea is llama.cpp's repacked `block_q4_0x8` GEMV (`ggml-cpu/repack.cpp`); the layout
//! and kernels are our own, and cover Q4_1, Q8_0 and the K-quants too.
//!
//! Layout of one tile (rows `16t .. 16t + 16`, padded with zero rows; `nb` blocks of 32 per row), per block
//! `b` of each row its 32 quants `q` and one or two f16 scales:
//!
//! - quants, `nb` records: 4-bit kinds 4 chunks of 64 bytes, chunk `j` holding at `4r + i` row `r`'s
//!   `q[4j + i] | q[16 + 4j + i] << 4` (for Q4_0 / Q4_1 that is the file's own `qs[4j + i]`); 8-bit kinds 8
//!   chunks, chunk `g` holding row `r`'s `q[4g .. 4g + 4]` at `4r`;
//! - scales, `nb` records of 16 f16 (`d`);
//! - for the kinds with a second scale, `nb` more records (Q4_1's and Q5's min `m`, Q6's second-half scale).
//!
//! The kinds ([`PackedKind`]) and what a row and block add to the output, with `I` the exact integer dot
//! `Σ q·q_a` (`I_lo`, `I_hi` over weights 0..16 and 16..32) and `Σq_a` the activations' integer sums:
//!
//! - `Q4_0` (Q4_0, `w = d(q − 8)`):            `d·d_a·(I − 8·Σq_a)`
//! - `Q4_1` (Q4_1; Q4_K's sub-blocks with `d = d·sc`, `m = −dmin·m`, rounded to f16): `d·d_a·I + m·d_a·Σq_a`
//! - `Q5` (Q5_1; Q5_0 with `m = −16·d`, exact; Q5_K's sub-blocks as Q4_K's; `q` in 0..32 as bytes):
//!   `d·d_a·I + m·d_a·Σq_a`
//! - `Q8_0` (Q8_0, `q` signed):                `d·d_a·I`
//! - `Q6` (Q6_K: `q` in 0..64, `w = d·sc·(q − 32)` per 16, `d·sc` rounded to f16):
//!   `d_a·(d_lo·(I_lo − 32·Σq_a,lo) + d_hi·(I_hi − 32·Σq_a,hi))`
//!
//! K-quants are thereby widened a little (Q4_K 4.5 -> 5 bits per weight, Q5_K 5.5 -> 9, Q6_K 6.6 -> 9) for kernels that need
//! no super-block logic; their f16 scale products are accurate to 2^-11, next to the int8 activations' 2^-8.

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

/// Activation rows a task runs over its tiles before the next rows (prefill): 64 rows of a 1,536-wide input are
/// 96 KiB of int8, which stay in L2 while the task's tiles (at most 64 of them) are re-read.
const ROW_CHUNK: usize = 64;

/// One cache line, so the tiles start 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// The integer form the kernels see (see the module docs).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedKind {
    Q4_0,
    Q4_1,
    Q5,
    Q8_0,
    Q6,
}

impl PackedKind {
    fn of(dtype: GgmlType) -> Option<Self> {
        Some(match dtype {
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q4_1 | GgmlType::Q4K => Self::Q4_1,
            GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K => Self::Q5,
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q6K => Self::Q6,
            _ => return None,
        })
    }

    /// Bytes of one block's quants for all 16 rows of a tile.
    pub fn quant_record(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 4 * 64,
            Self::Q5 | Self::Q8_0 | Self::Q6 => 8 * 64,
        }
    }

    fn scale_sections(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q8_0 => 1,
            Self::Q4_1 | Self::Q5 | Self::Q6 => 2,
        }
    }
}

/// Whether `w` can be packed: one of the types above with whole blocks per row.
pub fn packable(w: &WeightMatrix) -> bool {
    PackedKind::of(w.dtype).is_some() && w.cols % w.dtype.block_size() == 0 && w.cols > 0
}

/// Whether fast mode uses packed weights on `isa`: the x86 levels (and the scalar reference). Arm keeps the
/// file layout and its `sdot` kernels (`int8_neon`), which have no packed counterpart yet.
pub fn packs_on(isa: CpuIsa) -> bool {
    !matches!(isa, CpuIsa::NeonDotprod)
}

fn f16_bits(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Block `b` (32 weights) of a file row as the kind's quants and its two f16 scales (the second unused by
/// Q4_0 / Q8_0).
fn source_block(dtype: GgmlType, row: &[u8], b: usize) -> ([u8; 32], [u8; 2], [u8; 2]) {
    let f16 = |p: &[u8]| half::f16::from_le_bytes([p[0], p[1]]).to_f32();
    let mut q = [0u8; 32];
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let bb = dtype.block_bytes();
            let blk = &row[b * bb..(b + 1) * bb];
            let qs = &blk[bb - 16..];
            for i in 0..16 {
                q[i] = qs[i] & 0x0F;
                q[16 + i] = qs[i] >> 4;
            }
            let m = if dtype == GgmlType::Q4_1 { [blk[2], blk[3]] } else { [0; 2] };
            (q, [blk[0], blk[1]], m)
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let bb = dtype.block_bytes();
            let blk = &row[b * bb..(b + 1) * bb];
            let q = crate::quant::q5_quants(&blk[bb - 20..bb - 16], &blk[bb - 16..]);
            // Q5_0's `d(q − 16)` is `d·q + m` with `m = −16·d`, exact in f16 (a power-of-two multiple).
            let m = if dtype == GgmlType::Q5_1 { [blk[2], blk[3]] } else { f16_bits(-16.0 * f16(&blk[0..2])) };
            (q, [blk[0], blk[1]], m)
        }
        GgmlType::Q8_0 => {
            let blk = &row[b * 34..(b + 1) * 34];
            q.copy_from_slice(&blk[2..34]);
            (q, [blk[0], blk[1]], [0; 2])
        }
        GgmlType::Q4K => {
            // Sub-block j of the super-block: nibbles of qs[32(j/2)..], low for even j, high for odd.
            let (sb, j) = (&row[(b / 8) * 144..(b / 8 + 1) * 144], b % 8);
            let (sc, m) = crate::quant::scale_min_k4(j, &sb[4..16]);
            let qs = &sb[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
            for (v, &byte) in q.iter_mut().zip(qs) {
                *v = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
            }
            (q, f16_bits(f16(&sb[0..2]) * sc as f32), f16_bits(-f16(&sb[2..4]) * m as f32))
        }
        GgmlType::Q5K => {
            // As Q4_K, with the fifth bit of weight l at bit j of qh[l].
            let (sb, j) = (&row[(b / 8) * 176..(b / 8 + 1) * 176], b % 8);
            let (sc, m) = crate::quant::scale_min_k4(j, &sb[4..16]);
            let (qh, qs) = (&sb[16..48], &sb[48 + 32 * (j / 2)..48 + 32 * (j / 2) + 32]);
            for (l, v) in q.iter_mut().enumerate() {
                let low = if j % 2 == 0 { qs[l] & 0x0F } else { qs[l] >> 4 };
                *v = low | ((qh[l] >> j) & 1) << 4;
            }
            (q, f16_bits(f16(&sb[0..2]) * sc as f32), f16_bits(-f16(&sb[2..4]) * m as f32))
        }
        _ => {
            // Q6_K, as `quant::decode_q6_k`: half n = j / 4, run c = j % 4 of it; scales per 16.
            let (sb, j) = (&row[(b / 8) * 210..(b / 8 + 1) * 210], b % 8);
            let (n, c) = (j / 4, j % 4);
            let (ql, qh) = (&sb[64 * n..64 * n + 64], &sb[128 + 32 * n..128 + 32 * n + 32]);
            for (l, v) in q.iter_mut().enumerate() {
                let i = l + 32 * (c % 2);
                let low = if c < 2 { ql[i] & 0x0F } else { ql[i] >> 4 };
                *v = low | ((qh[l] >> (2 * c)) & 3) << 4;
            }
            let d = f16(&sb[208..210]);
            let sc = |h: usize| sb[192 + 8 * n + 2 * c + h] as i8 as f32;
            (q, f16_bits(d * sc(0)), f16_bits(d * sc(1)))
        }
    }
}

/// A weight matrix in the tile layout above (see the module docs).
pub struct PackedMatrix {
    pub dtype: GgmlType,
    pub kind: PackedKind,
    pub rows: usize,
    pub cols: usize,
    data: Vec<Line>,
    tile_bytes: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({:?} as {:?} [{}, {}])", self.dtype, self.kind, self.rows, self.cols)
    }
}

impl PackedMatrix {
    /// `w` re-laid in tiles. Panics unless `packable(w)` (callers check).
    pub fn pack(w: &WeightMatrix) -> Self {
        assert!(packable(w), "PackedMatrix: {:?} [{}, {}] cannot be packed", w.dtype, w.rows, w.cols);
        let kind = PackedKind::of(w.dtype).expect("packable");
        let nb = w.cols / QK;
        let qr = kind.quant_record();
        let tile_bytes = (nb * (qr + kind.scale_sections() * 2 * TILE)).next_multiple_of(64);
        let tiles = w.rows.div_ceil(TILE);
        let mut data = vec![Line([0; 64]); tiles * tile_bytes / 64];
        // SAFETY: `Line` is 64 plain bytes; the slice covers exactly the vector's memory.
        let bytes = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr() as *mut u8, data.len() * 64) };
        // Tiles in parallel (an 8B model's 4.5 GB take seconds on one thread).
        use rayon::prelude::*;
        bytes.par_chunks_mut(tile_bytes).enumerate().for_each(|(t, tile)| {
            let (quants, scales) = tile.split_at_mut(nb * qr);
            for r in 0..TILE.min(w.rows - t * TILE) {
                let file_row = w.row(t * TILE + r);
                for b in 0..nb {
                    let (q, s0, s1) = source_block(w.dtype, file_row, b);
                    scales[b * 32 + 2 * r..][..2].copy_from_slice(&s0);
                    if kind.scale_sections() == 2 {
                        scales[nb * 32 + b * 32 + 2 * r..][..2].copy_from_slice(&s1);
                    }
                    let rec = &mut quants[b * qr..(b + 1) * qr];
                    for g in 0..qr / 64 {
                        for i in 0..4 {
                            rec[g * 64 + 4 * r + i] = match kind {
                                PackedKind::Q4_0 | PackedKind::Q4_1 => q[4 * g + i] | q[16 + 4 * g + i] << 4,
                                _ => q[4 * g + i],
                            };
                        }
                    }
                }
            }
        });
        Self { dtype: w.dtype, kind, rows: w.rows, cols: w.cols, data, tile_bytes }
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

    /// Row `row`'s weights as the tiles hold them (tests compare them with the file's decoded weights).
    pub fn dequantize_row(&self, row: usize) -> Vec<f32> {
        let (t, r, nb, qr) = (row / TILE, row % TILE, self.blocks(), self.kind.quant_record());
        // SAFETY: as `tile_ptr`; the tile is `tile_bytes` long.
        let tile = unsafe { std::slice::from_raw_parts(self.tile_ptr(t), self.tile_bytes) };
        let f16 = |i: usize| half::f16::from_le_bytes([tile[i], tile[i + 1]]).to_f32();
        let mut out = Vec::with_capacity(self.cols);
        for b in 0..nb {
            let s0 = f16(nb * qr + b * 32 + 2 * r);
            let s1 = if self.kind.scale_sections() == 2 { f16(nb * qr + nb * 32 + b * 32 + 2 * r) } else { 0.0 };
            let rec = &tile[b * qr..(b + 1) * qr];
            for l in 0..QK {
                let byte = |g: usize, i: usize| rec[g * 64 + 4 * r + i];
                let q = match self.kind {
                    PackedKind::Q4_0 | PackedKind::Q4_1 if l < 16 => byte(l / 4, l % 4) & 0x0F,
                    PackedKind::Q4_0 | PackedKind::Q4_1 => byte((l - 16) / 4, l % 4) >> 4,
                    _ => byte(l / 4, l % 4),
                };
                out.push(match self.kind {
                    PackedKind::Q4_0 => s0 * (q as f32 - 8.0),
                    PackedKind::Q4_1 | PackedKind::Q5 => s0 * q as f32 + s1,
                    PackedKind::Q8_0 => s0 * (q as i8) as f32,
                    PackedKind::Q6 => (if l < 16 { s0 } else { s1 }) * (q as f32 - 32.0),
                });
            }
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
        // Each tile runs against every group of a chunk of activation rows while it sits in L1; the chunk's
        // activations stay in L2 across the task's tiles.
        for rows in (0..acts.m).step_by(ROW_CHUNK) {
            let end = (rows + ROW_CHUNK).min(acts.m);
            for tile in tiles.clone() {
                let mut i0 = rows;
                while i0 < end {
                    let g = (end - i0).min(GROUP_ROWS);
                    // SAFETY: tile `tile` of part `p` is this task's only; shapes asserted above; `isa` supported.
                    unsafe { run_group(isa, &parts[p], acts, i0, g, tile..tile + 1, to) };
                    i0 += g;
                }
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

/// The scalar reference kernel (any CPU): per row and block the exact integer dots of the two 16-weight halves,
/// then the scales in f32 (the module docs' formulas).
///
/// # Safety
/// As `run_group` (no ISA requirement).
unsafe fn tiles_scalar<const M: usize>(w: &PackedMatrix, a: &Q8Acts, i0: usize, tiles: Range<usize>, out: OutTiles) {
    let (nb, k, qr, two) = (w.blocks(), w.cols, w.kind.quant_record(), w.kind.scale_sections() == 2);
    let f16 = |p: *const u8| half::f16::from_le_bytes([*p, *p.add(1)]).to_f32();
    for t in tiles {
        let tile = w.tile_ptr(t);
        let scales = tile.add(nb * qr);
        for r in 0..TILE.min(w.rows - t * TILE) {
            let mut acc = [0.0f32; M];
            for b in 0..nb {
                let rec = tile.add(b * qr);
                let s0 = f16(scales.add(b * 32 + 2 * r));
                let s1 = if two { f16(scales.add(nb * 32 + b * 32 + 2 * r)) } else { 0.0 };
                for (i, acc) in acc.iter_mut().enumerate() {
                    let ai = (i0 + i) * nb + b;
                    let x = &a.qs[(i0 + i) * k + b * QK..][..QK];
                    // dot[h]: weights 16h .. 16h + 16.
                    let mut dot = [0i32; 2];
                    for g in 0..qr / 64 {
                        for l in 0..4 {
                            let byte = *rec.add(g * 64 + 4 * r + l);
                            match w.kind {
                                PackedKind::Q4_0 | PackedKind::Q4_1 => {
                                    dot[0] += (byte & 0x0F) as i32 * x[4 * g + l] as i32;
                                    dot[1] += (byte >> 4) as i32 * x[16 + 4 * g + l] as i32;
                                }
                                PackedKind::Q8_0 => dot[g / 4] += byte as i8 as i32 * x[4 * g + l] as i32,
                                PackedKind::Q5 | PackedKind::Q6 => dot[g / 4] += byte as i32 * x[4 * g + l] as i32,
                            }
                        }
                    }
                    let (i, xd) = (dot[0] + dot[1], a.d[ai]);
                    *acc += match w.kind {
                        PackedKind::Q4_0 => s0 * xd * (i - 8 * a.qsum[ai]) as f32,
                        PackedKind::Q4_1 | PackedKind::Q5 => s0 * xd * i as f32 + s1 * a.s[ai],
                        PackedKind::Q8_0 => s0 * xd * i as f32,
                        PackedKind::Q6 => {
                            let lo = (dot[0] - 32 * a.qsum16[2 * ai]) as f32;
                            let hi = (dot[1] - 32 * a.qsum16[2 * ai + 1]) as f32;
                            xd * (s0 * lo + s1 * hi)
                        }
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
