//! Packed-matmul tests: the layout rebuilds every file block, every x86 path agrees with the packed scalar
//! reference and with the file-layout int8 matmul (to f32 rounding; a lost integer bit would be far larger), and
//! the fused-parts product equals its parts one by one.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::cpu::int8_matmul::matmul_q8;
use crate::cpu::team::ThreadTeam;
use crate::quant::testing::encode;
use crate::tensor::Storage;

const TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Shapes per type: rows not a multiple of 16 (a partial last tile, and one under 8 for the 8-lane halves).
fn shapes(dtype: GgmlType) -> &'static [(usize, usize)] {
    if dtype.block_size() == 256 {
        &[(5, 256), (37, 512), (20, 256)]
    } else {
        &[(5, 32), (37, 96), (16, 64), (150, 288)]
    }
}

/// The types the file-layout int8 matmul also runs (a second reference).
fn native(dtype: GgmlType) -> bool {
    matches!(dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// The types whose tiles hold the file's weights exactly (the K-quants round their scale products to f16).
fn exact_tiles(dtype: GgmlType) -> bool {
    dtype.block_size() == 32
}

fn packed_paths() -> Vec<CpuIsa> {
    let mut run = vec![CpuIsa::Scalar];
    for isa in [CpuIsa::Avx2, CpuIsa::AvxVnni, CpuIsa::Avx512Vnni] {
        if isa.is_supported() && packs_on(isa) {
            run.push(isa);
        } else {
            println!("skipping the packed {} kernels: not on this CPU", isa.name());
        }
    }
    run
}

/// The bytes of a block that hold quants (the rest are scales).
fn quant_bytes(dtype: GgmlType) -> std::ops::Range<usize> {
    let bb = dtype.block_bytes();
    match dtype {
        GgmlType::Q8_0 => bb - 32..bb,
        GgmlType::Q5_0 | GgmlType::Q5_1 => bb - 20..bb,
        GgmlType::Q4K => 16..bb,
        GgmlType::Q5K => 16..bb,
        GgmlType::Q6K => 0..192,
        _ => bb - 16..bb,
    }
}

/// Random weights; with `extremes`, every quant byte at its largest (0xFF: nibbles 15, Q5 quants 31, Q6_K 63,
/// Q8_0 -1) or 0x80 (Q8_0's -128), the cases that would overflow a 16-bit or signed-byte intermediate.
fn weights(dtype: GgmlType, rows: usize, cols: usize, extremes: bool, rng: &mut ChaCha8Rng) -> WeightMatrix {
    let wf: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut bytes = encode(dtype, &wf, rng.random());
    if extremes {
        for block in bytes.chunks_exact_mut(dtype.block_bytes()) {
            let fill = if rng.random::<bool>() { 0xFF } else { 0x80 };
            block[quant_bytes(dtype)].fill(fill);
        }
    }
    WeightMatrix::new(dtype, rows, cols, Storage::Owned(Arc::new(bytes))).unwrap()
}

fn activations(m: usize, k: usize, extremes: bool, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..m * k)
        .map(|_| if extremes { if rng.random::<bool>() { 1.0 } else { -1.0 } } else { rng.random_range(-1.0f32..1.0) })
        .collect()
}

fn packed(isa: CpuIsa, a: &Q8Acts, w: &PackedMatrix) -> Vec<f32> {
    let mut out = vec![f32::NAN; a.m * w.rows];
    matmul_packed(a, w, &mut out, isa);
    out
}

/// The tiles hold the file's weights: exactly for the 32-weight types, to the f16 rounding of the sub-block
/// scale products for the K-quants.
#[test]
fn the_tiles_hold_the_file_weights() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for dtype in TYPES {
        for &(rows, cols) in shapes(dtype) {
            let w = weights(dtype, rows, cols, false, &mut rng);
            let p = PackedMatrix::pack(&w);
            assert_eq!(p.tiles(), rows.div_ceil(TILE));
            let mut file = vec![0.0f32; cols];
            for r in 0..rows {
                crate::quant::dequantize_row(dtype, w.row(r), &mut file);
                let tiles = p.dequantize_row(r);
                // A K-quant weight is a difference of two rounded products (`d·sc·q − dmin·m`): bound by the row.
                let row_max = file.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (c, (t, f)) in tiles.iter().zip(&file).enumerate() {
                    let tol = if exact_tiles(dtype) { 0.0 } else { 2f32.powi(-10) * row_max };
                    assert!((t - f).abs() <= tol, "{dtype:?} row {r} col {c}: tiles {t}, file {f}");
                }
            }
        }
    }
}

