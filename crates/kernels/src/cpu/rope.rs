//! Rotary position embeddings, HF "rotate_half" (NeoX) style: each head's dims `i` and `i + head_dim/2`
//! rotate together by angle `pos * inv_freq[i]`. (GGUF loaders undo llama.cpp's interleaving permutation of
//! the Q/K rows, so this is the right pairing for every weight source.)
//!
//! Angles are formed exactly as HF does in float32 — `(pos as f32) * inv_freq` rounded to f32 — and their
//! cos/sin are then taken in f64 and rounded, which matches torch's f32 cos/sin to the last bit or so.
//! `RopeTable` caches cos/sin for the first positions; later positions are computed on the fly (a Llama 3.1
//! table for all 131072 positions would cost 64 MiB for a few hundred nanoseconds saved per token).

use super::team::{par_chunks_mut, par_chunks_mut2};

/// Largest supported `head_dim / 2` (bounds the on-stack cos/sin of uncached positions).
const MAX_HALF: usize = 256;

/// HF default: `inv_freq[i] = 1 / theta^(2i / head_dim)`.
pub fn default_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| (1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect()
}

/// Linear scaling (position interpolation): positions divided by `factor`, i.e. `inv_freq / factor`.
pub fn linear_inv_freq(head_dim: usize, theta: f32, factor: f32) -> Vec<f32> {
    default_inv_freq(head_dim, theta)
        .into_iter()
        .map(|f| f / factor)
        .collect()
}

