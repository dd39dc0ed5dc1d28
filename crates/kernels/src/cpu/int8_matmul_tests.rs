//! Fast-mode matmul tests: every ISA path this CPU supports against the scalar reference (integer sums bit for
//! bit, scaled results to f32 rounding), and the fast result against the exact f32-activation matmul.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::cpu::matmul::matmul;
use crate::quant::testing::encode;
use crate::tensor::Storage;

const TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];

/// The SIMD paths, each with whether it can run here (printed when skipped, so a log says what was not run).
fn simd_paths() -> Vec<CpuIsa> {
    let mut run = Vec::new();
    for isa in [CpuIsa::Avx2, CpuIsa::AvxVnni, CpuIsa::Avx512Vnni, CpuIsa::NeonDotprod] {
        if isa.is_supported() {
            run.push(isa);
        } else {
            println!("skipping the {} kernels: this CPU does not have them", isa.name());
        }
    }
    run
}

fn weights(dtype: GgmlType, rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> WeightMatrix {
    let wf: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let bytes = encode(dtype, &wf, rng.random());
    WeightMatrix::new(dtype, rows, cols, Storage::Owned(Arc::new(bytes))).unwrap()
}

/// Activations like a transformer's: mostly small, with a few large-magnitude outlier channels.
fn activations(m: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let outliers: Vec<usize> = (0..3).map(|_| rng.random_range(0..k)).collect();
    let mut x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    for row in x.chunks_exact_mut(k) {
        for &c in &outliers {
            row[c] = rng.random_range(20.0f32..80.0) * if rng.random::<bool>() { 1.0 } else { -1.0 };
        }
    }
    x
}

fn run(isa: CpuIsa, x: &[f32], m: usize, w: &WeightMatrix) -> Vec<f32> {
    let mut a = Q8Acts::default();
    a.quantize(x, m, w.cols);
    let mut out = vec![f32::NAN; m * w.rows];
    matmul_q8(&a, w, &mut out, isa);
    out
}

#[test]
fn simd_integer_dots_are_bit_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for isa in simd_paths() {
        for dtype in TYPES {
            for case in 0..2000 {
                let mut b: Vec<u8> = (0..dtype.block_bytes()).map(|_| rng.random()).collect();
                let mut x: Vec<i8> = (0..32).map(|_| rng.random_range(-127i8..=127)).collect();
                if case % 3 == 0 {
                    // The extremes: every quant at its largest magnitude (Q8_0's -128 included), activations ±127.
                    let hi = if rng.random::<bool>() { 0xFF } else { 0x80 };
                    b[dtype.block_bytes() - 32.min(dtype.block_bytes() - 2)..].fill(hi);
                    x.iter_mut().for_each(|v| *v = if rng.random::<bool>() { 127 } else { -127 });
                }
                let want = block_int_dot(dtype, &b, &x);
                // SAFETY: `isa` is supported (simd_paths).
                let got = unsafe {
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        CpuIsa::Avx2 => crate::cpu::int8_x86::probe::avx2(dtype, &b, &x),
                        #[cfg(target_arch = "x86_64")]
                        CpuIsa::AvxVnni => crate::cpu::int8_x86::probe::avx_vnni(dtype, &b, &x),
                        #[cfg(target_arch = "x86_64")]
                        CpuIsa::Avx512Vnni => crate::cpu::int8_x86::probe::avx512_vnni(dtype, &b, &x),
                        #[cfg(target_arch = "aarch64")]
                        CpuIsa::NeonDotprod => crate::cpu::int8_neon::probe(dtype, &b, &x),
                        _ => {
                            println!("{}: no integer probe (the kernels are the scalar reference)", isa.name());
                            want
                        }
                    }
                };
                assert_eq!(got, want, "{} {dtype:?} case {case}: block {b:?} x {x:?}", isa.name());
            }
        }
    }
}

