//! `WeightStore`: tensors by their HF names (`model.layers.0.self_attn.q_proj.weight`, ...), whatever file they
//! came from. GGUF loaders rename `blk.N.attn_q.weight` etc. to these names and undo the Q/K row permutation,
//! so the model code sees one convention (HF's rotate-half RoPE).

use std::collections::HashMap;

use pagedllm_kernels::WeightMatrix;

use crate::error::{EngineError, Result};

#[derive(Default, Clone)]
pub struct WeightStore {
    /// 1-D tensors (norm weights, biases) are stored as `rows = 1`.
    pub tensors: HashMap<String, WeightMatrix>,
    /// Where the weights came from, for error messages.
    pub source: String,
}

impl WeightStore {
    pub fn insert(&mut self, name: impl Into<String>, w: WeightMatrix) {
        self.tensors.insert(name.into(), w);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn matrix(&self, name: &str) -> Result<&WeightMatrix> {
        self.tensors
            .get(name)
            .ok_or_else(|| EngineError::load(&self.source, format!("missing tensor `{name}`")))
    }

    /// A 1-D tensor as f32 (norm weights and biases are tiny; converting them once is free).
    pub fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let w = self.matrix(name)?;
        let mut out = vec![0.0f32; w.rows * w.cols];
        for r in 0..w.rows {
            pagedllm_kernels::quant::dequantize_row(w.dtype, w.row(r), &mut out[r * w.cols..(r + 1) * w.cols]);
        }
        Ok(out)
    }
}
