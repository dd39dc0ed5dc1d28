use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use pagedllm_kernels::cpu::{CpuBackend, CpuError, CpuPrecision};
use pagedllm_kernels::InputBatch;

use super::*;
use crate::model::{DecoderVariant, HiddenActivation, RopeScaling};

/// A model loaded onto its own CPU backend (a fresh KV cache of `num_blocks` blocks).
struct OnCpu {
    model: LlamaModel,
    backend: CpuBackend,
}

fn on_cpu(c: &ModelConfig, ws: &WeightStore, num_blocks: usize) -> Result<OnCpu> {
    // Exact mode: the model is checked against a float reference.
    let mut backend = CpuBackend::new(LlamaModel::kv_layout(c), num_blocks, BS, c.max_position_embeddings)
        .with_precision(CpuPrecision::Exact);
    let model = LlamaModel::load(c, ws, &mut backend)?;
    Ok(OnCpu { model, backend })
}

impl OnCpu {
    /// One step; the logits of the batch's logits rows.
    fn forward(&mut self, batch: &InputBatch) -> std::result::Result<Vec<f32>, CpuError> {
        let mut batch = batch.clone();
        let model = &self.model;
        self.backend.run_step(&mut batch, &mut |b| model.forward(b))?;
        let mut logits = Vec::new();
        self.backend.logits_to_host(&mut logits)?;
        Ok(logits)
    }
}

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
        qk_norm: false,
        sliding_window: None,
        variant: Default::default(),
        moe: None,
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
    // Gemma's norms multiply by (1 + w): their weights sit around 0.
    let (nlo, nhi) = if c.variant.norm_unit_offset { (-0.2, 0.2) } else { (0.8, 1.2) };
    add("model.embed_tokens.weight".into(), c.vocab_size, h, -1.0, 1.0);
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), 1, h, nlo, nhi);
        if c.variant.sandwich_norms {
            add(format!("{p}.pre_feedforward_layernorm.weight"), 1, h, nlo, nhi);
            add(format!("{p}.post_feedforward_layernorm.weight"), 1, h, nlo, nhi);
        }
        add(format!("{p}.self_attn.q_proj.weight"), qd, h, -0.25, 0.25);
        add(format!("{p}.self_attn.k_proj.weight"), kvd, h, -0.25, 0.25);
        add(format!("{p}.self_attn.v_proj.weight"), kvd, h, -0.25, 0.25);
        if c.attention_bias {
            add(format!("{p}.self_attn.q_proj.bias"), 1, qd, -0.5, 0.5);
            add(format!("{p}.self_attn.k_proj.bias"), 1, kvd, -0.5, 0.5);
            add(format!("{p}.self_attn.v_proj.bias"), 1, kvd, -0.5, 0.5);
        }
        if c.qk_norm {
            add(format!("{p}.self_attn.q_norm.weight"), 1, hd, nlo - 0.3, nhi + 0.3);
            add(format!("{p}.self_attn.k_norm.weight"), 1, hd, nlo - 0.3, nhi + 0.3);
        }
        add(format!("{p}.self_attn.o_proj.weight"), h, qd, -0.15, 0.15);
        add(format!("{p}.post_attention_layernorm.weight"), 1, h, nlo, nhi);
        add(format!("{p}.mlp.gate_proj.weight"), i, h, -0.2, 0.2);
        add(format!("{p}.mlp.up_proj.weight"), i, h, -0.2, 0.2);
        add(format!("{p}.mlp.down_proj.weight"), h, i, -0.15, 0.15);
    }
    add("model.norm.weight".into(), 1, h, nlo, nhi);
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
                // Gemma: (1 + w).
                let off = if c.variant.norm_unit_offset { 1.0 } else { 0.0 };
                r.iter().zip(&w).map(|(v, w)| v * inv * (off + w)).collect::<Vec<_>>()
            })
            .collect()
    };
    let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
    let t = tokens.len();
    let pos_scale = match c.rope_scaling {
        RopeScaling::Linear { factor } => 1.0 / factor as f64,
        _ => 1.0,
    };
    let var = &c.variant;
    // Gemma 3's local layers: their own base, unscaled.
    let rope = |x: &mut [f64], heads: usize, layer: usize| {
        let (theta, pos_scale) = match var.rope_local_theta {
            Some(local) if c.layer_window(layer).is_some() => (local as f64, 1.0),
            _ => (c.rope_theta as f64, pos_scale),
        };
        for p in 0..t {
            for hh in 0..heads {
                let v = &mut x[(p * heads + hh) * hd..][..hd];
                for i in 0..hd / 2 {
                    let f = 1.0 / theta.powf(2.0 * i as f64 / hd as f64);
                    let a = p as f64 * pos_scale * f;
                    let (x1, x2) = (v[i], v[i + hd / 2]);
                    v[i] = x1 * a.cos() - x2 * a.sin();
                    v[i + hd / 2] = x2 * a.cos() + x1 * a.sin();
                }
            }
        }
    };
    let (emb, _) = get("model.embed_tokens.weight");
    let embed_scale = if var.scale_embeddings { (h as f64).sqrt() } else { 1.0 };
    let mut x: Vec<f64> = tokens
        .iter()
        .flat_map(|&id| emb[id as usize * h..][..h].iter().map(|e| e * embed_scale).collect::<Vec<_>>())
        .collect();
    let scale = 1.0 / var.query_pre_attn_scalar.map_or(hd as f64, |s| s as f64).sqrt();
    let cap = |s: f64, c: Option<f32>| c.map_or(s, |c| (s / c as f64).tanh() * c as f64);
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let hn = rms(&x, &format!("{p}.input_layernorm.weight"));
        let mut q = lin(&hn, &format!("{p}.self_attn.q_proj.weight"));
        let mut k = lin(&hn, &format!("{p}.self_attn.k_proj.weight"));
        let v = lin(&hn, &format!("{p}.self_attn.v_proj.weight"));
        if c.qk_norm {
            // Qwen3: RMSNorm over each head's head_dim values.
            q = rms(&q, &format!("{p}.self_attn.q_norm.weight"));
            k = rms(&k, &format!("{p}.self_attn.k_norm.weight"));
        }
        rope(&mut q, nh, l);
        rope(&mut k, nkv, l);
        let mut attn = vec![0.0f64; t * nh * hd];
        for i in 0..t {
            for hh in 0..nh {
                let kh = hh / (nh / nkv);
                let qv = &q[(i * nh + hh) * hd..][..hd];
                // Mistral, Gemma's local layers: only the last `sliding_window` positions.
                let lo = c.layer_window(l).map_or(0, |w| (i + 1).saturating_sub(w));
                let s: Vec<f64> = (lo..=i)
                    .map(|j| {
                        let dot = (0..hd).map(|d| qv[d] * k[(j * nkv + kh) * hd + d]).sum::<f64>();
                        cap(dot * scale, var.attn_logit_softcap)
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                for d in 0..hd {
                    attn[(i * nh + hh) * hd + d] = (lo..=i)
                        .map(|j| (s[j - lo] - mx).exp() / z * v[(j * nkv + kh) * hd + d])
                        .sum::<f64>();
                }
            }
        }
        let mut o = lin(&attn, &format!("{p}.self_attn.o_proj.weight"));
        if var.sandwich_norms {
            o = rms(&o, &format!("{p}.post_attention_layernorm.weight"));
        }
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let mlp_norm = if var.sandwich_norms { "pre_feedforward_layernorm" } else { "post_attention_layernorm" };
        let hn = rms(&x, &format!("{p}.{mlp_norm}.weight"));
        let g = lin(&hn, &format!("{p}.mlp.gate_proj.weight"));
        let u = lin(&hn, &format!("{p}.mlp.up_proj.weight"));
        let act: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, u)| match var.activation {
                HiddenActivation::Silu => g / (1.0 + (-g).exp()) * u,
                HiddenActivation::GeluTanh => {
                    0.5 * g * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh()) * u
                }
            })
            .collect();
        let mut d = lin(&act, &format!("{p}.mlp.down_proj.weight"));
        if var.sandwich_norms {
            d = rms(&d, &format!("{p}.post_feedforward_layernorm.weight"));
        }
        x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
    }
    let head = if ws.contains("lm_head.weight") {
        "lm_head.weight"
    } else {
        "model.embed_tokens.weight"
    };
    let logits = lin(&rms(&x, "model.norm.weight"), head);
    logits.into_iter().map(|z| cap(z, var.final_logit_softcap)).collect()
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
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let tokens = random_tokens(19, c.vocab_size, &mut rng);
    let seq = Seq {
        tokens: tokens.clone(),
        table: vec![7, 2, 9, 4, 1],
    };
    let logits = on_cpu(&c, &ws, 10).unwrap().forward(&make_batch(&[(&seq, 0, 19)])).unwrap();
    assert_close(&logits, &reference(&c, &ws, &tokens), "full prompt");
}

