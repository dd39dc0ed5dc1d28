//! One GPU as the decoder uses it: the context, ONE stream (every kernel, copy and GEMM is ordered on it, so
//! no per-buffer event tracking is needed), the loaded kernel functions, and raw device buffers.
//!
//! Buffers are plain `cuMemAlloc` allocations addressed by raw device pointers rather than cudarc's
//! `CudaSlice`: the decoder slices them freely (layers, rows, heads), and cudarc's per-slice event tracking
//! would add host work per launch for a single-stream program. Every launch is checked.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaStream, DriverError};
use cudarc::nvrtc::Ptx;

use super::error::CudaError;
use super::ptx::MODULES;
use super::ActivationDtype;

pub(crate) fn driver_err(context: impl Into<String>) -> impl FnOnce(DriverError) -> CudaError {
    let context = context.into();
    move |e| CudaError::Driver {
        context,
        message: e.to_string(),
    }
}

/// An owned device allocation of `len` elements of `T` (freed on drop).
pub(crate) struct DeviceBuffer<T> {
    ptr: sys::CUdeviceptr,
    len: usize,
    _ty: std::marker::PhantomData<T>,
}

// SAFETY: the allocation belongs to the context, not to a thread; the decoder binds the context before use.
unsafe impl<T> Send for DeviceBuffer<T> {}

impl<T> DeviceBuffer<T> {
    pub fn alloc(len: usize, what: &str) -> Result<Self, CudaError> {
        let bytes = (len.max(1)) * std::mem::size_of::<T>();
        // SAFETY: plain allocation; the context is bound to this thread by `Gpu::bind`.
        let ptr = unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                CudaError::OutOfMemory(format!(
                    "allocating {what} ({:.2} GiB)",
                    bytes as f64 / (1u64 << 30) as f64
                ))
            } else {
                driver_err(format!("allocating {what}"))(e)
            }
        })?;
        Ok(Self {
            ptr,
            len,
            _ty: std::marker::PhantomData,
        })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// Device address of element `i`.
    pub fn at(&self, i: usize) -> u64 {
        debug_assert!(i <= self.len);
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync and freed once; errors at teardown cannot be acted on.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// An allocation of `len` values of the decoder's float type (2 or 4 bytes each, per `ActivationDtype`):
/// weights, activations and the KV cache, whose element size is known only at run time.
pub(crate) struct FloatBuffer {
    buf: DeviceBuffer<u8>,
    elem: usize,
}

impl FloatBuffer {
    pub fn alloc(len: usize, dtype: ActivationDtype, what: &str) -> Result<Self, CudaError> {
        Ok(Self {
            buf: DeviceBuffer::alloc(len * dtype.bytes(), what)?,
            elem: dtype.bytes(),
        })
    }
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
    /// Values held.
    pub fn len(&self) -> usize {
        self.buf.len() / self.elem
    }
    /// Bytes per value.
    pub fn value_bytes(&self) -> usize {
        self.elem
    }
    /// Device address of value `i`.
    pub fn at(&self, i: usize) -> u64 {
        self.buf.at(i * self.elem)
    }
    pub fn ptr(&self) -> u64 {
        self.buf.ptr()
    }
}

/// The context, the stream and the kernels.
pub(crate) struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    functions: HashMap<String, CudaFunction>,
}

/// Kernel arguments are passed as pointers to their values (cuLaunchKernel's convention).
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
}

