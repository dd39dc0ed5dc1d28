//! Undoes llama.cpp's Q/K row permutation so GGUF Llama weights work with HF's rotate-half RoPE.
//!
//! llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel.permute`) reorders the output rows of `q_proj` (with
//! n_head = num_attention_heads) and `k_proj` (n_head = num_key_value_heads) so that ggml's interleaved ("GPT-J
//! style") RoPE sees rotation pairs next to each other:
//! `w.reshape(n_head, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)`,
//! i.e. permuted row `h*head_dim + 2*i + j` holds original row `h*head_dim + j*head_dim/2 + i`.
//! Quant blocks run along the input axis (within a row), so whole rows move as byte ranges: no requantizing.
//! Qwen2's converter does not permute; callers only use this for the `llama` architecture.

use std::sync::Arc;

use pagedllm_kernels::{Storage, WeightMatrix};

/// Returns `w` with its rows put back in HF order. A 1-D tensor (a bias, `rows == 1`) is permuted element-wise,
/// which needs an unquantized dtype.
pub fn unpermute_qk(w: &WeightMatrix, n_head: usize) -> Result<WeightMatrix, String> {
    let (units, unit_bytes) = if w.rows == 1 {
        if w.dtype.block_size() != 1 {
            return Err(format!("cannot reorder a {:?} 1-D tensor element-wise", w.dtype));
        }
        (w.cols, w.dtype.block_bytes())
    } else {
        (w.rows, w.row_bytes())
    };
    if n_head == 0 || units % (2 * n_head) != 0 {
        return Err(format!(
            "{units} rows cannot be split into {n_head} heads of an even size"
        ));
    }
    let src = w.storage.bytes();
    let head_dim = units / n_head;
    let half = head_dim / 2;
    let mut out = vec![0u8; src.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let from = h * head_dim + 2 * i + j;
                let to = h * head_dim + j * half + i;
                out[to * unit_bytes..(to + 1) * unit_bytes]
                    .copy_from_slice(&src[from * unit_bytes..(from + 1) * unit_bytes]);
            }
        }
    }
    WeightMatrix::new(w.dtype, w.rows, w.cols, Storage::Owned(Arc::new(out)))
}

/// Whether the GGUF converter permuted Q/K for this architecture.
pub fn arch_is_permuted(arch: &str) -> bool {
    matches!(arch, "llama" | "mistral")
}

/// Test helper: the converter's numpy permute, written out on row indices.
#[cfg(test)]
pub(crate) fn python_permute(rows: &[Vec<u8>], n_head: usize) -> Vec<Vec<u8>> {
    let head_dim = rows.len() / n_head;
    let half = head_dim / 2;
    // reshaped[h][a][b] = rows[h*head_dim + a*half + b]; swapped[h][b][a] = reshaped[h][a][b]
    let mut out = Vec::with_capacity(rows.len());
    for h in 0..n_head {
        for b in 0..half {
            for a in 0..2 {
                out.push(rows[h * head_dim + a * half + b].clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagedllm_kernels::GgmlType;
    use rand::{Rng, SeedableRng};

    fn matrix_from_rows(dtype: GgmlType, cols: usize, rows: &[Vec<u8>]) -> WeightMatrix {
        let bytes: Vec<u8> = rows.concat();
        WeightMatrix::new(dtype, rows.len(), cols, Storage::Owned(Arc::new(bytes))).unwrap()
    }

    #[test]
    fn unpermute_inverts_the_converter_permute_on_quantized_rows() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(n_head, head_dim, dtype, cols) in &[
            (3usize, 8usize, GgmlType::Q8_0, 64usize),
            (2, 4, GgmlType::F32, 5),
            (4, 64, GgmlType::Q4_1, 32),
        ] {
            let row_bytes = dtype.row_bytes(cols);
            let original: Vec<Vec<u8>> = (0..n_head * head_dim)
                .map(|_| (0..row_bytes).map(|_| rng.random()).collect())
                .collect();
            let permuted = python_permute(&original, n_head);
            assert_ne!(permuted, original);
            let w = matrix_from_rows(dtype, cols, &permuted);
            let back = unpermute_qk(&w, n_head).unwrap();
            assert_eq!((back.rows, back.cols, back.dtype), (w.rows, w.cols, dtype));
            for (r, orig) in original.iter().enumerate() {
                assert_eq!(back.row(r), &orig[..], "row {r} (n_head {n_head}, head_dim {head_dim})");
            }
        }
    }

    #[test]
    fn unpermute_bias_elementwise() {
        let n_head = 2;
        let original: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let as_rows: Vec<Vec<u8>> = original.iter().map(|v| v.to_le_bytes().to_vec()).collect();
        let permuted: Vec<f32> = python_permute(&as_rows, n_head)
            .iter()
            .map(|b| f32::from_le_bytes(b[..].try_into().unwrap()))
            .collect();
        let w = WeightMatrix::from_f32(1, 16, &permuted);
        let back = unpermute_qk(&w, n_head).unwrap();
        let got: Vec<f32> = back
            .storage
            .bytes()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, original);
    }

    #[test]
    fn rejects_rows_not_divisible_into_heads() {
        let w = WeightMatrix::from_f32(6, 2, &[0.0; 12]);
        assert!(unpermute_qk(&w, 4).is_err());
        assert!(unpermute_qk(&w, 0).is_err());
    }
}
