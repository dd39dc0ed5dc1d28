//! Hands the model's weights to a GPU backend: the decoder's shape from the `ModelConfig`, and each tensor as
//! row-major bf16 or f16 bits (a tensor already in that type is passed through; others — f32, the other 16-bit
//! type, GGUF quantized — are dequantized and rounded at load; quantized GPU kernels come later).

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
pub fn weight_16(
    weights: &WeightStore,
    name: &str,
    rows: usize,
    cols: usize,
    dtype: ActivationDtype,
) -> Result<Vec<u16>, String> {
    let w = weights.matrix(name).map_err(|e| e.to_string())?;
    if w.rows * w.cols != rows * cols || (rows > 1 && (w.rows, w.cols) != (rows, cols)) {
        return Err(format!(
            "tensor `{name}` has shape [{}, {}], expected [{rows}, {cols}]",
            w.rows, w.cols
        ));
    }
    let mut out = vec![0u16; rows * cols];
    let src = w.dtype;
    let same = matches!(
        (src, dtype),
        (GgmlType::BF16, ActivationDtype::Bf16) | (GgmlType::F16, ActivationDtype::F16)
    );
    out.par_chunks_mut(w.cols).enumerate().for_each_init(
        || Vec::new(),
        |row: &mut Vec<f32>, (r, dst)| {
            if same {
                for (d, b) in dst.iter_mut().zip(w.row(r).chunks_exact(2)) {
                    *d = u16::from_le_bytes([b[0], b[1]]);
                }
            } else {
                row.resize(dst.len(), 0.0);
                quant::dequantize_row(src, w.row(r), row);
                for (d, &x) in dst.iter_mut().zip(row.iter()) {
                    *d = dtype.encode(x);
                }
            }
        },
    );
    Ok(out)
}
