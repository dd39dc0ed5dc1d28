//! The Llama-family decoder (Llama 2/3/3.1, SmolLM2, Mistral, Qwen2) on the CPU kernels, after HF's
//! `LlamaForCausalLM`: pre-norm blocks of RMSNorm -> GQA attention with rotate-half RoPE -> residual ->
//! RMSNorm -> SwiGLU MLP -> residual, then a final norm and the LM head. Qwen2 adds q/k/v biases; small models
//! tie the LM head to the embeddings.
//!
//! One `forward` runs a whole flattened varlen batch (prefill chunks and decodes mixed) through the paged KV
//! cache, and returns logits only for `batch.logits_indices` — the final norm and the `[vocab x hidden]` LM
//! head run on those rows alone, which saves a `[T x vocab]` product per prefill chunk. Weights stay in their
//! stored format; activations are f32 throughout (we must match HF float32 log-probs).

use pagedllm_kernels::cpu::{activation, attention, matmul::matmul, norm, rope, KvCache};
use pagedllm_kernels::{quant, InputBatch, WeightMatrix};
use rayon::prelude::*;

use super::config::ModelConfig;
use super::weights::WeightStore;
use crate::error::{EngineError, Result};

/// RoPE cos/sin are tabulated for this many leading positions (later ones are computed per token).
const ROPE_CACHED_POSITIONS: usize = 8192;

struct Layer {
    input_norm: Vec<f32>,
    q_proj: WeightMatrix,
    k_proj: WeightMatrix,
    v_proj: WeightMatrix,
    /// Qwen2's q/k/v biases, present iff `config.attention_bias`.
    qkv_bias: Option<[Vec<f32>; 3]>,
    o_proj: WeightMatrix,
    post_norm: Vec<f32>,
    gate_proj: WeightMatrix,
    up_proj: WeightMatrix,
    down_proj: WeightMatrix,
}

pub struct LlamaModel {
    config: ModelConfig,
    embed_tokens: WeightMatrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `embed_tokens` again when the embeddings are tied (a cheap clone: the bytes are shared).
    lm_head: WeightMatrix,
    rope: rope::RopeTable,
}