/// Llama 3.1 scaling (HF `_compute_llama3_parameters`): wavelengths longer than
/// `original_max / low_freq_factor` are slowed by `factor`, shorter than `original_max / high_freq_factor`
/// kept, and the band between interpolated smoothly.
pub fn llama3_inv_freq(
    head_dim: usize,
    theta: f32,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_max_position_embeddings: usize,
) -> Vec<f32> {
    let old_ctx = original_max_position_embeddings as f32;
    let low_freq_wavelen = old_ctx / low_freq_factor;
    let high_freq_wavelen = old_ctx / high_freq_factor;
    default_inv_freq(head_dim, theta)
        .into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// LongRoPE (HF `_compute_longrope_parameters`, Phi-3): `inv_freq[i] = 1 / (ext[i] * theta^(2i / rotary_dim))`
/// with `ext` the short or the long rescale factors (`rotary_dim / 2` of them: one frequency per factor).
pub fn longrope_inv_freq(rotary_dim: usize, theta: f32, ext_factors: &[f32]) -> Vec<f32> {
    ext_factors
        .iter()
        .enumerate()
        .map(|(i, &ext)| (1.0 / (ext as f64 * (theta as f64).powf((2 * i) as f64 / rotary_dim as f64))) as f32)
        .collect()
}

/// cos/sin of `pos * inv_freq` (times the attention factor) for the first `cached_positions` positions,
/// computed once; rotates the first `2 * inv_freq.len()` dims of each `head_dim`-wide head.
pub struct RopeTable {
    inv_freq: Vec<f32>,
    head_dim: usize,
    attention_factor: f32,
    cached: usize,
    /// `[cached, half]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Full-head RoPE (`head_dim = 2 * inv_freq.len()`), no attention factor.
    pub fn new(inv_freq: Vec<f32>, cached_positions: usize) -> Self {
        let hd = 2 * inv_freq.len();
        Self::partial(inv_freq, hd, 1.0, cached_positions)
    }

    /// RoPE on the first `2 * inv_freq.len()` of `head_dim` dims, cos and sin times `attention_factor`.
    /// Panics if `inv_freq` is empty, longer than 256 or wider than `head_dim` (the backend checks first).
    pub fn partial(inv_freq: Vec<f32>, head_dim: usize, attention_factor: f32, cached_positions: usize) -> Self {
        let half = inv_freq.len();
        assert!(
            half > 0 && half <= MAX_HALF && 2 * half <= head_dim,
            "RoPE: {half} frequencies for head_dim {head_dim}"
        );
        let mut cos = vec![0.0f32; cached_positions * half];
        let mut sin = vec![0.0f32; cached_positions * half];
        for p in 0..cached_positions {
            angles(
                &inv_freq,
                attention_factor,
                p as u32,
                &mut cos[p * half..(p + 1) * half],
                &mut sin[p * half..(p + 1) * half],
            );
        }
        Self {
            inv_freq,
            head_dim,
            attention_factor,
            cached: cached_positions,
            cos,
            sin,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The rotated leading dims of each head.
    pub fn rotary_dim(&self) -> usize {
        2 * self.inv_freq.len()
    }

    /// Calls `f(cos, sin)` with the `rotary_dim / 2` values of position `pos`.
    #[inline]
    fn with_angles<R>(&self, pos: u32, f: impl FnOnce(&[f32], &[f32]) -> R) -> R {
        let half = self.inv_freq.len();
        let p = pos as usize;
        if p < self.cached {
            f(&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half])
        } else {
            let (mut c, mut s) = ([0.0f32; MAX_HALF], [0.0f32; MAX_HALF]);
            angles(
                &self.inv_freq,
                self.attention_factor,
                pos,
                &mut c[..half],
                &mut s[..half],
            );
            f(&c[..half], &s[..half])
        }
    }

    /// Rotates `x` (`[T, n_heads, head_dim]`) in place, token `t` at `positions[t]`.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, positions: &[u32]) {
        let (row, hd) = (n_heads * self.head_dim, self.head_dim);
        assert_eq!(
            x.len(),
            positions.len() * row,
            "RoPE: x is not [{}, {n_heads}, {hd}]",
            positions.len()
        );
        // Eight tokens per task: one token's rotation is too little work to hand to another thread.
        par_chunks_mut(x, 8 * row, |i, xs| {
            for (xt, &pos) in xs.chunks_exact_mut(row).zip(&positions[i * 8..]) {
                self.with_angles(pos, |c, s| rotate_heads(xt, hd, c, s));
            }
        });
    }

    /// Rotates q (`[T, n_heads, head_dim]`) and k (`[T, n_kv_heads, head_dim]`) in place, sharing each
    /// token's cos/sin between them.
    pub fn apply_qk(&self, q: &mut [f32], n_heads: usize, k: &mut [f32], n_kv_heads: usize, positions: &[u32]) {
        let hd = self.head_dim;
        let t = positions.len();
        assert_eq!(q.len(), t * n_heads * hd, "RoPE: q is not [{t}, {n_heads}, {hd}]");
        assert_eq!(k.len(), t * n_kv_heads * hd, "RoPE: k is not [{t}, {n_kv_heads}, {hd}]");
        if t == 0 {
            return;
        }
        let (qr, kr) = (n_heads * hd, n_kv_heads * hd);
        par_chunks_mut2(q, 8 * qr, k, 8 * kr, |i, qs, ks| {
            for ((qt, kt), &pos) in qs
                .chunks_exact_mut(qr)
                .zip(ks.chunks_exact_mut(kr))
                .zip(&positions[i * 8..])
            {
                self.with_angles(pos, |c, s| {
                    rotate_heads(qt, hd, c, s);
                    rotate_heads(kt, hd, c, s);
                })
            }
        });
    }
}

/// HF's order: the angle in f32, its cos/sin (to f32), then times the attention factor in f32.
fn angles(inv_freq: &[f32], attention_factor: f32, pos: u32, cos: &mut [f32], sin: &mut [f32]) {
    for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
        let a = (pos as f32 * f) as f64;
        *c = a.cos() as f32 * attention_factor;
        *s = a.sin() as f32 * attention_factor;
    }
}

