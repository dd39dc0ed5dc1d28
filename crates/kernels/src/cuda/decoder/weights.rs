//! Uploading weights: each tensor fetched from the loader in the GPU's 16-bit type, copied to its place on the
//! GPU, and dropped before the next one (host memory never holds more than one tensor).

use super::*;

/// The loader's fetcher with the GPU's 16-bit type bound (see `FetchWeight`).
pub(super) type Fetch16<'a> = dyn FnMut(&str, usize, usize) -> Result<Vec<Half>, String> + 'a;

pub(super) fn upload_weight(
    gpu: &Gpu,
    fetch: &mut Fetch16<'_>,
    dst: &DeviceBuffer<Half>,
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
    fetch: &mut Fetch16<'_>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<DeviceBuffer<Half>, CudaError> {
    let buf = DeviceBuffer::alloc(rows * cols, name)?;
    upload_weight(gpu, fetch, &buf, 0, name, rows, cols)?;
    Ok(buf)
}