#[test]
fn chunked_prefill_and_decode_through_paged_cache_match_one_pass() {
    let c = tiny_config(false, false, RopeScaling::None);
    let ws = random_weights(&c, 3);
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
        on_cpu(&c, &ws, 16).unwrap().forward(&make_batch(&[(s, 0, s.tokens.len())])).unwrap()
    };
    let (full_a, full_b) = (full(&a), full(&b));
    let v = c.vocab_size;

    // a: chunks 0..10 and 10..19; then a decodes 19..23 while b prefills 0..9 and 9..12, and decodes 12.
    let mut m = on_cpu(&c, &ws, 16).unwrap();
    let mut got_a = m.forward(&make_batch(&[(&a, 0, 10)])).unwrap();
    got_a.extend(m.forward(&make_batch(&[(&a, 10, 19)])).unwrap());
    let mut got_b = Vec::new();
    for (step, (bs, be)) in [(0, 9), (9, 12), (12, 13), (13, 13)].into_iter().enumerate() {
        let parts: Vec<(&Seq, usize, usize)> = if be > bs {
            vec![(&b, bs, be), (&a, 19 + step, 20 + step)]
        } else {
            vec![(&a, 19 + step, 20 + step)]
        };
        let out = m.forward(&make_batch(&parts)).unwrap();
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
    let seq = Seq {
        tokens: vec![3, 1, 4, 1, 5, 9, 2],
        table: vec![3, 1],
    };
    let mut batch = make_batch(&[(&seq, 0, 7)]);
    let all = on_cpu(&c, &ws, 4).unwrap().forward(&batch).unwrap();
    batch.logits_indices = vec![6, 2];
    let some = on_cpu(&c, &ws, 4).unwrap().forward(&batch).unwrap();
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
    let tokens = vec![5, 96, 0, 42, 42, 17, 8, 3, 60];
    let seq = Seq {
        tokens: tokens.clone(),
        table: vec![2, 0, 1],
    };
    let logits = on_cpu(&c, &ws, 3).unwrap().forward(&make_batch(&[(&seq, 0, 9)])).unwrap();
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
    let err = on_cpu(&c, &ws, 2).err().unwrap().to_string();
    assert!(
        err.contains("model.layers.1.self_attn.q_proj.weight") && err.contains("[63, 64]"),
        "{err}"
    );

    let mut ws = random_weights(&c, 7);
    ws.tensors.remove("model.layers.0.self_attn.k_proj.bias");
    let err = on_cpu(&c, &ws, 2).err().unwrap().to_string();
    assert!(err.contains("model.layers.0.self_attn.k_proj.bias"), "{err}");

    let mut ws = random_weights(&c, 7);
    ws.insert("model.norm.weight", WeightMatrix::from_f32(1, 32, &[1.0; 32]));
    let err = on_cpu(&c, &ws, 2).err().unwrap().to_string();
    assert!(err.contains("model.norm.weight"), "{err}");

    let ws = random_weights(&c, 7);
    let seq = Seq {
        tokens: vec![1, 97],
        table: vec![1],
    };
    let err = on_cpu(&c, &ws, 2).unwrap().forward(&make_batch(&[(&seq, 0, 2)])).unwrap_err();
    assert!(err.to_string().contains("token id 97"), "{err}");
    let seq = Seq {
        tokens: vec![1, 2],
        table: vec![5],
    };
    let err = on_cpu(&c, &ws, 2).unwrap().forward(&make_batch(&[(&seq, 0, 2)])).unwrap_err();
    assert!(err.to_string().contains("slot"), "{err}");
}