#[test]
fn every_path_matches_the_references() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let paths = packed_paths();
    for dtype in TYPES {
        for &(n, k) in shapes(dtype) {
            for extremes in [false, true] {
                let w = weights(dtype, n, k, extremes, &mut rng);
                let p = PackedMatrix::pack(&w);
                let tile_weights: Vec<Vec<f32>> = (0..n).map(|r| p.dequantize_row(r)).collect();
                for m in [1usize, 2, 3, 4, 5, 9] {
                    let mut a = Q8Acts::default();
                    a.quantize(&activations(m, k, extremes, &mut rng), m, k);
                    // The tiles' weights times the int8 activations, in f64.
                    let mut want = vec![0.0f32; m * n];
                    for i in 0..m {
                        for (r, wr) in tile_weights.iter().enumerate() {
                            let x = |c: usize| a.d[i * (k / 32) + c / 32] as f64 * a.qs[i * k + c] as f64;
                            want[i * n + r] = (0..k).map(|c| wr[c] as f64 * x(c)).sum::<f64>() as f32;
                        }
                    }
                    let mut file_layout = vec![0.0f32; m * n];
                    if native(dtype) {
                        matmul_q8(&a, &w, &mut file_layout, CpuIsa::Scalar);
                    }
                    // The scaled sums differ only in f32 order: bound by the size of the terms.
                    let wmax = tile_weights.iter().flatten().fold(0.0f32, |s, v| s.max(v.abs()));
                    let tol = 1e-5 * k as f32 * 127.0 * wmax * a.d.iter().fold(0.0f32, |s, d| s.max(*d)) + 1e-6;
                    for &isa in &paths {
                        let got = packed(isa, &a, &p);
                        for (idx, g) in got.iter().enumerate() {
                            let e = want[idx];
                            assert!(
                                (g - e).abs() <= tol,
                                "{} {dtype:?} [{n}x{k}] m={m} extremes={extremes} at {idx}: {g} vs {e}",
                                isa.name()
                            );
                            if native(dtype) {
                                let f = file_layout[idx];
                                assert!((g - f).abs() <= tol, "{} {dtype:?} at {idx}: {g} vs file layout {f}", isa.name());
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn parts_equal_their_products_one_by_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let team = ThreadTeam::new(3).unwrap();
    let k = 160;
    let parts: Vec<PackedMatrix> = [(GgmlType::Q4_1, 77), (GgmlType::Q8_0, 5), (GgmlType::Q4_0, 301)]
        .into_iter()
        .map(|(t, n)| PackedMatrix::pack(&weights(t, n, k, false, &mut rng)))
        .collect();
    let total: usize = parts.iter().map(|w| w.rows).sum();
    for m in [1usize, 6] {
        let mut a = Q8Acts::default();
        a.quantize(&activations(m, k, false, &mut rng), m, k);
        for isa in packed_paths() {
            let alone: Vec<Vec<f32>> = parts.iter().map(|w| packed(isa, &a, w)).collect();
            let mut want = Vec::with_capacity(m * total);
            for i in 0..m {
                for (w, o) in parts.iter().zip(&alone) {
                    want.extend_from_slice(&o[i * w.rows..(i + 1) * w.rows]);
                }
            }
            let mut got = vec![f32::NAN; m * total];
            team.install(|| matmul_packed_parts(&a, &parts, &mut got, isa));
            assert_eq!(got, want, "{} m={m}", isa.name());
        }
    }
}

#[test]
fn nan_activations_poison_their_outputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let p = PackedMatrix::pack(&weights(GgmlType::Q4_1, 20, 64, false, &mut rng));
    let mut x = activations(2, 64, false, &mut rng);
    x[64 + 40] = f32::NAN;
    let mut a = Q8Acts::default();
    a.quantize(&x, 2, 64);
    for isa in packed_paths() {
        let out = packed(isa, &a, &p);
        assert!(out[..20].iter().all(|v| v.is_finite()), "{}", isa.name());
        assert!(out[20..].iter().all(|v| v.is_nan()), "{}", isa.name());
    }
}
