//! Uploading weights: each tensor fetched from the loader as bf16, copied to its place on the GPU, and dropped
//! before the next one (host memory never holds more than one tensor).

use super::*;

pub(super) fn upload_weight(
    gpu: &Gpu,
    fetch: &mut FetchWeight<'_>,
    dst: &DeviceBuffer<bf16>,
    offset: usize,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<(), CudaError> {
    let host = fetch(name, rows, cols).map_err(CudaError::Weights)?;
    if host.len() != rows * cols {
        return Err(CudaError::Weights(format!(
            "`{name}` has {} values, expected {rows} x {cols}",
            host.len()
        )));
    }
    gpu.upload(dst.at(offset), &host)?;
    // The source is pageable host memory: finish before it is dropped.
    gpu.synchronize()
}

pub(super) fn weight(
    gpu: &Gpu,
    fetch: &mut FetchWeight<'_>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<DeviceBuffer<bf16>, CudaError> {
    let buf = DeviceBuffer::alloc(rows * cols, name)?;
    upload_weight(gpu, fetch, &buf, 0, name, rows, cols)?;
    Ok(buf)
}
