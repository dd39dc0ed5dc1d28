//! The matmuls of one decode step of the default model (SmolLM2-135M: 30 layers of q, k, v, o, gate, up, down in
//! Q4_1 and a Q8_0 LM head), on random weights, timed per matrix kind in both CPU precisions: the kernels alone,
//! without the engine around them, so a kernel change can be measured in seconds. Minimum over `--reps` steps
//! (the machines we run on lose their vCPUs to the hypervisor at random; the minimum is the kernel's speed).
//!
//! `cargo run --release -p pagedllm-kernels --example cpu_decode_matmuls -- [--threads 2] [--rows 1] [--reps 30]`

use std::sync::Arc;
use std::time::Instant;

use pagedllm_kernels::cpu::int8_matmul::{matmul_q8, matmul_q8_row_parts};
use pagedllm_kernels::cpu::matmul::{matmul, matmul_row_parts};
use pagedllm_kernels::cpu::packed_matrix::{matmul_packed_parts, PackedMatrix};
use pagedllm_kernels::cpu::q8_acts::Q8Acts;
use pagedllm_kernels::cpu::team::ThreadTeam;
use pagedllm_kernels::cpu::CpuIsa;
use pagedllm_kernels::quant::GgmlType;
use pagedllm_kernels::tensor::{Storage, WeightMatrix};

/// Random blocks with small finite f16 scales (a random u16 is often NaN or huge).
fn random_matrix(dtype: GgmlType, rows: usize, cols: usize, seed: &mut u64) -> WeightMatrix {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let bytes_len = dtype.row_bytes(cols) * rows;
    let mut bytes: Vec<u8> = (0..bytes_len).map(|_| next() as u8).collect();
    let bb = dtype.block_bytes();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for b in bytes.chunks_exact_mut(bb) {
        b[..2].copy_from_slice(&scale);
        if dtype == GgmlType::Q4_1 {
            b[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
        }
    }
    WeightMatrix::new(dtype, rows, cols, Storage::Owned(Arc::new(bytes))).unwrap()
}

fn main() {
    let (mut threads, mut rows, mut reps, mut layers) = (2usize, 1usize, 30usize, 30usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v: usize = pair.get(1).and_then(|v| v.parse().ok()).expect("flags take a number");
        match pair[0].as_str() {
            "--threads" => threads = v,
            "--rows" => rows = v,
            "--reps" => reps = v,
            "--layers" => layers = v,
            f => panic!("unknown flag {f}"),
        }
    }
    let (h, inter, kv, vocab) = (576, 1536, 192, 49152);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    // Every layer has its own weights, so the step streams them from memory; fused products (qkv, gate_up) as
    // their parts, as the CPU backend keeps them.
    let mut mats: Vec<(&str, Vec<WeightMatrix>)> = Vec::new();
    let mut q41 = |r, c| random_matrix(GgmlType::Q4_1, r, c, &mut seed);
    for _ in 0..layers {
        mats.push(("qkv", vec![q41(h, h), q41(kv, h), q41(kv, h)]));
        mats.push(("o", vec![q41(h, h)]));
        mats.push(("gate_up", vec![q41(inter, h), q41(inter, h)]));
        mats.push(("down", vec![q41(h, inter)]));
    }
    mats.push(("lm_head", vec![random_matrix(GgmlType::Q8_0, vocab, h, &mut seed)]));
    let x: Vec<f32> = (0..rows * inter)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let mut out = vec![0.0f32; rows * vocab];
    let team = ThreadTeam::new(threads).unwrap();
    let isa = CpuIsa::detect();
    let mut q8 = Q8Acts::default();
    println!("isa {} threads {threads} rows {rows} reps {reps}", isa.name());
    let packed: Vec<Vec<PackedMatrix>> = mats.iter().map(|(_, p)| p.iter().map(PackedMatrix::pack).collect()).collect();
    for mode in ["exact", "fast", "packed"] {
        let fast = mode != "exact";
        let mut best: std::collections::BTreeMap<&str, f64> = Default::default();
        let mut best_step = f64::MAX;
        for _ in 0..reps {
            let mut per: std::collections::BTreeMap<&str, f64> = Default::default();
            let t_step = Instant::now();
            team.install(|| {
                for (mi, (name, parts)) in mats.iter().enumerate() {
                    let cols = parts[0].cols;
                    let xs = &x[..rows * cols];
                    let t = Instant::now();
                    if fast {
                        q8.quantize(xs, rows, cols);
                    }
                    if mode == "packed" {
                        let o = &mut out[..rows * parts.iter().map(|w| w.rows).sum::<usize>()];
                        matmul_packed_parts(&q8, &packed[mi], o, isa);
                    } else if rows == 1 {
                        let o = &mut out[..parts.iter().map(|w| w.rows).sum::<usize>()];
                        if fast {
                            matmul_q8_row_parts(&q8, parts, o, isa);
                        } else {
                            matmul_row_parts(xs, parts, o);
                        }
                    } else {
                        for w in parts {
                            let o = &mut out[..rows * w.rows];
                            if fast {
                                matmul_q8(&q8, w, o, isa);
                            } else {
                                matmul(xs, rows, w, o);
                            }
                        }
                    }
                    *per.entry(name).or_default() += t.elapsed().as_secs_f64();
                }
            });
            team.rest();
            best_step = best_step.min(t_step.elapsed().as_secs_f64());
            for (k, v) in per {
                let e = best.entry(k).or_insert(f64::MAX);
                *e = e.min(v);
            }
        }
        let detail: Vec<String> = best.iter().map(|(k, v)| format!("{k} {:.2}", v * 1e3)).collect();
        println!(
            "{}: step {:.2} ms (min of {reps}); per kind ms: {}",
            mode,
            best_step * 1e3,
            detail.join(", ")
        );
    }
}