/// `x * cos + rotate_half(x) * sin` on the first `2 * cos.len()` dims of every `head_dim`-wide head in `x`;
/// the other dims are left as they are.
#[inline]
fn rotate_heads(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in x.chunks_exact_mut(head_dim) {
        let (a, b) = head[..2 * half].split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// HF's formulation verbatim in f64: `q * cat(cos, cos) + cat(-x2, x1) * cat(sin, sin)`.
    fn reference(x: &[f32], hd: usize, pos: &[u32], inv: &[f32]) -> Vec<f64> {
        let half = hd / 2;
        let per_tok = x.len() / pos.len();
        let mut out = vec![0.0f64; x.len()];
        for (i, v) in x.iter().enumerate() {
            let (t, d) = (i / per_tok, i % hd);
            let head = i - d;
            let a = (pos[t] as f32 * inv[d % half]) as f64;
            let rot = if d < half {
                -(x[head + d + half] as f64)
            } else {
                x[head + d - half] as f64
            };
            out[i] = *v as f64 * a.cos() + rot * a.sin();
        }
        out
    }

    #[test]
    fn rotation_matches_hf_formula_cached_or_not() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for hd in [16usize, 64, 128] {
            let inv = default_inv_freq(hd, 10000.0);
            let table = RopeTable::new(inv.clone(), 50);
            let pos: Vec<u32> = vec![0, 1, 49, 50, 7, 4000, 123_456];
            let (nh, nkv) = (4, 2);
            let q: Vec<f32> = (0..pos.len() * nh * hd)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let k: Vec<f32> = (0..pos.len() * nkv * hd)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let (mut q2, mut k2, mut q3) = (q.clone(), k.clone(), q.clone());
            table.apply_qk(&mut q2, nh, &mut k2, nkv, &pos);
            table.apply(&mut q3, nh, &pos);
            assert_eq!(q2, q3);
            for (got, want) in [
                (&q2, reference(&q, hd, &pos, &inv)),
                (&k2, reference(&k, hd, &pos, &inv)),
            ] {
                for (a, b) in got.iter().zip(want) {
                    assert!((*a as f64 - b).abs() < 1e-6, "hd {hd}: {a} vs {b}");
                }
            }
        }
    }

    /// Partial rotary with a cos/sin factor (Phi-4-mini: 96 of 128 dims; LongRoPE's attention factor): HF's
    /// `cat(q_rot * cos + rotate_half(q_rot) * sin, q_pass)` with `cos, sin` times the factor.
    #[test]
    fn partial_rotary_with_attention_factor_matches_hf_formula() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (hd, rot, af) = (16usize, 12usize, 1.3f32);
        let inv = longrope_inv_freq(rot, 10000.0, &[1.0, 1.5, 2.0, 3.0, 4.0, 8.0]);
        assert_eq!(inv.len(), rot / 2);
        let table = RopeTable::partial(inv.clone(), hd, af, 4);
        let pos: Vec<u32> = vec![0, 3, 4, 1000];
        let nh = 3;
        let x: Vec<f32> = (0..pos.len() * nh * hd)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let mut got = x.clone();
        table.apply(&mut got, nh, &pos);
        let half = rot / 2;
        for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
            let (t, d) = (i / (nh * hd), i % hd);
            let head = i - d;
            let want = if d >= rot {
                v as f64
            } else {
                let a = (pos[t] as f32 * inv[d % half]) as f64;
                let (c, s) = ((a.cos() as f32 * af) as f64, (a.sin() as f32 * af) as f64);
                let rotated = if d < half {
                    -(x[head + d + half] as f64)
                } else {
                    x[head + d - half] as f64
                };
                v as f64 * c + rotated * s
            };
            assert!((g as f64 - want).abs() < 1e-6, "dim {d} of token {t}: {g} vs {want}");
        }
        // The pass-through dims are untouched bit for bit.
        assert!(got.chunks(hd).zip(x.chunks(hd)).all(|(a, b)| a[rot..] == b[rot..]));
        // LongRoPE frequencies: 1 / (ext * theta^(2i / rot)).
        let want = 1.0 / (1.5 * 10000f64.powf(2.0 / 12.0));
        assert!(((inv[1] as f64 - want) / want).abs() < 1e-6, "{} vs {want}", inv[1]);
    }

    #[test]
    fn inv_freq_variants() {
        let d = default_inv_freq(8, 10000.0);
        assert_eq!(d[0], 1.0);
        assert!((d[1] - 0.1).abs() < 1e-7 && (d[3] - 0.001).abs() < 1e-9);
        let l = linear_inv_freq(8, 10000.0, 4.0);
        assert!(d.iter().zip(&l).all(|(a, b)| (a / 4.0 - b).abs() < 1e-12));

        // Llama 3.1 (factor 8, low 1, high 4, original 8192, theta 500000, head_dim 128): wavelengths under
        // 2048 are kept, over 8192 divided by 8, the band between interpolated.
        let base = default_inv_freq(128, 500000.0);
        let scaled = llama3_inv_freq(128, 500000.0, 8.0, 1.0, 4.0, 8192);
        for (f, s) in base.iter().zip(&scaled) {
            let wl = 2.0 * std::f32::consts::PI / f;
            if wl < 2048.0 {
                assert_eq!(f, s);
            } else if wl > 8192.0 {
                assert_eq!(f / 8.0, *s);
            } else {
                assert!(
                    *s < *f && *s > f / 8.0,
                    "medium band: {s} not between {} and {f}",
                    f / 8.0
                );
            }
        }
        // All three regimes occur for these parameters.
        assert!(scaled[0] == base[0] && scaled[63] == base[63] / 8.0);
    }
}
