//! Causal attention of a flattened varlen batch over the paged KV cache (vLLM's PagedAttention, on the CPU).
//!
//! Token `i` of sequence `b` (which owns `q_len` new tokens at the end of its `seq_lens[b]`-token context)
//! sits at position `pos = seq_lens[b] - q_len + i` and attends to positions `0..=pos` — or, with a sliding
//! window `w` (Mistral, Gemma's local layers), to `pos + 1 - w..=pos` only, the positions before never being
//! read (their blocks may already be freed) — whose K/V live in
//! slot `block_table[p / block_size] * block_size + p % block_size`. GQA: query head `h` reads KV head
//! `h / (num_heads / num_kv_heads)`.
//!
//! Work is split over (token, KV head) pairs so each K/V row is read once for its whole group of query heads.
//! Each pair scores its context into thread-local scratch, takes a max-subtracted softmax in f32 and sums V.
//! When a batch has too few pairs to fill the threads (a decode step of a few sequences) and contexts are long,
//! each pair's context is also split into partitions whose partial softmax states are merged afterwards (the
//! "flash-decoding" split), so long-context decode still uses every core.

use std::cell::RefCell;

use super::kv_cache::{KvCache, KvData, KvElem, Planes};
use super::vec::{axpy, has_avx2_fma, scale as scale_vec};
use crate::backend::AttentionSpec;
use crate::batch::InputBatch;

/// Fewest context positions per partition of the split path (shorter ones cost more in merging than they save).
const MIN_PARTITION: usize = 128;

/// Largest supported number of query heads per KV head.
const MAX_GROUP: usize = 64;

/// `out = softmax(s) V` per token and head, `s = q Kᵀ * scale` (soft-capped to `c * tanh(s / c)` when
/// `spec.softcap` is set, as Gemma 2 does); `q`, `out`: `[T, num_heads, head_dim]`.
///
/// Panics if the arrays disagree with the batch and cache geometry (the model checks the batch first).
pub fn paged_attention(
    q: &[f32],
    kv: &KvCache,
    layer: usize,
    batch: &InputBatch,
    num_heads: usize,
    spec: &AttentionSpec,
    out: &mut [f32],
) {
    // Split contexts only when the (token, KV head) pairs alone cannot keep the threads busy.
    let pairs = batch.num_tokens() * kv.num_kv_heads;
    let threads = super::team::current_threads();
    let partition = if pairs < 2 * threads {
        // About 4 items per thread over the longest context, at least MIN_PARTITION positions each.
        let longest = batch.seq_lens.iter().copied().max().unwrap_or(0) as usize;
        let per_pair = (4 * threads).div_ceil(pairs.max(1));
        longest.div_ceil(per_pair).max(MIN_PARTITION)
    } else {
        usize::MAX
    };
    attend_cache(q, kv, layer, batch, num_heads, spec, out, partition)
}

/// `attention_impl` over the cache's element type.
#[allow(clippy::too_many_arguments)]
fn attend_cache(
    q: &[f32],
    kv: &KvCache,
    layer: usize,
    batch: &InputBatch,
    num_heads: usize,
    spec: &AttentionSpec,
    out: &mut [f32],
    partition: usize,
) {
    match &kv.data {
        KvData::F32(p) => attention_impl(q, kv, p, layer, batch, num_heads, spec, out, partition),
        KvData::F16(p) => attention_impl(q, kv, p, layer, batch, num_heads, spec, out, partition),
    }
}