#[test]
fn qwen3_qk_norm_matches_reference_across_chunks() {
    let mut c = tiny_config(false, true, RopeScaling::None);
    c.architecture = "qwen3".into();
    c.qk_norm = true;
    let ws = random_weights(&c, 8);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let tokens = random_tokens(14, c.vocab_size, &mut rng);
    let seq = Seq {
        tokens: tokens.clone(),
        table: vec![3, 0, 2, 1],
    };
    let mut m = on_cpu(&c, &ws, 4).unwrap();
    let mut logits = m.forward(&make_batch(&[(&seq, 0, 9)])).unwrap();
    logits.extend(m.forward(&make_batch(&[(&seq, 9, 14)])).unwrap());
    assert_close(&logits, &reference(&c, &ws, &tokens), "qwen3-style");

    // The norm weights are required when the config asks for them.
    let mut ws = ws;
    ws.tensors.remove("model.layers.1.self_attn.k_norm.weight");
    let err = on_cpu(&c, &ws, 4).err().unwrap().to_string();
    assert!(err.contains("model.layers.1.self_attn.k_norm.weight"), "{err}");
}

#[test]
fn mistral_sliding_window_matches_reference_through_chunks_and_decodes() {
    let mut c = tiny_config(false, false, RopeScaling::None);
    c.architecture = "mistral".into();
    c.sliding_window = Some(5);
    let ws = random_weights(&c, 10);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let tokens = random_tokens(17, c.vocab_size, &mut rng);
    let seq = Seq {
        tokens: tokens.clone(),
        table: vec![4, 1, 3, 0, 2],
    };
    let mut m = on_cpu(&c, &ws, 5).unwrap();
    let mut logits = m.forward(&make_batch(&[(&seq, 0, 7)])).unwrap();
    logits.extend(m.forward(&make_batch(&[(&seq, 7, 13)])).unwrap());
    for p in 13..17 {
        logits.extend(m.forward(&make_batch(&[(&seq, p, p + 1)])).unwrap());
    }
    let want = reference(&c, &ws, &tokens);
    assert_close(&logits, &want, "mistral window 5");
    // The window changes the result (so the comparison above is not vacuous).
    let mut full = c.clone();
    full.sliding_window = None;
    let unwindowed = reference(&full, &ws, &tokens);
    let v = c.vocab_size;
    assert!(want[16 * v..].iter().zip(&unwindowed[16 * v..]).any(|(a, b)| (a - b).abs() > 1e-3));
}