#[test]
fn simd_kernels_match_the_scalar_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let paths = simd_paths();
    for dtype in TYPES {
        // K not a multiple of 64/256 (two blocks, one AVX-512 register) but of 32; N spanning several sub-tiles.
        for (k, n) in [(32usize, 5usize), (96, 37), (288, 150), (544, 70)] {
            let w = weights(dtype, n, k, &mut rng);
            for m in [1usize, 3, 16, 64] {
                let x = activations(m, k, &mut rng);
                let want = run(CpuIsa::Scalar, &x, m, &w);
                // The scaled sums differ only in f32 accumulation order: bound by the magnitude of the terms.
                let mut a = Q8Acts::default();
                a.quantize(&x, m, k);
                let scale: f32 = x.iter().map(|v| v.abs()).fold(0.0, f32::max) * k as f32 * 2.0;
                for &isa in &paths {
                    let got = run(isa, &x, m, &w);
                    for (idx, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-6 * scale,
                            "{} {dtype:?} [{n}x{k}] m={m} at {idx}: {g} vs scalar {e}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn fast_is_close_to_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for dtype in TYPES {
        let (n, k) = (64, 576);
        let w = weights(dtype, n, k, &mut rng);
        for (m, outliers) in [(1usize, false), (16, false), (3, true), (64, true)] {
            let x = if outliers {
                activations(m, k, &mut rng)
            } else {
                (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect()
            };
            let fast = run(CpuIsa::detect(), &x, m, &w);
            let mut exact = vec![0.0f32; m * n];
            matmul(&x, m, &w, &mut exact);
            // Relative error of each output row: int8 activations lose ~1/254 of each block's range.
            for i in 0..m {
                let (f, e) = (&fast[i * n..(i + 1) * n], &exact[i * n..(i + 1) * n]);
                let err: f32 = f.iter().zip(e).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
                let norm: f32 = e.iter().map(|b| b * b).sum::<f32>().sqrt();
                let rel = err / norm;
                assert!(rel < 0.02, "{dtype:?} m={m} outliers={outliers} row {i}: relative error {rel}");
            }
        }
    }
}

#[test]
fn nan_activations_poison_their_outputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let w = weights(GgmlType::Q4_1, 20, 64, &mut rng);
    let mut x = activations(2, 64, &mut rng);
    x[64 + 40] = f32::NAN;
    for isa in std::iter::once(CpuIsa::Scalar).chain(simd_paths()) {
        let out = run(isa, &x, 2, &w);
        assert!(out[..20].iter().all(|v| v.is_finite()), "{}", isa.name());
        assert!(out[20..].iter().all(|v| v.is_nan()), "{}", isa.name());
    }
}

#[test]
fn shapes_it_does_not_take() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    assert!(!supports(&weights(GgmlType::Q4K, 2, 256, &mut rng)));
    assert!(!supports(&WeightMatrix::from_f32(2, 32, &[0.0; 64])));
    assert!(supports(&weights(GgmlType::Q8_0, 2, 64, &mut rng)));
    // No rows: nothing to write, no panic.
    let w = weights(GgmlType::Q4_0, 4, 64, &mut rng);
    let a = Q8Acts { k: 64, ..Q8Acts::default() };
    matmul_q8(&a, &w, &mut [], CpuIsa::Scalar);
}

/// The one-op products of a fused weight's parts (q, k, v; gate, up) equal the parts multiplied one by one,
/// bit for bit (the same kernels over the same rows), in both precisions, on a thread team and without one,
/// with parts of mixed types as a Q4_K_M-style file has them.
#[test]
fn row_parts_equal_their_parts_one_by_one() {
    use crate::cpu::matmul::matmul_row_parts;
    use crate::cpu::team::ThreadTeam;
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let team = ThreadTeam::new(3).unwrap();
    let k = 160;
    let parts = vec![
        weights(GgmlType::Q4_1, 77, k, &mut rng),
        weights(GgmlType::Q8_0, 5, k, &mut rng),
        weights(GgmlType::Q4_0, 301, k, &mut rng),
    ];
    let x = activations(1, k, &mut rng);
    let total: usize = parts.iter().map(|w| w.rows).sum();
    let mut a = Q8Acts::default();
    a.quantize(&x, 1, k);
    for on_team in [false, true] {
        let within = |f: &mut dyn FnMut()| if on_team { team.install(f) } else { f() };
        for isa in std::iter::once(CpuIsa::Scalar).chain(simd_paths()) {
            let want: Vec<f32> = parts.iter().flat_map(|w| run(isa, &x, 1, w)).collect();
            let mut got = vec![f32::NAN; total];
            within(&mut || matmul_q8_row_parts(&a, &parts, &mut got, isa));
            assert_eq!(got, want, "fast {} on_team={on_team}", isa.name());
        }
        let mut want = vec![f32::NAN; total];
        let mut off = 0;
        for w in &parts {
            matmul(&x, 1, w, &mut want[off..off + w.rows]);
            off += w.rows;
        }
        let mut got = vec![f32::NAN; total];
        within(&mut || matmul_row_parts(&x, &parts, &mut got));
        assert_eq!(got, want, "exact on_team={on_team}");
    }
}