/// The cache geometry one (token, KV head) pair needs.
#[derive(Clone, Copy)]
struct Geo {
    block_size: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

thread_local! {
    /// Scores `[group, positions]` of the pair being computed, reused across calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
fn attention_impl<T: KvElem>(
    q: &[f32],
    kv: &KvCache,
    planes: &Planes<T>,
    layer: usize,
    batch: &InputBatch,
    num_heads: usize,
    spec: &AttentionSpec,
    out: &mut [f32],
    // Context positions per partition; contexts of fewer than two partitions are not split.
    partition: usize,
) {
    let geo = Geo {
        block_size: kv.block_size,
        num_kv_heads: kv.num_kv_heads,
        head_dim: kv.head_dim,
    };
    let (hd, nkv) = (geo.head_dim, geo.num_kv_heads);
    let t = batch.num_tokens();
    assert!(
        nkv > 0 && num_heads % nkv == 0,
        "attention: {num_heads} heads do not divide into {nkv} KV heads"
    );
    let group = num_heads / nkv;
    assert!(
        group <= MAX_GROUP,
        "attention: {group} query heads per KV head is more than {MAX_GROUP}"
    );
    assert_eq!(
        q.len(),
        t * num_heads * hd,
        "attention: q is not [{t}, {num_heads}, {hd}]"
    );
    assert_eq!(out.len(), q.len(), "attention: out and q differ in length");
    assert_eq!(
        batch.block_size, kv.block_size,
        "attention: batch and cache block sizes differ"
    );
    assert!(layer < kv.num_layers, "attention: layer {layer} out of range");
    if t == 0 {
        return;
    }
    let (kc, vc) = (&planes.k[layer][..], &planes.v[layer][..]);
    let avx2 = has_avx2_fma();
    let score = Score {
        scale: spec.scale,
        softcap: spec.softcap.unwrap_or(0.0),
    };

    // Work items: one per (token, KV head) pair, or per partition of its context when `partition` splits it.
    // Items are flattened (not nested) so the threads share the partitions of every pair.
    let span = |job: usize| -> (usize, std::ops::Range<usize>) {
        let (tok, b) = (job / nkv, seq_of(batch, job / nkv));
        let q_start = batch.query_start_loc[b] as usize;
        let q_len = batch.query_start_loc[b + 1] as usize - q_start;
        let ctx = batch.seq_lens[b] as usize - q_len + (tok - q_start) + 1;
        // The first position this token sees.
        let lo = spec.sliding_window.map_or(0, |w| ctx.saturating_sub(w as usize));
        (b, lo..ctx)
    };
    let parts_of = |job: usize| {
        let n = span(job).1.len();
        if n.div_ceil(partition) < 2 {
            1
        } else {
            n.div_ceil(partition)
        }
    };
    // first_item[j]: the first item of pair j; items of split pairs write partial states into `partials`.
    let jobs = t * nkv;
    let mut first_item = Vec::with_capacity(jobs + 1);
    let mut items = 0usize;
    for j in 0..jobs {
        first_item.push(items);
        items += parts_of(j);
    }
    first_item.push(items);
    let split = items > jobs;
    let mut partials = if split {
        Partials::new(items, group, hd)
    } else {
        Partials::new(0, group, hd)
    };
    let out_p = SyncPtr(out.as_mut_ptr());
    let part_p = partials.ptrs();
    super::team::parallel_for(items, |item| {
        let job = first_item.partition_point(|&f| f <= item) - 1;
        let (tok, kh) = (job / nkv, job % nkv);
        let (b, range) = span(job);
        let table = batch.block_table(b);
        let q_g = &q[tok * num_heads * hd + kh * group * hd..][..group * hd];
        let run = |range: std::ops::Range<usize>, acc: &mut [f32], m: &mut [f32], l: &mut [f32]| {
            let mut scores = SCORES.with(|s| std::mem::take(&mut *s.borrow_mut()));
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU supports the features (checked above).
                unsafe {
                    attend_part_avx2(
                        q_g,
                        kc,
                        vc,
                        table,
                        geo,
                        kh,
                        range.clone(),
                        score,
                        acc,
                        m,
                        l,
                        &mut scores,
                    )
                };
                SCORES.with(|s| *s.borrow_mut() = scores);
                return;
            }
            let _ = avx2;
            attend_part::<T, false>(q_g, kc, vc, table, geo, kh, range, score, acc, m, l, &mut scores);
            SCORES.with(|s| *s.borrow_mut() = scores);
        };
        let n_parts = first_item[job + 1] - first_item[job];
        if n_parts == 1 {
            // SAFETY: pair `job` owns `out[job * group * hd..][..group * hd]`; no other item writes it.
            let out_g = unsafe { std::slice::from_raw_parts_mut(out_p.get().add(job * group * hd), group * hd) };
            let (mut m, mut l) = ([0.0f32; MAX_GROUP], [0.0f32; MAX_GROUP]);
            run(range, out_g, &mut m[..group], &mut l[..group]);
            for (o, &l) in out_g.chunks_exact_mut(hd).zip(&l[..group]) {
                scale_vec(o, 1.0 / l);
            }
        } else {
            let i = item - first_item[job];
            let lo = range.start + i * partition;
            // SAFETY: item `item` owns its slot of the partial states.
            let (acc, m, l) = unsafe { part_p.slot(item) };
            run(lo..(lo + partition).min(range.end), acc, m, l);
        }
    });
    if !split {
        return;
    }
    // Merge the split pairs: rescale every partial to the global max of its head.
    for job in 0..jobs {
        let (f0, f1) = (first_item[job], first_item[job + 1]);
        if f1 - f0 < 2 {
            continue;
        }
        let out_g = &mut out[job * group * hd..][..group * hd];
        for (h, o) in out_g.chunks_exact_mut(hd).enumerate() {
            let mx = (f0..f1).fold(f32::NEG_INFINITY, |a, p| a.max(partials.m[p * group + h]));
            o.fill(0.0);
            let mut l = 0.0f32;
            for p in f0..f1 {
                let w = (partials.m[p * group + h] - mx).exp();
                l += partials.l[p * group + h] * w;
                axpy(o, w, &partials.acc[(p * group + h) * hd..][..hd]);
            }
            scale_vec(o, 1.0 / l);
        }
    }
}

/// The sequence that owns flattened token `tok`.
fn seq_of(batch: &InputBatch, tok: usize) -> usize {
    batch.query_start_loc.partition_point(|&s| s as usize <= tok) - 1
}

/// A raw pointer shared by work items that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: every item writes only its own disjoint range, and the buffer outlives the parallel region.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    // A method, so closures capture the Sync wrapper rather than the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Softmax states of the split items: per item and head the running max, the sum of exponentials and the
/// unnormalized output.
struct Partials {
    group: usize,
    hd: usize,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

#[derive(Clone, Copy)]
struct PartialPtrs {
    group: usize,
    hd: usize,
    m: SyncPtr,
    l: SyncPtr,
    acc: SyncPtr,
}

impl Partials {
    fn new(items: usize, group: usize, hd: usize) -> Self {
        Self {
            group,
            hd,
            m: vec![0.0; items * group],
            l: vec![0.0; items * group],
            acc: vec![0.0; items * group * hd],
        }
    }

