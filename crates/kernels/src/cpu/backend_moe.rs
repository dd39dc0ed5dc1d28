//! The sparse MoE MLP on the CPU (`Backend::moe`), after HF's `Qwen3MoeSparseMoeBlock` /
//! `Qwen2MoeSparseMoeBlock`: router logits, f32 softmax, top-k (renormalized or not), then per expert the rows
//! routed to it gathered into one product each for gate|up and down, summed into the output weighted by their
//! probabilities, in expert order as HF's `index_add_` does. A host loop over experts is right here: the CPU
//! runs ops eagerly, and grouping rows by expert turns the per-token work into a few dense products, which is
//! what the matmul kernels are fast at.

use super::{bad, glu_rows, CpuBackend, R};
use crate::backend::{MoeSpec, MoeWeights, Rows, TensorId};

/// One token's route: `(expert, weight)` for the `top_k` experts of highest softmax probability over `logits`
/// (ties to the lower index), the weights renormalized to sum 1 when `renormalize`.
pub fn route_token(logits: &[f32], top_k: usize, renormalize: bool, out: &mut Vec<(u32, f32)>) {
    out.clear();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    // Selection by probability equals selection by logit (softmax is monotone); a stable sort keeps ties in
    // index order.
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    for &e in &order[..top_k.min(order.len())] {
        out.push((e, (logits[e as usize] - max).exp() / sum));
    }
    if renormalize {
        let total: f32 = out.iter().map(|r| r.1).sum();
        if total > 0.0 {
            out.iter_mut().for_each(|r| r.1 /= total);
        }
    }
}

impl CpuBackend {
    pub(super) fn moe_mlp(
        &mut self,
        x: TensorId,
        w: &MoeWeights,
        spec: MoeSpec,
        shared: Option<TensorId>,
        out: TensorId,
    ) -> R {
        let (hidden, num_experts) = (x.width, w.router.rows);
        let (gu, down) = (w.gate_up, w.down);
        let inter = down.cols;
        let shapes_ok = x.rows == Rows::Tokens
            && out.rows == Rows::Tokens
            && out.width == hidden
            && w.router.cols == hidden
            && gu.experts == num_experts
            && down.experts == num_experts
            && (gu.rows, gu.cols) == (2 * inter, hidden)
            && down.rows == hidden
            && (1..=num_experts).contains(&spec.top_k)
            && shared.is_none_or(|s| s.rows == Rows::Tokens && s.width == hidden && s.index != out.index)
            && w.shared_gate.is_none_or(|g| (g.rows, g.cols) == (1, hidden))
            && shared.is_some() == w.shared_gate.is_some()
            && x.index != out.index;
        if !shapes_ok {
            return bad(format!("moe: {x:?} -> {out:?} with {w:?}, {spec:?}, shared {shared:?}"));
        }
        let t = self.rows(Rows::Tokens);
        let xs = std::mem::take(&mut self.acts[x.index as usize]);
        let mut logits = vec![0.0f32; t * num_experts];
        self.product(w.router.index as usize, &xs, t, &mut logits);

        // Rows of each expert: (token, weight), tokens rising.
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); num_experts];
        let mut route = Vec::with_capacity(spec.top_k);
        for (tok, l) in logits.chunks_exact(num_experts).enumerate() {
            route_token(l, spec.top_k, spec.renormalize, &mut route);
            for &(e, p) in &route {
                routed[e as usize].push((tok, p));
            }
        }

        let mut o = self.take(out);
        o.fill(0.0);
        let (gu_set, down_set) = (
            self.expert_sets[gu.index as usize].clone(),
            self.expert_sets[down.index as usize].clone(),
        );
        let (mut rows_x, mut rows_gu, mut rows_h, mut rows_y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (e, rows) in routed.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            rows_x.clear();
            for &(tok, _) in rows {
                rows_x.extend_from_slice(&xs[tok * hidden..(tok + 1) * hidden]);
            }
            rows_gu.resize(n * 2 * inter, 0.0);
            self.product(gu_set[e] as usize, &rows_x, n, &mut rows_gu);
            rows_h.resize(n * inter, 0.0);
            glu_rows(&rows_gu, spec.activation, inter, &mut rows_h);
            rows_y.resize(n * hidden, 0.0);
            self.product(down_set[e] as usize, &rows_h, n, &mut rows_y);
            for (&(tok, p), y) in rows.iter().zip(rows_y.chunks_exact(hidden)) {
                for (o, &y) in o[tok * hidden..(tok + 1) * hidden].iter_mut().zip(y) {
                    *o += p * y;
                }
            }
        }
        if let (Some(s), Some(g)) = (shared, w.shared_gate) {
            let mut gate = vec![0.0f32; t];
            self.product(g.index as usize, &xs, t, &mut gate);
            let s = &self.acts[s.index as usize];
            for ((o, s), &g) in o.chunks_exact_mut(hidden).zip(s.chunks_exact(hidden)).zip(&gate) {
                let sig = 1.0 / (1.0 + (-g).exp());
                o.iter_mut().zip(s).for_each(|(o, &s)| *o += sig * s);
            }
        }
        self.acts[x.index as usize] = xs;
        self.put(out, o);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::route_token;

    #[test]
    fn route_picks_the_top_k_by_probability_with_ties_to_the_lower_index() {
        let mut r = Vec::new();
        route_token(&[0.0, 2.0, 1.0, 2.0], 2, false, &mut r);
        let z: f32 = [0.0f32, 2.0, 1.0, 2.0].iter().map(|l| (l - 2.0f32).exp()).sum();
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((r[0].1 - 1.0 / z).abs() < 1e-7 && (r[1].1 - 1.0 / z).abs() < 1e-7);
        route_token(&[0.0, 2.0, 1.0, 2.0], 3, true, &mut r);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((r.iter().map(|x| x.1).sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((r[0].1 / r[2].1 - 1f32.exp()).abs() < 1e-5);
    }
}
