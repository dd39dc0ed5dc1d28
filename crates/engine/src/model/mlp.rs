//! A decoder layer's MLP: dense GLU (`gate|up` fused, then `down`) or a sparse mixture of GLU experts (HF
//! `Qwen3MoeSparseMoeBlock`; Qwen2-MoE's shared expert behind a sigmoid gate), loaded from the tensor names the
//! checkpoints use and run through the backend's `linear` / `glu` / `moe` ops.
//!
//! Expert weights come either one matrix per expert (`mlp.experts.{e}.gate_proj.weight`: the Hub's checkpoints,
//! and what transformers writes) or stacked, `[experts * rows, cols]` (`mlp.experts.gate_proj`: GGUF's
//! `ffn_*_exps`, or transformers 5's in-memory `gate_up_proj`), sliced per expert here.

use pagedllm_kernels::backend::{Activation, Backend, ExpertsId, MoeSpec, MoeWeights, Rows, TensorId, WeightId};
use pagedllm_kernels::WeightMatrix;

use super::config::{ModelConfig, MoeConfig};
use super::weights::WeightStore;
use crate::error::{EngineError, Result};

pub(super) enum Mlp {
    Dense {
        /// `[2 inter, hidden]`: gate then up.
        gate_up: WeightId,
        down: WeightId,
    },
    Sparse {
        weights: MoeWeights,
        spec: MoeSpec,
        /// Qwen2-MoE's shared expert: gate|up and down.
        shared: Option<(WeightId, WeightId)>,
    },
}

/// The activations the MLPs of a model need besides the layer's input and output.
pub(super) struct MlpActivations {
    /// Dense layers' `[gate | up]` and `act(gate) * up` (absent when every layer is sparse).
    dense: Option<(TensorId, TensorId)>,
    /// The shared expert's `[gate | up]`, product and output (Qwen2-MoE).
    shared: Option<(TensorId, TensorId, TensorId)>,
}

fn matrix<'a>(ws: &'a WeightStore, name: &str, rows: usize, cols: usize) -> Result<&'a WeightMatrix> {
    let w = ws.matrix(name)?;
    if (w.rows, w.cols) != (rows, cols) {
        return Err(EngineError::load(
            &ws.source,
            format!("tensor `{name}` has shape [{}, {}], expected [{rows}, {cols}]", w.rows, w.cols),
        ));
    }
    Ok(w)
}

fn backend_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Backend(e.to_string())
}

/// A dense GLU under `prefix` (`model.layers.3.mlp`, `...mlp.shared_expert`): gate|up and down.
fn load_dense<B: Backend>(
    ws: &WeightStore,
    b: &mut B,
    prefix: &str,
    inter: usize,
    hidden: usize,
) -> Result<(WeightId, WeightId)> {
    // Phi-3 stores gate|up fused, in the order the ops use.
    let fused = format!("{prefix}.gate_up_proj.weight");
    let gate_up = if ws.contains(&fused) {
        b.upload_matrix(&[matrix(ws, &fused, 2 * inter, hidden)?])
    } else {
        b.upload_matrix(&[
            matrix(ws, &format!("{prefix}.gate_proj.weight"), inter, hidden)?,
            matrix(ws, &format!("{prefix}.up_proj.weight"), inter, hidden)?,
        ])
    }
    .map_err(backend_err)?;
    let down = b
        .upload_matrix(&[matrix(ws, &format!("{prefix}.down_proj.weight"), hidden, inter)?])
        .map_err(backend_err)?;
    Ok((gate_up, down))
}

/// Expert `e`'s `proj` (`gate_proj`, `up_proj`, `down_proj`) of shape `[rows, cols]`, per-expert or stacked.
fn expert_matrix(ws: &WeightStore, prefix: &str, proj: &str, e: usize, experts: usize, rows: usize, cols: usize) -> Result<WeightMatrix> {
    let own = format!("{prefix}.experts.{e}.{proj}.weight");
    if ws.contains(&own) {
        return Ok(matrix(ws, &own, rows, cols)?.clone());
    }
    let stacked = format!("{prefix}.experts.{proj}");
    let w = matrix(ws, &stacked, experts * rows, cols)?;
    w.row_range(e * rows, rows)
        .ok_or_else(|| EngineError::load(&ws.source, format!("tensor `{stacked}` has no expert {e}")))
}