    fn ptrs(&mut self) -> PartialPtrs {
        PartialPtrs {
            group: self.group,
            hd: self.hd,
            m: SyncPtr(self.m.as_mut_ptr()),
            l: SyncPtr(self.l.as_mut_ptr()),
            acc: SyncPtr(self.acc.as_mut_ptr()),
        }
    }
}

impl PartialPtrs {
    /// # Safety
    /// `item` is in range and no one else touches its slot while the borrow lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slot<'a>(self, item: usize) -> (&'a mut [f32], &'a mut [f32], &'a mut [f32]) {
        let (g, hd) = (self.group, self.hd);
        (
            std::slice::from_raw_parts_mut(self.acc.get().add(item * g * hd), g * hd),
            std::slice::from_raw_parts_mut(self.m.get().add(item * g), g),
            std::slice::from_raw_parts_mut(self.l.get().add(item * g), g),
        )
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_part_avx2<T: KvElem>(
    q_g: &[f32],
    kc: &[T],
    vc: &[T],
    table: &[u32],
    geo: Geo,
    kh: usize,
    range: std::ops::Range<usize>,
    score: Score,
    acc: &mut [f32],
    m: &mut [f32],
    l: &mut [f32],
    scores: &mut Vec<f32>,
) {
    attend_part::<T, true>(q_g, kc, vc, table, geo, kh, range, score, acc, m, l, scores)
}

/// `q · k` over a cache row, on the AVX2 path inside `attend_part_avx2` (`SIMD`), plain code otherwise.
#[inline(always)]
fn row_dot<T: KvElem, const SIMD: bool>(q: &[f32], k: &[T]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: `SIMD` is set only by `attend_part_avx2`, which runs when the CPU has AVX2, FMA and F16C.
        return unsafe { T::dot_avx2(q, k) };
    }
    T::dot(q, k)
}

/// `acc += w · v` over a cache row, as `row_dot`.
#[inline(always)]
fn row_axpy<T: KvElem, const SIMD: bool>(acc: &mut [f32], w: f32, v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: as in `row_dot`.
        return unsafe { T::axpy_avx2(acc, w, v) };
    }
    T::axpy(acc, w, v)
}

/// How a raw `q · k` becomes a score: scaled, then soft-capped when `softcap > 0`.
#[derive(Clone, Copy)]
struct Score {
    scale: f32,
    softcap: f32,
}

impl Score {
    #[inline(always)]
    fn of(self, dot: f32) -> f32 {
        let s = dot * self.scale;
        if self.softcap > 0.0 {
            self.softcap * (s / self.softcap).tanh()
        } else {
            s
        }
    }
}

/// The group's query heads `q_g` over context positions `range` of KV head `kh`: writes the max score `m`,
/// the sum of `exp(score - m)` as `l` and the unnormalized `Σ exp(score - m) v` as `acc`, per head.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_part<T: KvElem, const SIMD: bool>(
    q_g: &[f32],
    kc: &[T],
    vc: &[T],
    table: &[u32],
    geo: Geo,
    kh: usize,
    range: std::ops::Range<usize>,
    score: Score,
    acc: &mut [f32],
    m: &mut [f32],
    l: &mut [f32],
    s: &mut Vec<f32>,
) {
    let hd = geo.head_dim;
    let group = m.len();
    let n = range.len();
    let row_of = |p: usize| {
        let slot = table[p / geo.block_size] as usize * geo.block_size + p % geo.block_size;
        (slot * geo.num_kv_heads + kh) * hd
    };
    {
        s.resize(group * n, 0.0);
        for (i, p) in range.clone().enumerate() {
            let k = &kc[row_of(p)..][..hd];
            for h in 0..group {
                s[h * n + i] = score.of(row_dot::<T, SIMD>(&q_g[h * hd..(h + 1) * hd], k));
            }
        }
        for h in 0..group {
            let row = &mut s[h * n..(h + 1) * n];
            let mx = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let mut sum = 0.0f32;
            for v in row.iter_mut() {
                *v = (*v - mx).exp();
                sum += *v;
            }
            m[h] = mx;
            l[h] = sum;
        }
        acc.fill(0.0);
        for (i, p) in range.enumerate() {
            let v = &vc[row_of(p)..][..hd];
            for h in 0..group {
                row_axpy::<T, SIMD>(&mut acc[h * hd..(h + 1) * hd], s[h * n + i], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::cpu::kv_cache::KvDtype;

    /// (cached prefix length, new tokens) per sequence.
    fn build(
        seqs: &[(usize, usize)],
        block_size: usize,
        nkv: usize,
        hd: usize,
        dtype: KvDtype,
        rng: &mut impl Rng,
    ) -> (InputBatch, KvCache) {
        let blocks_per: Vec<usize> = seqs.iter().map(|(c, n)| (c + n).div_ceil(block_size)).collect();
        let total: usize = blocks_per.iter().sum();
        // Block 0 is the null block; the rest are handed out in shuffled order.
        let mut ids: Vec<u32> = (1..=total as u32).collect();
        ids.shuffle(rng);
        let max_blocks = *blocks_per.iter().max().unwrap() + 1;
        let mut batch = InputBatch {
            block_size,
            max_blocks_per_seq: max_blocks,
            ..Default::default()
        };
        batch.query_start_loc.push(0);
        let mut next = ids.into_iter();
        for (b, &(cached, new)) in seqs.iter().enumerate() {
            let mut table: Vec<u32> = (0..blocks_per[b]).map(|_| next.next().unwrap()).collect();
            table.resize(max_blocks, 0);
            for i in 0..new {
                let p = cached + i;
                batch.token_ids.push(0);
                batch.positions.push(p as u32);
                batch
                    .slot_mapping
                    .push((table[p / block_size] as usize * block_size + p % block_size) as i64);
            }
            batch.block_tables.extend(table);
            batch.seq_lens.push((cached + new) as u32);
            batch.query_start_loc.push(batch.token_ids.len() as u32);
        }
        batch.check();
        let mut kv = KvCache::with_dtype(2, total + 1, block_size, nkv, hd, dtype);
        kv.fill_with(|| rng.random_range(-1.0..1.0));
        (batch, kv)
    }

    fn reference(
        q: &[f32],
        kv: &KvCache,
        layer: usize,
        batch: &InputBatch,
        nh: usize,
        spec: &AttentionSpec,
    ) -> Vec<f64> {
        let scale = spec.scale;
        let (hd, nkv, bs) = (kv.head_dim, kv.num_kv_heads, kv.block_size);
        let mut out = vec![0.0f64; q.len()];
        for b in 0..batch.num_seqs() {
            let (s0, s1) = (batch.query_start_loc[b] as usize, batch.query_start_loc[b + 1] as usize);
            let table = batch.block_table(b);
            // Gather this sequence's K/V densely.
            let ctx = batch.seq_lens[b] as usize;
            // The cache's values as stored (an f16 cache's rounding is the cache's, not the kernel's, error).
            let at = |v: bool, p: usize, kh: usize, d: usize| {
                kv.value(layer, v, ((table[p / bs] as usize * bs + p % bs) * nkv + kh) * hd + d) as f64
            };
            for t in s0..s1 {
                let pos = ctx - (s1 - s0) + (t - s0);
                for h in 0..nh {
                    let kh = h / (nh / nkv);
                    let qh = &q[(t * nh + h) * hd..][..hd];
                    // Dense: every position, those outside the window masked (never skipped by range).
                    let seen = |p: usize| spec.sliding_window.map_or(true, |w| pos - p < w as usize);
                    let scores: Vec<f64> = (0..=pos)
                        .map(|p| {
                            let s = (0..hd).map(|d| qh[d] as f64 * at(false, p, kh, d)).sum::<f64>() * scale as f64;
                            let s = spec.softcap.map_or(s, |c| c as f64 * (s / c as f64).tanh());
                            if seen(p) {
                                s
                            } else {
                                f64::NEG_INFINITY
                            }
                        })
                        .collect();
                    let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        out[(t * nh + h) * hd + d] = (0..=pos)
                            .filter(|&p| seen(p))
                            .map(|p| e[p] * at(true, p, kh, d))
                            .sum::<f64>()
                            / z;
                    }
                }
            }
        }
        out
    }

    fn check(seqs: &[(usize, usize)], nh: usize, nkv: usize, hd: usize, partition: usize, seed: u64) {
        let spec = AttentionSpec {
            scale: 1.0 / (hd as f32).sqrt(),
            sliding_window: None,
            softcap: None,
        };
        for dtype in [KvDtype::F32, KvDtype::F16] {
            check_spec(seqs, nh, nkv, hd, partition, seed, &spec, dtype);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_spec(
        seqs: &[(usize, usize)],
        nh: usize,
        nkv: usize,
        hd: usize,
        partition: usize,
        seed: u64,
        spec: &AttentionSpec,
        dtype: KvDtype,
    ) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (batch, kv) = build(seqs, 16, nkv, hd, dtype, &mut rng);
        let q: Vec<f32> = (0..batch.num_tokens() * nh * hd)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let mut out = vec![f32::NAN; q.len()];
        attend_cache(&q, &kv, 1, &batch, nh, spec, &mut out, partition);
        for (i, (a, b)) in out.iter().zip(reference(&q, &kv, 1, &batch, nh, spec)).enumerate() {
            assert!(
                (*a as f64 - b).abs() < 1e-5,
                "seqs {seqs:?} nh {nh} nkv {nkv} hd {hd} {dtype:?}: [{i}] {a} vs {b}"
            );
        }
    }

    #[test]
    fn mixed_prefill_and_decode_match_dense_reference() {
        // (usize::MAX: never split; the split path has its own test.)
        // A prefill chunk after a cached prefix, a fresh prefill, decodes (one at a block boundary), a 1-token
        // context, and an empty slot in the batch.
        let seqs = [(21, 12), (0, 20), (69, 1), (31, 1), (0, 1), (40, 0)];
        for (nh, nkv) in [(4, 4), (6, 2), (8, 2)] {
            for hd in [64, 128] {
                check(&seqs, nh, nkv, hd, usize::MAX, (nh * 1000 + hd) as u64);
            }
        }
    }

    #[test]
    fn split_context_decode_matches_dense_reference() {
        // Few (token, KV head) pairs and contexts spanning many partitions force the split path, including a
        // ragged last partition.
        check(&[(300, 1), (97, 1)], 6, 2, 64, 32, 11);
        check(&[(40, 3)], 4, 4, 64, 16, 13);
        check(&[(129, 1)], 3, 1, 128, 16, 12);
    }

    #[test]
    fn sliding_window_and_softcap_match_dense_reference() {
        let seqs = [(21, 12), (0, 20), (69, 1), (5, 1), (0, 1)];
        for (window, softcap) in [
            (Some(8u32), None),
            (Some(1), None),
            (None, Some(5.0f32)),
            (Some(16), Some(2.0)),
        ] {
            let spec = AttentionSpec {
                scale: 0.125,
                sliding_window: window,
                softcap,
            };
            for dtype in [KvDtype::F32, KvDtype::F16] {
                check_spec(&seqs, 6, 2, 64, usize::MAX, 21, &spec, dtype);
                // The split path starts its partitions at the window's first position.
                check_spec(&[(300, 1), (40, 3)], 4, 2, 64, 16, 22, &spec, dtype);
            }
        }
    }

    #[test]
    fn positions_before_the_window_are_never_read() {
        // Poison every block except the ones the window covers: a read of a freed block would give NaN.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (batch, mut kv) = build(&[(100, 1)], 16, 2, 64, KvDtype::F32, &mut rng);
        let table = batch.block_table(0).to_vec();
        let spec = AttentionSpec {
            scale: 0.125,
            sliding_window: Some(20),
            softcap: None,
        };
        // Position 100 sees 81..=100: blocks 5 and 6 (positions 80..111); blocks 0..=4 are outside.
        let planes = kv.f32_planes_mut().unwrap();
        for &blk in &table[..5] {
            for layer in 0..2 {
                let (a, b) = (blk as usize * 16 * 128, (blk as usize + 1) * 16 * 128);
                planes.k[layer][a..b].fill(f32::NAN);
                planes.v[layer][a..b].fill(f32::NAN);
            }
        }
        let q: Vec<f32> = (0..4 * 64).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut out = vec![0.0; q.len()];
        attend_cache(&q, &kv, 1, &batch, 4, &spec, &mut out, usize::MAX);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