/// A Gemma-shaped tiny config: 2 layers, layer 0 local (window 5), layer 1 global.
fn gemma_config(gemma3: bool) -> ModelConfig {
    let mut c = tiny_config(false, true, if gemma3 { RopeScaling::Linear { factor: 2.0 } } else { RopeScaling::None });
    c.architecture = if gemma3 { "gemma3_text" } else { "gemma2" }.into();
    c.sliding_window = Some(5);
    c.qk_norm = gemma3;
    c.variant = DecoderVariant {
        norm_unit_offset: true,
        scale_embeddings: true,
        sandwich_norms: true,
        activation: HiddenActivation::GeluTanh,
        query_pre_attn_scalar: Some(c.head_dim as f32 * 2.0),
        // Small caps, so that they bend these logits.
        attn_logit_softcap: (!gemma3).then_some(1.5),
        final_logit_softcap: (!gemma3).then_some(2.0),
        sliding_layers: vec![true, false],
        rope_local_theta: gemma3.then_some(50.0),
        rotary_dim: None,
    };
    c
}

#[test]
fn gemma_blocks_match_reference_through_chunks_and_decodes() {
    for gemma3 in [false, true] {
        let c = gemma_config(gemma3);
        assert_eq!(c.num_hidden_layers, 2);
        let ws = random_weights(&c, 20 + gemma3 as u64);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let tokens = random_tokens(15, c.vocab_size, &mut rng);
        let seq = Seq {
            tokens: tokens.clone(),
            table: vec![3, 0, 2, 1],
        };
        let mut m = on_cpu(&c, &ws, 4).unwrap();
        let mut logits = m.forward(&make_batch(&[(&seq, 0, 6)])).unwrap();
        logits.extend(m.forward(&make_batch(&[(&seq, 6, 11)])).unwrap());
        for p in 11..15 {
            logits.extend(m.forward(&make_batch(&[(&seq, p, p + 1)])).unwrap());
        }
        let want = reference(&c, &ws, &tokens);
        let what = if gemma3 { "gemma3" } else { "gemma2" };
        assert_close(&logits, &want, what);
        if !gemma3 {
            // The final cap bounds every logit.
            assert!(logits.iter().all(|z| z.abs() <= 2.0), "{what}: a logit beyond the final soft-cap");
        }
        // Each Gemma switch changes the result (so the comparison above is not vacuous).
        let v = c.vocab_size;
        let differs = |other: &ModelConfig| {
            let r = reference(other, &ws, &tokens);
            r[14 * v..].iter().zip(&want[14 * v..]).any(|(a, b)| (a - b).abs() > 1e-3)
        };
        let mut off = c.clone();
        off.variant.scale_embeddings = false;
        assert!(differs(&off), "{what}: embedding scale");
        let mut off = c.clone();
        off.variant.sliding_layers = vec![false, false];
        assert!(differs(&off), "{what}: local layer window");
        let mut off = c.clone();
        off.variant.activation = HiddenActivation::Silu;
        assert!(differs(&off), "{what}: GELU-tanh");
        if gemma3 {
            let mut off = c.clone();
            off.variant.rope_local_theta = None;
            assert!(differs(&off), "{what}: local RoPE base");
        } else {
            let mut off = c.clone();
            off.variant.attn_logit_softcap = None;
            assert!(differs(&off), "{what}: attention soft-cap");
        }
    }
}

#[test]
fn gemma_layer_types_must_cover_every_layer() {
    let mut c = gemma_config(false);
    c.variant.sliding_layers = vec![true];
    let ws = random_weights(&c, 3);
    let e = on_cpu(&c, &ws, 4).err().expect("refused").to_string();
    assert!(e.contains("1 layer types for 2 layers"), "{e}");
    let mut c = gemma_config(false);
    c.variant.final_logit_softcap = Some(0.0);
    let e = on_cpu(&c, &ws, 4).err().expect("refused").to_string();
    assert!(e.contains("soft-caps"), "{e}");
}
