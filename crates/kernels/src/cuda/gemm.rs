//! GEMMs through cuBLASLt: `y[T, N] = x[T, K] * W[N, K]^T` with row-major activations and HF-layout weights,
//! bf16, f16 or f32 inputs (the decoder's `ActivationDtype`), f32 accumulation (true f32 products for f32
//! inputs: the compute type is CUBLAS_COMPUTE_32F, never the TF32 one), output in the input type or f32.
//!
//! `PAGEDLLM_CUDA_GEMV=1` sends products of `T <= GEMV_MAX_T` tokens to our own `gemv` kernel instead. It is
//! off by default because it measured slower: Llama-3-8B shape, H200, batch-1 decode 173.9 tok/s with it vs
//! 186.9 with cuBLASLt (scripts/gpu/device-run.sh measure, 2026-11-21); it stays as the starting point for a
//! fused norm+GEMV decode path.
//!
//! Row-major `y[T, N]` is column-major `y^T[N, T] = W * x^T`, so cuBLAS sees A = W (transposed), B = x. Each
//! distinct (N, T, K, output type) gets its descriptors and heuristic-chosen algorithm once, then replays
//! them: no per-step heuristic queries (and nothing the host must redo inside a captured CUDA graph).

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;

use super::device::{Arg, DeviceBuffer, Gpu};
use super::error::CudaError;
use super::ActivationDtype;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OutType {
    /// The activation type (as the inputs).
    Act,
    F32,
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

/// Largest token count the gemv kernel takes (its GEMV_MAX_T).
const GEMV_MAX_T: usize = 4;

pub(crate) struct Gemm {
    use_gemv: bool,
    /// Workspace bytes offered to cuBLASLt's heuristic for matmuls of at most `GEMV_MAX_T` rows:
    /// `PAGEDLLM_CUDA_SMALL_T_WORKSPACE` (default: all of it). 0 rules out the split-K algorithms that reduce
    /// through the workspace, whose extra reduce launch costs ~3.5 us per o / down projection at one decode (ncu,
    /// bench/gpu-notes.md): an A/B switch, not yet measured.
    small_t_workspace: usize,
    /// cuBLASLt's type of inputs (and of `OutType::Act` outputs).
    input_type: sys::cudaDataType_t,
    handle: sys::cublasLtHandle_t,
    workspace: DeviceBuffer<u8>,
    plans: HashMap<(usize, usize, usize, OutType), Plan>,
}

// SAFETY: the handle and descriptors are used from one thread at a time (the engine's step loop).
unsafe impl Send for Gemm {}

fn blas_err(context: &str) -> impl FnOnce(cudarc::cublaslt::result::CublasError) -> CudaError + '_ {
    move |e| CudaError::Blas {
        context: context.to_string(),
        message: format!("{e:?}"),
    }
}

/// cuBLASLt's recommended workspace on Hopper (4 MiB suffices before it).
const WORKSPACE_BYTES: usize = 32 << 20;

impl Gemm {
    pub fn new(dtype: ActivationDtype) -> Result<Self, CudaError> {
        let handle = lt::create_handle().map_err(blas_err("creating the cuBLASLt handle"))?;
        let input_type = match dtype {
            ActivationDtype::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
            ActivationDtype::F16 => sys::cudaDataType_t::CUDA_R_16F,
            ActivationDtype::F32 => sys::cudaDataType_t::CUDA_R_32F,
        };
        Ok(Self {
            // The gemv kernel is bf16 only.
            use_gemv: dtype == ActivationDtype::Bf16 && std::env::var("PAGEDLLM_CUDA_GEMV").is_ok_and(|v| v == "1"),
            small_t_workspace: std::env::var("PAGEDLLM_CUDA_SMALL_T_WORKSPACE")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .map_or(WORKSPACE_BYTES, |b| b.min(WORKSPACE_BYTES)),
            input_type,
            handle,
            workspace: DeviceBuffer::alloc(WORKSPACE_BYTES, "the cuBLASLt workspace")?,
            plans: HashMap::new(),
        })
    }

