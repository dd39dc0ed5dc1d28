//! Uploading weights: each tensor copied to its place on the GPU from host bytes in the GPU's float type (the
//! mapped file itself when the checkpoint is in that type; else one converted tensor at a time, dropped before the
//! next, so host memory never holds more than one).

pub(super) use crate::cuda::weight_encoding::encoded_weight;

use super::*;

/// Copies `bytes` (values in `dst`'s type) to value `offset` of `dst`.
pub(super) fn upload_bytes(gpu: &Gpu, dst: &FloatBuffer, offset: usize, bytes: &[u8]) -> Result<(), CudaError> {
    let value_bytes = dst.value_bytes();
    if bytes.len() % value_bytes != 0 || offset + bytes.len() / value_bytes > dst.len() {
        return Err(CudaError::Weights(format!(
            "{} bytes do not fit at value {offset} of a {}-value buffer",
            bytes.len(),
            dst.len()
        )));
    }
    gpu.upload(dst.at(offset), bytes)?;
    // The source is pageable host memory: finish before it is dropped.
    gpu.synchronize()
}