/// Per-forward activations, allocated once per call and reused by every layer.
struct Scratch {
    /// Residual stream `[T, hidden]`.
    x: Vec<f32>,
    /// Normed input of the current sub-layer `[T, hidden]`.
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    /// Output of the last sub-layer, not yet added to `x` (added by the next fused add + norm).
    delta: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

fn matrix(ws: &WeightStore, name: &str, rows: usize, cols: usize) -> Result<WeightMatrix> {
    let w = ws.matrix(name)?;
    if (w.rows, w.cols) != (rows, cols) {
        return Err(EngineError::load(
            &ws.source,
            format!(
                "tensor `{name}` has shape [{}, {}], expected [{rows}, {cols}]",
                w.rows, w.cols
            ),
        ));
    }
    Ok(w.clone())
}

fn vector(ws: &WeightStore, name: &str, len: usize) -> Result<Vec<f32>> {
    let v = ws.vector(name)?;
    if v.len() != len {
        return Err(EngineError::load(
            &ws.source,
            format!("tensor `{name}` has {} elements, expected {len}", v.len()),
        ));
    }
    Ok(v)
}

fn check_config(c: &ModelConfig) -> Result<()> {
    if !ModelConfig::SUPPORTED_ARCHITECTURES.contains(&c.architecture.as_str()) {
        return Err(EngineError::Unsupported(format!(
            "architecture `{}` (supported: {})",
            c.architecture,
            ModelConfig::SUPPORTED_ARCHITECTURES.join(", ")
        )));
    }
    let bad = |m: String| Err(EngineError::Unsupported(format!("model config: {m}")));
    if c.hidden_size == 0 || c.num_hidden_layers == 0 || c.vocab_size == 0 || c.intermediate_size == 0 {
        return bad("hidden_size, intermediate_size, num_hidden_layers and vocab_size must be positive".into());
    }
    if c.num_key_value_heads == 0 || c.num_attention_heads % c.num_key_value_heads != 0 {
        return bad(format!(
            "{} attention heads are not a multiple of {} KV heads",
            c.num_attention_heads, c.num_key_value_heads
        ));
    }
    if c.head_dim == 0 || c.head_dim % 2 != 0 || c.head_dim > 512 {
        return bad(format!("head_dim {} must be even and at most 512", c.head_dim));
    }
    Ok(())
}

impl LlamaModel {
    /// Takes the HF-named tensors from `weights`, checking every shape against `config`.
    pub fn new(config: &ModelConfig, weights: &WeightStore) -> Result<Self> {
        check_config(config)?;
        let c = config;
        let (hidden, inter, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q_dim, kv_dim) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let embed_tokens = matrix(weights, "model.embed_tokens.weight", c.vocab_size, hidden)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let qkv_bias = if c.attention_bias {
                    Some([
                        vector(weights, &format!("{p}.self_attn.q_proj.bias"), q_dim)?,
                        vector(weights, &format!("{p}.self_attn.k_proj.bias"), kv_dim)?,
                        vector(weights, &format!("{p}.self_attn.v_proj.bias"), kv_dim)?,
                    ])
                } else {
                    None
                };
                Ok(Layer {
                    input_norm: vector(weights, &format!("{p}.input_layernorm.weight"), hidden)?,
                    q_proj: matrix(weights, &format!("{p}.self_attn.q_proj.weight"), q_dim, hidden)?,
                    k_proj: matrix(weights, &format!("{p}.self_attn.k_proj.weight"), kv_dim, hidden)?,
                    v_proj: matrix(weights, &format!("{p}.self_attn.v_proj.weight"), kv_dim, hidden)?,
                    qkv_bias,
                    o_proj: matrix(weights, &format!("{p}.self_attn.o_proj.weight"), hidden, q_dim)?,
                    post_norm: vector(weights, &format!("{p}.post_attention_layernorm.weight"), hidden)?,
                    gate_proj: matrix(weights, &format!("{p}.mlp.gate_proj.weight"), inter, hidden)?,
                    up_proj: matrix(weights, &format!("{p}.mlp.up_proj.weight"), inter, hidden)?,
                    down_proj: matrix(weights, &format!("{p}.mlp.down_proj.weight"), hidden, inter)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = vector(weights, "model.norm.weight", hidden)?;
        let lm_head = if c.tie_word_embeddings || !weights.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            matrix(weights, "lm_head.weight", c.vocab_size, hidden)?
        };
        let inv_freq = c.rope_inv_freq();
        let rope = rope::RopeTable::new(inv_freq, c.max_position_embeddings.min(ROPE_CACHED_POSITIONS));
        Ok(Self {
            config: c.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// An empty paged cache shaped for this model.
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> KvCache {
        let c = &self.config;
        KvCache::new(
            c.num_hidden_layers,
            num_blocks,
            block_size,
            c.num_key_value_heads,
            c.head_dim,
        )
    }

    /// Runs one batch, writing its K/V into `kv`; returns logits `[batch.logits_indices.len(), vocab_size]`.
    pub fn forward(&self, batch: &InputBatch, kv: &mut KvCache) -> Result<Vec<f32>> {
        self.check_batch(batch, kv)?;
        let c = &self.config;
        let t = batch.num_tokens();
        let (hidden, hd) = (c.hidden_size, c.head_dim);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let mut s = Scratch {
            x: vec![0.0; t * hidden],
            h: vec![0.0; t * hidden],
            q: vec![0.0; t * nh * hd],
            k: vec![0.0; t * nkv * hd],
            v: vec![0.0; t * nkv * hd],
            attn: vec![0.0; t * nh * hd],
            delta: vec![0.0; t * hidden],
            gate: vec![0.0; t * c.intermediate_size],
            up: vec![0.0; t * c.intermediate_size],
            act: vec![0.0; t * c.intermediate_size],
        };
        let emb = &self.embed_tokens;
        s.x.par_chunks_mut(hidden)
            .zip(batch.token_ids.par_iter())
            .for_each(|(row, &id)| {
                quant::dequantize_row(emb.dtype, emb.row(id as usize), row);
            });

        let eps = c.rms_norm_eps;
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            if li == 0 {
                norm::rms_norm(&s.x, &l.input_norm, eps, &mut s.h);
            } else {
                norm::add_rms_norm(&mut s.x, &s.delta, &l.input_norm, eps, &mut s.h);
            }
            matmul(&s.h, t, &l.q_proj, &mut s.q);
            matmul(&s.h, t, &l.k_proj, &mut s.k);
            matmul(&s.h, t, &l.v_proj, &mut s.v);
            if let Some([bq, bk, bv]) = &l.qkv_bias {
                for (buf, b) in [(&mut s.q, bq), (&mut s.k, bk), (&mut s.v, bv)] {
                    buf.chunks_exact_mut(b.len()).for_each(|row| norm::add_assign(row, b));
                }
            }
            self.rope.apply_qk(&mut s.q, nh, &mut s.k, nkv, &batch.positions);
            kv.write(li, &batch.slot_mapping, &s.k, &s.v);
            attention::paged_attention(&s.q, kv, li, batch, nh, scale, &mut s.attn);
            matmul(&s.attn, t, &l.o_proj, &mut s.delta);
            norm::add_rms_norm(&mut s.x, &s.delta, &l.post_norm, eps, &mut s.h);
            matmul(&s.h, t, &l.gate_proj, &mut s.gate);
            matmul(&s.h, t, &l.up_proj, &mut s.up);
            activation::silu_mul(&s.gate, &s.up, &mut s.act);
            matmul(&s.act, t, &l.down_proj, &mut s.delta);
        }

        // Only the requested rows get the last residual add, the final norm and the LM head.
        let m = batch.logits_indices.len();
        let mut rows = vec![0.0f32; m * hidden];
        for (dst, &i) in rows.chunks_exact_mut(hidden).zip(&batch.logits_indices) {
            let i = i as usize;
            dst.copy_from_slice(&s.delta[i * hidden..(i + 1) * hidden]);
            norm::add_assign(dst, &s.x[i * hidden..(i + 1) * hidden]);
        }
        let mut normed = vec![0.0f32; m * hidden];
        if m > 0 {
            norm::rms_norm(&rows, &self.norm, eps, &mut normed);
        }
        let mut logits = vec![0.0f32; m * c.vocab_size];
        matmul(&normed, m, &self.lm_head, &mut logits);
        Ok(logits)
    }

    /// Everything the kernels would otherwise panic on, as errors naming the inconsistent field.
    fn check_batch(&self, b: &InputBatch, kv: &KvCache) -> Result<()> {
        let c = &self.config;
        let bad = |m: String| Err(EngineError::Internal(format!("model batch: {m}")));
        if (kv.num_layers, kv.num_kv_heads, kv.head_dim) != (c.num_hidden_layers, c.num_key_value_heads, c.head_dim) {
            return bad(format!(
                "KV cache is [{} layers, {} KV heads, head_dim {}], the model needs [{}, {}, {}]",
                kv.num_layers, kv.num_kv_heads, kv.head_dim, c.num_hidden_layers, c.num_key_value_heads, c.head_dim
            ));
        }
        let (t, n) = (b.num_tokens(), b.num_seqs());
        if b.block_size == 0 || b.block_size != kv.block_size {
            return bad(format!(
                "block_size {} but the KV cache uses {}",
                b.block_size, kv.block_size
            ));
        }
        if b.positions.len() != t || b.slot_mapping.len() != t {
            return bad(format!(
                "{t} tokens but {} positions, {} slots",
                b.positions.len(),
                b.slot_mapping.len()
            ));
        }
        if b.query_start_loc.len() != n + 1 || b.query_start_loc.first() != Some(&0) {
            return bad("query_start_loc must have one entry per sequence plus one, starting at 0".into());
        }
        if b.query_start_loc.windows(2).any(|w| w[1] < w[0]) || b.query_start_loc[n] as usize != t {
            return bad(format!("query_start_loc must rise to the token count {t}"));
        }
        if b.block_tables.len() != n * b.max_blocks_per_seq {
            return bad(format!(
                "block_tables has {} entries for {n} sequences",
                b.block_tables.len()
            ));
        }
        if let Some(&id) = b.token_ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(EngineError::invalid(
                "token_ids",
                format!("token id {id} is outside the vocabulary of {}", c.vocab_size),
            ));
        }
        let slots = kv.num_blocks * kv.block_size;
        if let Some(&s) = b.slot_mapping.iter().find(|&&s| s >= slots as i64) {
            return bad(format!("slot {s} beyond the cache's {slots} slots"));
        }
        if let Some(&i) = b.logits_indices.iter().find(|&&i| i as usize >= t) {
            return bad(format!("logits index {i} out of {t} tokens"));
        }
        for s in 0..n {
            let q_len = (b.query_start_loc[s + 1] - b.query_start_loc[s]) as usize;
            let ctx = b.seq_lens[s] as usize;
            if q_len > ctx {
                return bad(format!("sequence {s} has {q_len} new tokens but a context of {ctx}"));
            }
            if ctx.div_ceil(b.block_size) > b.max_blocks_per_seq {
                return bad(format!(
                    "sequence {s}: a context of {ctx} needs more than {} blocks",
                    b.max_blocks_per_seq
                ));
            }
            if let Some(&blk) = b.block_table(s)[..ctx.div_ceil(b.block_size)]
                .iter()
                .find(|&&blk| blk as usize >= kv.num_blocks)
            {
                return bad(format!(
                    "sequence {s}: block {blk} beyond the cache's {} blocks",
                    kv.num_blocks
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::RopeScaling;

    fn tiny_config(attention_bias: bool, tie_word_embeddings: bool, rope_scaling: RopeScaling) -> ModelConfig {
        ModelConfig {
            architecture: if attention_bias { "qwen2" } else { "llama" }.into(),
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            vocab_size: 97,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling,
            max_position_embeddings: 64,
            tie_word_embeddings,
            attention_bias,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    /// Every tensor the config calls for, random; `lm_head.weight` only when untied.
    fn random_weights(c: &ModelConfig, seed: u64) -> WeightStore {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut ws = WeightStore {
            source: "test".into(),
            ..Default::default()
        };
        let mut add = |name: String, rows: usize, cols: usize, lo: f32, hi: f32| {
            let data: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(lo..hi)).collect();
            ws.insert(name, WeightMatrix::from_f32(rows, cols, &data));
        };
        let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (qd, kvd) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        add("model.embed_tokens.weight".into(), c.vocab_size, h, -1.0, 1.0);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            add(format!("{p}.input_layernorm.weight"), 1, h, 0.8, 1.2);
            add(format!("{p}.self_attn.q_proj.weight"), qd, h, -0.25, 0.25);
            add(format!("{p}.self_attn.k_proj.weight"), kvd, h, -0.25, 0.25);
            add(format!("{p}.self_attn.v_proj.weight"), kvd, h, -0.25, 0.25);
            if c.attention_bias {
                add(format!("{p}.self_attn.q_proj.bias"), 1, qd, -0.5, 0.5);
                add(format!("{p}.self_attn.k_proj.bias"), 1, kvd, -0.5, 0.5);
                add(format!("{p}.self_attn.v_proj.bias"), 1, kvd, -0.5, 0.5);
            }
            add(format!("{p}.self_attn.o_proj.weight"), h, qd, -0.15, 0.15);
            add(format!("{p}.post_attention_layernorm.weight"), 1, h, 0.8, 1.2);
            add(format!("{p}.mlp.gate_proj.weight"), i, h, -0.2, 0.2);
            add(format!("{p}.mlp.up_proj.weight"), i, h, -0.2, 0.2);
            add(format!("{p}.mlp.down_proj.weight"), h, i, -0.15, 0.15);
        }
        add("model.norm.weight".into(), 1, h, 0.8, 1.2);
        if !c.tie_word_embeddings {
            add("lm_head.weight".into(), c.vocab_size, h, -0.3, 0.3);
        }
        ws
    }

    /// A sequence with its own (shuffled, non-contiguous) block table.
    struct Seq {
        tokens: Vec<u32>,
        table: Vec<u32>,
    }

    const BS: usize = 4;

    /// One batch scheduling tokens `start..end` of each listed sequence (context = `end` tokens), with logits
    /// for every scheduled token.
    fn make_batch(parts: &[(&Seq, usize, usize)]) -> InputBatch {
        let max_blocks = parts.iter().map(|(s, ..)| s.table.len()).max().unwrap();
        let mut b = InputBatch {
            block_size: BS,
            max_blocks_per_seq: max_blocks,
            ..Default::default()
        };
        b.query_start_loc.push(0);
        for (seq, start, end) in parts {
            for p in *start..*end {
                b.token_ids.push(seq.tokens[p]);
                b.positions.push(p as u32);
                b.slot_mapping.push((seq.table[p / BS] as usize * BS + p % BS) as i64);
            }
            let mut table = seq.table.clone();
            table.resize(max_blocks, 0);
            b.block_tables.extend(table);
            b.seq_lens.push(*end as u32);
            b.query_start_loc.push(b.token_ids.len() as u32);
        }
        b.logits_indices = (0..b.token_ids.len() as u32).collect();
        b.check();
        b
    }

    /// HF's forward written densely in f64 from the raw tensors: every row's logits, `[T, vocab]`.
    fn reference(c: &ModelConfig, ws: &WeightStore, tokens: &[u32]) -> Vec<f64> {
        let get = |n: &str| -> (Vec<f64>, usize) {
            let w = ws.matrix(n).unwrap();
            (ws.vector(n).unwrap().into_iter().map(|v| v as f64).collect(), w.cols)
        };
        let lin = |x: &[f64], n: &str| -> Vec<f64> {
            let (w, k) = get(n);
            let rows = w.len() / k;
            let mut y: Vec<f64> = x
                .chunks(k)
                .flat_map(|xr| {
                    (0..rows)
                        .map(|r| (0..k).map(|j| xr[j] * w[r * k + j]).sum::<f64>())
                        .collect::<Vec<_>>()
                })
                .collect();
            let bias = n.replace(".weight", ".bias");
            if ws.contains(&bias) {
                let (b, _) = get(&bias);
                y.chunks_mut(rows)
                    .for_each(|r| r.iter_mut().zip(&b).for_each(|(v, b)| *v += b));
            }
            y
        };
        let rms = |x: &[f64], n: &str| -> Vec<f64> {
            let (w, _) = get(n);
            x.chunks(w.len())
                .flat_map(|r| {
                    let inv =
                        1.0 / (r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64 + c.rms_norm_eps as f64).sqrt();
                    r.iter().zip(&w).map(|(v, w)| v * inv * w).collect::<Vec<_>>()
                })
                .collect()
        };
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let t = tokens.len();
        let pos_scale = match c.rope_scaling {
            RopeScaling::Linear { factor } => 1.0 / factor as f64,
            _ => 1.0,
        };
        let rope = |x: &mut [f64], heads: usize| {
            for p in 0..t {
                for hh in 0..heads {
                    let v = &mut x[(p * heads + hh) * hd..][..hd];
                    for i in 0..hd / 2 {
                        let f = 1.0 / (c.rope_theta as f64).powf(2.0 * i as f64 / hd as f64);
                        let a = p as f64 * pos_scale * f;
                        let (x1, x2) = (v[i], v[i + hd / 2]);
                        v[i] = x1 * a.cos() - x2 * a.sin();
                        v[i + hd / 2] = x2 * a.cos() + x1 * a.sin();
                    }
                }
            }
        };
        let (emb, _) = get("model.embed_tokens.weight");
        let mut x: Vec<f64> = tokens
            .iter()
            .flat_map(|&id| emb[id as usize * h..][..h].to_vec())
            .collect();
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let hn = rms(&x, &format!("{p}.input_layernorm.weight"));
            let mut q = lin(&hn, &format!("{p}.self_attn.q_proj.weight"));
            let mut k = lin(&hn, &format!("{p}.self_attn.k_proj.weight"));
            let v = lin(&hn, &format!("{p}.self_attn.v_proj.weight"));
            rope(&mut q, nh);
            rope(&mut k, nkv);
            let mut attn = vec![0.0f64; t * nh * hd];
            for i in 0..t {
                for hh in 0..nh {
                    let kh = hh / (nh / nkv);
                    let qv = &q[(i * nh + hh) * hd..][..hd];
                    let s: Vec<f64> = (0..=i)
                        .map(|j| (0..hd).map(|d| qv[d] * k[(j * nkv + kh) * hd + d]).sum::<f64>() / (hd as f64).sqrt())
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                    for d in 0..hd {
                        attn[(i * nh + hh) * hd + d] = (0..=i)
                            .map(|j| (s[j] - mx).exp() / z * v[(j * nkv + kh) * hd + d])
                            .sum::<f64>();
                    }
                }
            }
            let o = lin(&attn, &format!("{p}.self_attn.o_proj.weight"));
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let hn = rms(&x, &format!("{p}.post_attention_layernorm.weight"));
            let g = lin(&hn, &format!("{p}.mlp.gate_proj.weight"));
            let u = lin(&hn, &format!("{p}.mlp.up_proj.weight"));
            let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let d = lin(&act, &format!("{p}.mlp.down_proj.weight"));
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        let head = if ws.contains("lm_head.weight") {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        lin(&rms(&x, "model.norm.weight"), head)
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-4, "{what}: logit {i}: {a} vs {b}");
        }
    }

    fn random_tokens(n: usize, vocab: usize, rng: &mut impl Rng) -> Vec<u32> {
        (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
    }

    #[test]
    fn full_prompt_matches_dense_reference() {
        let c = tiny_config(false, false, RopeScaling::None);
        let ws = random_weights(&c, 1);
        let model = LlamaModel::new(&c, &ws).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let tokens = random_tokens(19, c.vocab_size, &mut rng);
        let seq = Seq {
            tokens: tokens.clone(),
            table: vec![7, 2, 9, 4, 1],
        };
        let mut kv = model.new_kv_cache(10, BS);
        let logits = model.forward(&make_batch(&[(&seq, 0, 19)]), &mut kv).unwrap();
        assert_close(&logits, &reference(&c, &ws, &tokens), "full prompt");
    }

    #[test]
    fn chunked_prefill_and_decode_through_paged_cache_match_one_pass() {
        let c = tiny_config(false, false, RopeScaling::None);
        let ws = random_weights(&c, 3);
        let model = LlamaModel::new(&c, &ws).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut ids: Vec<u32> = (1..16).collect();
        ids.shuffle(&mut rng);
        let a = Seq {
            tokens: random_tokens(23, c.vocab_size, &mut rng),
            table: ids[..6].to_vec(),
        };
        let b = Seq {
            tokens: random_tokens(13, c.vocab_size, &mut rng),
            table: ids[6..10].to_vec(),
        };

        let full = |s: &Seq| {
            let mut kv = model.new_kv_cache(16, BS);
            model.forward(&make_batch(&[(s, 0, s.tokens.len())]), &mut kv).unwrap()
        };
        let (full_a, full_b) = (full(&a), full(&b));
        let v = c.vocab_size;

        // a: chunks 0..10 and 10..19; then a decodes 19..23 while b prefills 0..9 and 9..12, and decodes 12.
        let mut kv = model.new_kv_cache(16, BS);
        let mut got_a = model.forward(&make_batch(&[(&a, 0, 10)]), &mut kv).unwrap();
        got_a.extend(model.forward(&make_batch(&[(&a, 10, 19)]), &mut kv).unwrap());
        let mut got_b = Vec::new();
        for (step, (bs, be)) in [(0, 9), (9, 12), (12, 13), (13, 13)].into_iter().enumerate() {
            let parts: Vec<(&Seq, usize, usize)> = if be > bs {
                vec![(&b, bs, be), (&a, 19 + step, 20 + step)]
            } else {
                vec![(&a, 19 + step, 20 + step)]
            };
            let out = model.forward(&make_batch(&parts), &mut kv).unwrap();
            let nb = (be - bs) * v;
            got_b.extend_from_slice(&out[..nb]);
            got_a.extend_from_slice(&out[nb..]);
        }
        for (got, want, name) in [(&got_a, &full_a, "a"), (&got_b, &full_b, "b")] {
            assert_eq!(got.len(), want.len());
            for (i, (x, y)) in got.iter().zip(want.iter()).enumerate() {
                assert!((x - y).abs() < 1e-4, "seq {name} logit {i}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn logits_only_for_requested_rows() {
        let c = tiny_config(false, false, RopeScaling::None);
        let ws = random_weights(&c, 5);
        let model = LlamaModel::new(&c, &ws).unwrap();
        let seq = Seq {
            tokens: vec![3, 1, 4, 1, 5, 9, 2],
            table: vec![3, 1],
        };
        let mut batch = make_batch(&[(&seq, 0, 7)]);
        let all = model.forward(&batch, &mut model.new_kv_cache(4, BS)).unwrap();
        batch.logits_indices = vec![6, 2];
        let some = model.forward(&batch, &mut model.new_kv_cache(4, BS)).unwrap();
        let v = c.vocab_size;
        assert_eq!(some.len(), 2 * v);
        // Not bit-equal: 7 rows take the matmul's gemm path, 2 rows the fused one (other summation order).
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(&some[..v], &all[6 * v..7 * v]) && close(&some[v..], &all[2 * v..3 * v]));
    }

    #[test]
    fn qwen2_biases_tied_embeddings_and_linear_rope_match_reference() {
        let c = tiny_config(true, true, RopeScaling::Linear { factor: 2.0 });
        let ws = random_weights(&c, 6);
        assert!(!ws.contains("lm_head.weight"));
        let model = LlamaModel::new(&c, &ws).unwrap();
        let tokens = vec![5, 96, 0, 42, 42, 17, 8, 3, 60];
        let seq = Seq {
            tokens: tokens.clone(),
            table: vec![2, 0, 1],
        };
        let logits = model
            .forward(&make_batch(&[(&seq, 0, 9)]), &mut model.new_kv_cache(3, BS))
            .unwrap();
        assert_close(&logits, &reference(&c, &ws, &tokens), "qwen2-style");
    }

    #[test]
    fn bad_shapes_and_inputs_are_errors_naming_the_problem() {
        let c = tiny_config(true, false, RopeScaling::None);
        let mut ws = random_weights(&c, 7);
        ws.insert(
            "model.layers.1.self_attn.q_proj.weight",
            WeightMatrix::from_f32(63, 64, &vec![0.0; 63 * 64]),
        );
        let err = LlamaModel::new(&c, &ws).err().unwrap().to_string();
        assert!(
            err.contains("model.layers.1.self_attn.q_proj.weight") && err.contains("[63, 64]"),
            "{err}"
        );

        let mut ws = random_weights(&c, 7);
        ws.tensors.remove("model.layers.0.self_attn.k_proj.bias");
        let err = LlamaModel::new(&c, &ws).err().unwrap().to_string();
        assert!(err.contains("model.layers.0.self_attn.k_proj.bias"), "{err}");

        let mut ws = random_weights(&c, 7);
        ws.insert("model.norm.weight", WeightMatrix::from_f32(1, 32, &[1.0; 32]));
        let err = LlamaModel::new(&c, &ws).err().unwrap().to_string();
        assert!(err.contains("model.norm.weight"), "{err}");

        let model = LlamaModel::new(&c, &random_weights(&c, 7)).unwrap();
        let seq = Seq {
            tokens: vec![1, 97],
            table: vec![1],
        };
        let err = model
            .forward(&make_batch(&[(&seq, 0, 2)]), &mut model.new_kv_cache(2, BS))
            .unwrap_err();
        assert!(err.to_string().contains("token id 97"), "{err}");
        let seq = Seq {
            tokens: vec![1, 2],
            table: vec![5],
        };
        let err = model
            .forward(&make_batch(&[(&seq, 0, 2)]), &mut model.new_kv_cache(2, BS))
            .unwrap_err();
        assert!(err.to_string().contains("slot"), "{err}");
    }
}