fn load_sparse<B: Backend>(
    ws: &WeightStore,
    b: &mut B,
    prefix: &str,
    m: &MoeConfig,
    hidden: usize,
    activation: Activation,
) -> Result<Mlp> {
    let (n, inter) = (m.num_experts, m.moe_intermediate_size);
    let router = b
        .upload_matrix(&[matrix(ws, &format!("{prefix}.gate.weight"), n, hidden)?])
        .map_err(backend_err)?;
    let mut gate_up = Vec::with_capacity(n);
    let mut down = Vec::with_capacity(n);
    for e in 0..n {
        gate_up.push([
            expert_matrix(ws, prefix, "gate_proj", e, n, inter, hidden)?,
            expert_matrix(ws, prefix, "up_proj", e, n, inter, hidden)?,
        ]);
        down.push(expert_matrix(ws, prefix, "down_proj", e, n, hidden, inter)?);
    }
    let upload = |b: &mut B, experts: Vec<Vec<&WeightMatrix>>| -> Result<ExpertsId> {
        b.upload_experts(&experts).map_err(backend_err)
    };
    let gate_up = upload(b, gate_up.iter().map(|p| p.iter().collect()).collect())?;
    let down = upload(b, down.iter().map(|d| vec![d]).collect())?;
    let (shared, shared_gate) = match m.shared_expert_intermediate_size {
        Some(si) => {
            let s = load_dense(ws, b, &format!("{prefix}.shared_expert"), si, hidden)?;
            let g = b
                .upload_matrix(&[matrix(ws, &format!("{prefix}.shared_expert_gate.weight"), 1, hidden)?])
                .map_err(backend_err)?;
            (Some(s), Some(g))
        }
        None => (None, None),
    };
    Ok(Mlp::Sparse {
        weights: MoeWeights {
            router,
            gate_up,
            down,
            shared_gate,
        },
        spec: MoeSpec {
            top_k: m.num_experts_per_tok,
            renormalize: m.norm_topk_prob,
            activation,
        },
        shared,
    })
}

impl Mlp {
    /// Layer `layer`'s MLP (`model.layers.{layer}.mlp`).
    pub(super) fn load<B: Backend>(
        c: &ModelConfig,
        ws: &WeightStore,
        b: &mut B,
        layer: usize,
        activation: Activation,
    ) -> Result<Self> {
        let prefix = format!("model.layers.{layer}.mlp");
        match c.layer_moe(layer) {
            Some(m) => load_sparse(ws, b, &prefix, m, c.hidden_size, activation),
            None => {
                let (gate_up, down) = load_dense(ws, b, &prefix, c.intermediate_size, c.hidden_size)?;
                Ok(Mlp::Dense { gate_up, down })
            }
        }
    }

    /// `out = mlp(x)`.
    pub(super) fn forward<B: Backend>(
        &self,
        b: &mut B,
        acts: &MlpActivations,
        activation: Activation,
        x: TensorId,
        out: TensorId,
    ) -> std::result::Result<(), B::Error> {
        match self {
            Mlp::Dense { gate_up, down } => {
                let (gu, act) = acts.dense.expect("dense MLP buffers are allocated when a layer is dense");
                b.linear(x, *gate_up, gu)?;
                b.glu(gu, activation, act)?;
                b.linear(act, *down, out)
            }
            Mlp::Sparse { weights, spec, shared } => {
                let shared_out = match (shared, acts.shared) {
                    (Some((gate_up, down)), Some((gu, act, s))) => {
                        b.linear(x, *gate_up, gu)?;
                        b.glu(gu, activation, act)?;
                        b.linear(act, *down, s)?;
                        Some(s)
                    }
                    _ => None,
                };
                b.moe(x, weights, *spec, shared_out, out)
            }
        }
    }
}

impl MlpActivations {
    /// The buffers `c`'s layers need, allocated on `b`.
    pub(super) fn alloc<B: Backend>(c: &ModelConfig, b: &mut B) -> Result<Self> {
        let mut alloc = |width: usize| b.alloc_activation(Rows::Tokens, width).map_err(backend_err);
        let any_dense = (0..c.num_hidden_layers).any(|l| c.layer_moe(l).is_none());
        let dense = if any_dense {
            Some((alloc(2 * c.intermediate_size)?, alloc(c.intermediate_size)?))
        } else {
            None
        };
        let shared = match c.moe.as_ref().and_then(|m| m.shared_expert_intermediate_size) {
            Some(si) => Some((alloc(2 * si)?, alloc(si)?, alloc(c.hidden_size)?)),
            None => None,
        };
        Ok(Self { dense, shared })
    }
}