    fn plan(&mut self, n: usize, t: usize, k: usize, out: OutType) -> Result<&Plan, CudaError> {
        let key = (n, t, k, out);
        if !self.plans.contains_key(&key) {
            let ctx = "planning a matmul";
            let input = self.input_type;
            let out_ty = match out {
                OutType::Act => input,
                OutType::F32 => sys::cudaDataType_t::CUDA_R_32F,
            };
            // SAFETY: descriptor calls with valid arguments; each created object is owned by the Plan.
            let plan = unsafe {
                let desc = lt::create_matmul_desc(
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cudaDataType_t::CUDA_R_32F,
                )
                .map_err(blas_err(ctx))?;
                let trans: i32 = 1;
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    &trans as *const i32 as *const c_void,
                    4,
                )
                .map_err(blas_err(ctx))?;
                // A = W: column-major [K, N] (ld K), used transposed; B = x: column-major [K, T]; C: [N, T].
                let a = lt::create_matrix_layout(input, k as u64, n as u64, k as i64).map_err(blas_err(ctx))?;
                let b = lt::create_matrix_layout(input, k as u64, t as u64, k as i64).map_err(blas_err(ctx))?;
                let c = lt::create_matrix_layout(out_ty, n as u64, t as u64, n as i64).map_err(blas_err(ctx))?;
                let pref = lt::create_matmul_pref().map_err(blas_err(ctx))?;
                let ws = if t <= GEMV_MAX_T { self.small_t_workspace } else { WORKSPACE_BYTES };
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const usize as *const c_void,
                    std::mem::size_of::<usize>(),
                )
                .map_err(blas_err(ctx))?;
                let heuristic = lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref);
                let _ = lt::destroy_matmul_pref(pref);
                let heuristic = heuristic.map_err(|e| CudaError::Blas {
                    context: format!("finding a {input:?} matmul algorithm for [{t} x {k}] x [{n} x {k}]^T"),
                    message: format!("{e:?}"),
                })?;
                Plan {
                    desc,
                    a,
                    b,
                    c,
                    algo: heuristic.algo,
                }
            };
            self.plans.insert(key, plan);
        }
        Ok(&self.plans[&key])
    }

    /// `y[t, n] = x[t, k] * w[n, k]^T` on the GPU's stream. Pointers are device addresses.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        gpu: &Gpu,
        x: u64,
        w: u64,
        y: u64,
        t: usize,
        n: usize,
        k: usize,
        out: OutType,
    ) -> Result<(), CudaError> {
        if t == 0 {
            return Ok(());
        }
        if self.use_gemv && t <= GEMV_MAX_T && k % 8 == 0 {
            let kernel = match out {
                OutType::Act => "gemv_bf16",
                OutType::F32 => "gemv_f32",
            };
            const WARPS: usize = 8; // GEMV_WARPS: one output row per warp
            return gpu.launch(
                kernel,
                (n.div_ceil(WARPS) as u32, 1, 1),
                (WARPS * 32) as u32,
                &[
                    Arg::Ptr(x),
                    Arg::Ptr(w),
                    Arg::Ptr(y),
                    Arg::I32(t as i32),
                    Arg::I32(n as i32),
                    Arg::I32(k as i32),
                ],
            );
        }
        let handle = self.handle;
        let (ws_ptr, ws_len) = (self.workspace.ptr(), self.workspace.len());
        let plan = self.plan(n, t, k, out)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: x, w, y hold [t, k], [n, k], [t, n] elements (the decoder sizes its buffers for them).
        unsafe {
            lt::matmul(
                handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                plan.a,
                x as *const c_void,
                plan.b,
                y as *const c_void,
                plan.c,
                y as *mut c_void,
                plan.c,
                &plan.algo,
                ws_ptr as *mut c_void,
                ws_len,
                gpu.cu_stream() as *mut _,
            )
        }
        .map_err(|e| CudaError::Blas {
            context: format!("16-bit matmul [{t} x {k}] x [{n} x {k}]^T"),
            message: format!("{e:?}"),
        })
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // SAFETY: each object was created once and is destroyed once; teardown errors cannot be acted on.
        unsafe {
            for (_, p) in self.plans.drain() {
                let _ = lt::destroy_matrix_layout(p.a);
                let _ = lt::destroy_matrix_layout(p.b);
                let _ = lt::destroy_matrix_layout(p.c);
                let _ = lt::destroy_matmul_desc(p.desc);
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
