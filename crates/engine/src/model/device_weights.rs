//! Hands the model's weights to a GPU backend: the decoder's shape from the `ModelConfig`, and each tensor as
//! row-major bf16 (bf16 files are passed through; f16/f32 and GGUF quantized tensors are dequantized to bf16 at
//! load, which keeps one GPU kernel set; quantized GPU kernels come later).

use half::bf16;
use pagedllm_kernels::cuda::DecoderShape;
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

/// Tensor `name` as `rows x cols` bf16 values (1-D tensors are asked for as `1 x len`).
pub fn weight_bf16(weights: &WeightStore, name: &str, rows: usize, cols: usize) -> Result<Vec<bf16>, String> {
    let w = weights.matrix(name).map_err(|e| e.to_string())?;
    if w.rows * w.cols != rows * cols || (rows > 1 && (w.rows, w.cols) != (rows, cols)) {
        return Err(format!(
            "tensor `{name}` has shape [{}, {}], expected [{rows}, {cols}]",
            w.rows, w.cols
        ));
    }
    let mut out = vec![bf16::ZERO; rows * cols];
    let dtype = w.dtype;
    out.par_chunks_mut(w.cols).enumerate().for_each_init(
        || Vec::new(),
        |row: &mut Vec<f32>, (r, dst)| {
            if dtype == GgmlType::BF16 {
                for (d, b) in dst.iter_mut().zip(w.row(r).chunks_exact(2)) {
                    *d = bf16::from_bits(u16::from_le_bytes([b[0], b[1]]));
                }
            } else {
                row.resize(dst.len(), 0.0);
                quant::dequantize_row(dtype, w.row(r), row);
                for (d, &x) in dst.iter_mut().zip(row.iter()) {
                    *d = bf16::from_f32(x);
                }
            }
        },
    );
    Ok(out)
}
