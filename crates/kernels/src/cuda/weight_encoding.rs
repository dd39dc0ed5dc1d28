//! A weight matrix as row-major values in the GPU's float type (bf16, f16 or f32 little-endian bytes): a tensor
//! already in that type passes through bit for bit; others (another float type, GGUF quantized) are dequantized
//! and rounded at load (quantized GPU kernels come later). Pure host code, so it is tested without a GPU.

use rayon::prelude::*;

use super::ActivationDtype;
use crate::quant::{self, GgmlType};
use crate::tensor::WeightMatrix;

/// Whether `w` is already stored as the GPU's float type (its bytes can go to the GPU as they are).
fn passes_through(w: &WeightMatrix, dtype: ActivationDtype) -> bool {
    matches!(
        (w.dtype, dtype),
        (GgmlType::BF16, ActivationDtype::Bf16)
            | (GgmlType::F16, ActivationDtype::F16)
            | (GgmlType::F32, ActivationDtype::F32)
    )
}

/// The bytes to upload for `w`: its own storage (the mapped file) when it is already in the GPU's type, so an
/// 8B checkpoint's 16 GB are not first copied into fresh host buffers; else `encode_weight`'s conversion.
pub fn encoded_weight(w: &WeightMatrix, dtype: ActivationDtype) -> std::borrow::Cow<'_, [u8]> {
    if passes_through(w, dtype) {
        std::borrow::Cow::Borrowed(w.storage.bytes())
    } else {
        std::borrow::Cow::Owned(encode_weight(w, dtype))
    }
}

pub fn encode_weight(w: &WeightMatrix, dtype: ActivationDtype) -> Vec<u8> {
    let size = dtype.bytes();
    let mut out = vec![0u8; w.rows * w.cols * size];
    let src = w.dtype;
    let same = passes_through(w, dtype);
    if w.cols == 0 {
        return out;
    }
    out.par_chunks_mut(w.cols * size).enumerate().for_each_init(
        Vec::new,
        |row: &mut Vec<f32>, (r, dst)| {
            if same {
                dst.copy_from_slice(w.row(r));
            } else {
                row.resize(w.cols, 0.0);
                quant::dequantize_row(src, w.row(r), row);
                for (d, &x) in dst.chunks_exact_mut(size).zip(row.iter()) {
                    dtype.encode_into(x, d);
                }
            }
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Storage;

    #[test]
    fn weights_arrive_encoded_in_the_asked_type() {
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.375 - 2.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let w = WeightMatrix::new(GgmlType::F32, 3, 4, Storage::Owned(std::sync::Arc::new(bytes))).unwrap();
        for dtype in [ActivationDtype::Bf16, ActivationDtype::F16, ActivationDtype::F32] {
            let bytes = encode_weight(&w, dtype);
            assert_eq!(bytes.len(), 12 * dtype.bytes());
            let back: Vec<f32> = bytes
                .chunks_exact(dtype.bytes())
                .map(|b| match dtype {
                    ActivationDtype::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                    ActivationDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    ActivationDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                })
                .collect();
            assert_eq!(back, values, "{dtype:?}"); // multiples of 1/8 in [-2, 2.2]: exact in every type
        }
    }

    #[test]
    fn weights_already_in_the_asked_type_pass_through_bit_for_bit() {
        // Bit patterns that a decode/encode round trip through f32 would not keep: a NaN payload and -0.
        let words: [u16; 4] = [0x7fc1, 0x8000, 0x3c00, 0x1234];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        for (src, dtype) in [
            (GgmlType::BF16, ActivationDtype::Bf16),
            (GgmlType::F16, ActivationDtype::F16),
        ] {
            let m = WeightMatrix::new(src, 2, 2, Storage::Owned(std::sync::Arc::new(bytes.clone()))).unwrap();
            assert_eq!(encode_weight(&m, dtype), bytes, "{dtype:?}");
            // The upload path borrows the stored bytes instead of copying them.
            let up = encoded_weight(&m, dtype);
            assert!(matches!(up, std::borrow::Cow::Borrowed(_)), "{dtype:?}");
            assert_eq!(&*up, &bytes[..], "{dtype:?}");
        }
        // Another type is converted, as encode_weight does.
        let m = WeightMatrix::new(GgmlType::F16, 2, 2, Storage::Owned(std::sync::Arc::new(bytes.clone()))).unwrap();
        let up = encoded_weight(&m, ActivationDtype::Bf16);
        assert!(matches!(up, std::borrow::Cow::Owned(_)));
        assert_eq!(&*up, &encode_weight(&m, ActivationDtype::Bf16)[..]);
    }
}
