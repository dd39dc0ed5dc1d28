//! Hands the model's weights to a GPU backend: the decoder's shape from the `ModelConfig`, and each tensor as
//! row-major values in the GPU's float type (bf16, f16 or f32 little-endian bytes; a tensor already in that type
//! is passed through, others — another float type, GGUF quantized — are dequantized and rounded at load;
//! quantized GPU kernels come later).

use pagedllm_kernels::cuda::{ActivationDtype, DecoderShape};
use pagedllm_kernels::{quant, GgmlType};
use rayon::prelude::*;

use super::config::ModelConfig;
use super::weights::WeightStore;

pub fn decoder_shape(c: &ModelConfig, weights: &WeightStore) -> DecoderShape {
    DecoderShape {
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        vocab_size: c.vocab_size,
        rms_norm_eps: c.rms_norm_eps,
        rope_inv_freq: c.rope_inv_freq(),
        attention_bias: c.attention_bias,
        // As the CPU model does: a missing lm_head means the embeddings are the head.
        tie_word_embeddings: c.tie_word_embeddings || !weights.contains("lm_head.weight"),
    }
}

/// The GPU type `auto` picks for a checkpoint: f16 when its embedding table is stored in f16 (an f16 model),
/// else bf16 (bf16 and f32 checkpoints, GGUF), as vLLM's `--dtype auto` follows the checkpoint's dtype.
pub fn auto_dtype(weights: &WeightStore) -> ActivationDtype {
    match weights.matrix("model.embed_tokens.weight") {
        Ok(w) if w.dtype == GgmlType::F16 => ActivationDtype::F16,
        _ => ActivationDtype::Bf16,
    }
}

/// Tensor `name` as `rows x cols` values encoded in `dtype` (1-D tensors are asked for as `1 x len`).
pub fn device_weight(
    weights: &WeightStore,
    name: &str,
    rows: usize,
    cols: usize,
    dtype: ActivationDtype,
) -> Result<Vec<u8>, String> {
    let w = weights.matrix(name).map_err(|e| e.to_string())?;
    if w.rows * w.cols != rows * cols || (rows > 1 && (w.rows, w.cols) != (rows, cols)) {
        return Err(format!(
            "tensor `{name}` has shape [{}, {}], expected [{rows}, {cols}]",
            w.rows, w.cols
        ));
    }
    let size = dtype.bytes();
    let mut out = vec![0u8; rows * cols * size];
    let src = w.dtype;
    let same = matches!(
        (src, dtype),
        (GgmlType::BF16, ActivationDtype::Bf16)
            | (GgmlType::F16, ActivationDtype::F16)
            | (GgmlType::F32, ActivationDtype::F32)
    );
    out.par_chunks_mut(w.cols * size).enumerate().for_each_init(
        || Vec::new(),
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagedllm_kernels::{Storage, WeightMatrix};

    #[test]
    fn weights_arrive_encoded_in_the_asked_type() {
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.375 - 2.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut store = WeightStore::default();
        store.insert(
            "w",
            WeightMatrix::new(GgmlType::F32, 3, 4, Storage::Owned(std::sync::Arc::new(bytes))).unwrap(),
        );
        for dtype in [ActivationDtype::Bf16, ActivationDtype::F16, ActivationDtype::F32] {
            let bytes = device_weight(&store, "w", 3, 4, dtype).unwrap();
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
        assert!(device_weight(&store, "w", 4, 3, ActivationDtype::F32)
            .unwrap_err()
            .contains("expected [4, 3]"));
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
            let mut store = WeightStore::default();
            let m = WeightMatrix::new(src, 2, 2, Storage::Owned(std::sync::Arc::new(bytes.clone()))).unwrap();
            store.insert("w", m);
            assert_eq!(device_weight(&store, "w", 2, 2, dtype).unwrap(), bytes, "{dtype:?}");
        }
    }
}
