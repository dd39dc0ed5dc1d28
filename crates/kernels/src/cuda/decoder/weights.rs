//! Uploading weights: each tensor fetched from the loader in the GPU's float type, copied to its place on the
//! GPU, and dropped before the next one (host memory never holds more than one tensor).

use super::*;

/// The loader's fetcher with the GPU's float type bound (see `FetchWeight`): little-endian encoded values.
pub(super) type FetchTyped<'a> = dyn FnMut(&str, usize, usize) -> Result<Vec<u8>, String> + 'a;

/// Fetches `name` (`rows x cols` values) and copies it to value `offset` of `dst`.
pub(super) fn upload_weight(
    gpu: &Gpu,
    fetch: &mut FetchTyped<'_>,
    dst: &FloatBuffer,
    offset: usize,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<(), CudaError> {
    if offset + rows * cols > dst.len() {
        return Err(CudaError::Weights(format!(
            "`{name}` ({rows} x {cols}) does not fit at value {offset} of a {}-value buffer",
            dst.len()
        )));
    }
    let host = fetch(name, rows, cols).map_err(CudaError::Weights)?;
    let value_bytes = dst.value_bytes();
    if host.len() != rows * cols * value_bytes {
        return Err(CudaError::Weights(format!(
            "`{name}` came as {} bytes, expected {rows} x {cols} values of {value_bytes} bytes",
            host.len()
        )));
    }
    gpu.upload(dst.at(offset), &host)?;
    // The source is pageable host memory: finish before it is dropped.
    gpu.synchronize()
}

pub(super) fn weight(
    gpu: &Gpu,
    fetch: &mut FetchTyped<'_>,
    dtype: ActivationDtype,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<FloatBuffer, CudaError> {
    let buf = FloatBuffer::alloc(rows * cols, dtype, name)?;
    upload_weight(gpu, fetch, &buf, 0, name, rows, cols)?;
    Ok(buf)
}
