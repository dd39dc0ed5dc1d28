//! `CpuIsa`: which integer-dot-product kernels the running CPU gets, detected once at start-up, and
//! `CpuPrecision`: whether the quantized matmuls use them (`fast`) or keep f32 activations (`exact`).
//!
//! One binary serves every CPU of a platform: nothing is compiled with `-C target-cpu`; each SIMD kernel is
//! compiled inside a `#[target_feature]` function and picked here at run time (llama.cpp's `ggml-cpu` builds one
//! variant per ISA level and picks at load; we pick per call from the cached answer). The levels are those of
//! llama.cpp's x86 / Arm quant dot kernels: AVX-512 VNNI (`vpdpbusd`), AVX-VNNI (the VEX form of the same
//! instruction), AVX2 (`vpmaddubsw` + `vpmaddwd`), Arm NEON with `dotprod` (`sdot`), and the scalar reference.

use std::sync::OnceLock;

/// The kernel family the int8 (fast-mode) matmuls use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuIsa {
    /// AVX-512 F/BW/VL + VNNI (with AVX2, FMA, F16C): 256-bit `vpdpbusd` (EVEX form).
    Avx512Vnni,
    /// AVX-VNNI (Alder Lake and later, Zen 5): 256-bit `vpdpbusd` (VEX form).
    AvxVnni,
    /// AVX2 + FMA + F16C: `vpmaddubsw` then `vpmaddwd` to 32-bit sums.
    Avx2,
    /// Arm NEON with the dot-product extension: `sdot`.
    NeonDotprod,
    /// No SIMD kernel: the portable reference loops.
    Scalar,
}

impl CpuIsa {
    /// Every level, best first.
    pub const ALL: [CpuIsa; 5] = [Self::Avx512Vnni, Self::AvxVnni, Self::Avx2, Self::NeonDotprod, Self::Scalar];

    /// The best level of the running CPU (detected on the first call, then cached), or the level named by
    /// `PAGEDLLM_CPU_ISA` (`avx2`, `avx-vnni`, `scalar`, ...) if this CPU runs it: one machine can then measure
    /// every kernel family it supports (as oneDNN's `ONEDNN_MAX_CPU_ISA`). A name it cannot run is reported on
    /// stderr and the detected level is used.
    pub fn detect() -> CpuIsa {
        static ISA: OnceLock<CpuIsa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Self::best_supported();
            let Ok(want) = std::env::var("PAGEDLLM_CPU_ISA") else {
                return best;
            };
            match Self::ALL.into_iter().find(|isa| isa.name() == want.trim()) {
                Some(isa) if isa.is_supported() => isa,
                _ => {
                    eprintln!(
                        "pagedllm: PAGEDLLM_CPU_ISA={want:?} is not a kernel family this CPU runs; using {}",
                        best.name()
                    );
                    best
                }
            }
        })
    }

    /// The best level this CPU supports.
    pub fn best_supported() -> CpuIsa {
        Self::ALL.into_iter().find(|isa| isa.is_supported()).unwrap_or(Self::Scalar)
    }

    /// Whether this CPU can run this level's kernels (tests use it to run every available path, not only the best).
    pub fn is_supported(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => avx2_fma_f16c(),
            #[cfg(target_arch = "x86_64")]
            Self::AvxVnni => avx2_fma_f16c() && std::is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                avx2_fma_f16c()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Self::NeonDotprod => {
                std::arch::is_aarch64_feature_detected!("neon") && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// A short name for logs and `ModelInfo` (`avx512-vnni`, `avx-vnni`, `avx2`, `neon-dotprod`, `scalar`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::AvxVnni => "avx-vnni",
            Self::Avx2 => "avx2",
            Self::NeonDotprod => "neon-dotprod",
            Self::Scalar => "scalar",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma_f16c() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
}

/// The CPU backend's numeric mode: how it multiplies activations with quantized (Q4_0 / Q4_1 / Q8_0) weights,
/// and what its KV cache stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CpuPrecision {
    /// Activations quantized to int8 per 32 once per matmul input, integer dot products, scales in f32
    /// (llama.cpp's scheme), and an f16 KV cache (llama.cpp's default); on x86 the weights are packed in 16-row
    /// tiles (`packed_matrix`). The default: on the default model it ranks 96.3% of exact mode's greedy tokens
    /// first on the same context (`crates/engine/tests/cpu_precision.rs`).
    #[default]
    Fast,
    /// f32 activations, weights dequantized inside f32 FMAs, f32 KV cache: the reference mode the HF-parity
    /// tests use.
    Exact,
}

impl CpuPrecision {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fast" => Ok(Self::Fast),
            "exact" => Ok(Self::Exact),
            _ => Err(format!("unknown CPU precision {s:?}; expected fast or exact")),
        }
    }

    /// The KV cache's element type in this mode.
    pub fn kv_dtype(self) -> super::kv_cache::KvDtype {
        match self {
            Self::Fast => super::kv_cache::KvDtype::F16,
            Self::Exact => super::kv_cache::KvDtype::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Exact => "exact",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_level_is_supported_and_stable() {
        let isa = CpuIsa::detect();
        assert!(isa.is_supported());
        assert_eq!(CpuIsa::detect(), isa);
        // The best supported level is the one detected, unless a supported one was asked for.
        if std::env::var_os("PAGEDLLM_CPU_ISA").is_none() {
            assert_eq!(CpuIsa::best_supported(), isa);
        }
        println!("detected CPU ISA: {}", isa.name());
    }

    #[test]
    fn precision_strings() {
        assert_eq!(CpuPrecision::parse("fast"), Ok(CpuPrecision::Fast));
        assert_eq!(CpuPrecision::parse(" EXACT "), Ok(CpuPrecision::Exact));
        assert!(CpuPrecision::parse("int4").unwrap_err().contains("fast or exact"));
        assert_eq!(CpuPrecision::default(), CpuPrecision::Fast);
    }
}