impl Gpu {
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: only probes for the shared libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "libcuda.so (the NVIDIA driver) was not found; add its folder to LD_LIBRARY_PATH".into(),
            ));
        }
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "libcublasLt.so.13 (CUDA 13 cuBLAS) was not found; add the CUDA lib64 folder to LD_LIBRARY_PATH".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(driver_err("counting devices"))?;
        if ordinal as i32 >= count {
            return Err(CudaError::Unavailable(format!(
                "cuda:{ordinal} was asked for but this machine has {count} CUDA device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err(format!("opening cuda:{ordinal}")))?;
        // One stream, used for everything: no cross-stream events needed.
        // SAFETY: we never use cudarc's slices across streams.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("creating a stream"))?;
        let name = ctx.name().map_err(driver_err("reading the device name"))?;
        let major = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(driver_err("reading the compute capability"))?;
        let minor = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
            .map_err(driver_err("reading the compute capability"))?;
        if major < 8 {
            return Err(CudaError::Unsupported(format!(
                "{name} has compute capability {major}.{minor}; the bf16 kernels need 8.0 (Ampere) or newer"
            )));
        }
        let arch = (major * 10 + minor) as u32;
        let mut functions = HashMap::new();
        for (module, builds) in MODULES {
            // The newest PTX the device can run (PTX is JIT-compiled forward, never backward).
            let (_, ptx) = builds
                .iter()
                .filter(|(a, _)| *a <= arch)
                .max_by_key(|(a, _)| *a)
                .expect("sm_80 PTX is always built");
            let m = ctx
                .load_module(Ptx::from_src(*ptx))
                .map_err(driver_err(format!("loading the {module} kernels")))?;
            for name in entry_points(ptx) {
                let f = m
                    .load_function(&name)
                    .map_err(driver_err(format!("loading kernel {name}")))?;
                functions.insert(name, f);
            }
        }
        Ok(Self {
            ctx,
            stream,
            name,
            functions,
        })
    }

    pub fn bind(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("binding the CUDA context"))
    }

    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Launches `kernel` on the stream and checks the launch.
    pub fn launch(&self, kernel: &str, grid: (u32, u32, u32), block: u32, args: &[Arg]) -> Result<(), CudaError> {
        self.launch_with_shared(kernel, grid, block, 0, args)
    }

    /// Lets `kernel` use up to `bytes` of dynamic shared memory (beyond the default 48 KiB opt-in limit).
    pub fn set_max_dynamic_shared(&self, kernel: &str, bytes: usize) -> Result<(), CudaError> {
        let f = self
            .functions
            .get(kernel)
            .ok_or_else(|| CudaError::Unsupported(format!("kernel {kernel} is not in the PTX")))?;
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(driver_err(format!("giving {kernel} {bytes} bytes of shared memory")))
    }

    /// A launch with `shared_bytes` of dynamic shared memory.
    pub fn launch_with_shared(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: u32,
        shared_bytes: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let f = self
            .functions
            .get(kernel)
            .ok_or_else(|| CudaError::Unsupported(format!("kernel {kernel} is not in the PTX")))?;
        // Kernel arguments live on the stack: a launch allocates nothing on the host.
        const MAX_ARGS: usize = 24;
        if args.len() > MAX_ARGS {
            return Err(CudaError::Unsupported(format!(
                "{kernel}: more than {MAX_ARGS} kernel arguments"
            )));
        }
        let mut values = [[0u8; 8]; MAX_ARGS];
        for (v, a) in values.iter_mut().zip(args) {
            match a {
                Arg::Ptr(p) => *v = p.to_ne_bytes(),
                Arg::I32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                Arg::F32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
            }
        }
        let mut params = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (p, v) in params.iter_mut().zip(values.iter_mut()) {
            *p = v.as_mut_ptr() as *mut c_void;
        }
        let params = &mut params[..args.len()];
        // SAFETY: argument kinds and order match the kernel's signature (each caller mirrors its .cu file);
        // the values outlive the call, which copies them.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                grid,
                (block, 1, 1),
                shared_bytes,
                self.cu_stream(),
                params,
            )
        }
        .map_err(driver_err(format!("launching {kernel}")))
    }

    pub fn upload<T>(&self, dst: u64, src: &[T]) -> Result<(), CudaError> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: callers pass a destination with room for `src` (checked by the decoder's capacity checks).
        unsafe { result::memcpy_htod_async(dst, src, self.cu_stream()) }.map_err(driver_err("copying to the GPU"))
    }

    pub fn download<T>(&self, dst: &mut [T], src: u64) -> Result<(), CudaError> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: `src` holds at least `dst.len()` elements; we synchronize before the host reads `dst`.
        unsafe { result::memcpy_dtoh_async(dst, src, self.cu_stream()) }.map_err(driver_err("copying from the GPU"))?;
        self.synchronize()
    }

    pub fn fill_bytes(&self, dst: u64, byte: u8, bytes: usize) -> Result<(), CudaError> {
        // SAFETY: inside a live allocation.
        unsafe { result::memset_d8_async(dst, byte, bytes, self.cu_stream()) }.map_err(driver_err("filling memory"))
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver_err("running the step"))
    }

    /// (free, total) bytes on the device.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        self.ctx.mem_get_info().map_err(driver_err("reading free memory"))
    }
}

/// `.entry NAME(` lines of a PTX file: the kernels it defines.
fn entry_points(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
        .map(|rest| rest.split('(').next().unwrap_or("").trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}
