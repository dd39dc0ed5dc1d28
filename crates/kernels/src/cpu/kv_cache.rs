//! The paged KV cache on the CPU: per layer, K and V as `[num_blocks, block_size, num_kv_heads, head_dim]`, in
//! f32 (exact mode: HF fp32 parity) or f16 (fast mode: half the bytes that decode attention streams, and twice
//! the blocks in the same budget — llama.cpp's default `-ctk f16 -ctv f16`). Values are written rounded to the
//! element type and widened to f32 when read; every sum stays in f32.
//! Blocks are handed out by the engine's `BlockPool`; this type only stores values and copies whole blocks
//! (copy on write of a shared partial block for `n > 1` and beams).

use half::f16;

/// The element type of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// One element type's K and V planes: `k[layer]`, `v[layer]` of `num_blocks * block_size * num_kv_heads *
/// head_dim` values each.
pub struct Planes<T> {
    pub k: Vec<Vec<T>>,
    pub v: Vec<Vec<T>>,
}

pub enum KvData {
    F32(Planes<f32>),
    F16(Planes<f16>),
}

pub struct KvCache {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub data: KvData,
}

/// What the attention kernel needs of a cache element: conversion from f32 on write, and the two inner loops
/// (`q · k` and `acc += w · v`) with the row widened to f32.
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    /// `n` zeros from the allocator's zeroed pages (calloc), so a large cache costs nothing until it is written:
    /// `vec![f16::default(); n]` would write every element (0.8 s of start-up for the default 512 MiB cache).
    fn zeroed_vec(n: usize) -> Vec<Self>;
    fn store(dst: &mut [Self], src: &[f32]);
    /// `q · k` in plain code (LLVM vectorizes the f32 case).
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// `acc += w * v`.
    fn axpy(acc: &mut [f32], w: f32, v: &[Self]);
    /// As `dot`, inside a function compiled for AVX2 + FMA + F16C.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (`vec::has_avx2_fma`).
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_avx2(q: &[f32], k: &[Self]) -> f32;
    /// As `axpy`, inside a function compiled for AVX2 + FMA + F16C.
    ///
    /// # Safety
    /// As `dot_avx2`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn axpy_avx2(acc: &mut [f32], w: f32, v: &[Self]);
}

impl KvElem for f32 {
    fn zeroed_vec(n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    #[inline(always)]
    fn store(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        super::vec::dot(q, k)
    }
    #[inline(always)]
    fn axpy(acc: &mut [f32], w: f32, v: &[f32]) {
        super::vec::axpy(acc, w, v)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_avx2(q: &[f32], k: &[f32]) -> f32 {
        super::vec::dot(q, k)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn axpy_avx2(acc: &mut [f32], w: f32, v: &[f32]) {
        super::vec::axpy(acc, w, v)
    }
}

impl KvElem for f16 {
    fn zeroed_vec(n: usize) -> Vec<f16> {
        use half::vec::HalfBitsVecExt;
        vec![0u16; n].reinterpret_into()
    }
    #[inline(always)]
    fn store(dst: &mut [f16], src: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
    #[inline(always)]
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        // The same 8 lanes and lane sum as `vec::dot`, so the AVX2 path below gives the same result.
        let mut lanes = [0.0f32; 8];
        for (q8, k8) in q.chunks_exact(8).zip(k.chunks_exact(8)) {
            for l in 0..8 {
                lanes[l] += q8[l] * k8[l].to_f32();
            }
        }
        let tail = q.len() / 8 * 8;
        let mut s = super::vec::sum_lanes(&lanes);
        for (x, y) in q[tail..].iter().zip(&k[tail..]) {
            s += x * y.to_f32();
        }
        s
    }
    #[inline(always)]
    fn axpy(acc: &mut [f32], w: f32, v: &[f16]) {
        for (a, x) in acc.iter_mut().zip(v) {
            *a += w * x.to_f32();
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_avx2(q: &[f32], k: &[f16]) -> f32 {
        use std::arch::x86_64::*;
        debug_assert_eq!(q.len(), k.len());
        let n8 = q.len() / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < n8 {
            let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i) as *const __m128i));
            // mul + add, not FMA: the plain loop's rounding, so both paths agree bit for bit.
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(q.as_ptr().add(i)), kv));
            i += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut s = super::vec::sum_lanes(&lanes);
        for (x, y) in q[n8..].iter().zip(&k[n8..]) {
            s += x * y.to_f32();
        }
        s
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn axpy_avx2(acc: &mut [f32], w: f32, v: &[f16]) {
        use std::arch::x86_64::*;
        debug_assert_eq!(acc.len(), v.len());
        let n8 = acc.len() / 8 * 8;
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i < n8 {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i));
            let p = acc.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(wv, x)));
            i += 8;
        }
        for (a, x) in acc[n8..].iter_mut().zip(&v[n8..]) {
            *a += w * x.to_f32();
        }
    }
}

impl<T: KvElem> Planes<T> {
    fn new(num_layers: usize, n: usize) -> Self {
        Self {
            k: (0..num_layers).map(|_| T::zeroed_vec(n)).collect(),
            v: (0..num_layers).map(|_| T::zeroed_vec(n)).collect(),
        }
    }

    fn write(&mut self, layer: usize, s: usize, slot_mapping: &[i64], k: &[f32], v: &[f32]) {
        for (t, &slot) in slot_mapping.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            let dst = slot as usize * s;
            T::store(&mut self.k[layer][dst..dst + s], &k[t * s..(t + 1) * s]);
            T::store(&mut self.v[layer][dst..dst + s], &v[t * s..(t + 1) * s]);
        }
    }

    fn copy_blocks(&mut self, values_per_block: usize, pairs: &[(u32, u32)]) {
        for (k, v) in self.k.iter_mut().zip(&mut self.v) {
            for &(src, dst) in pairs {
                let (s, d) = (src as usize * values_per_block, dst as usize * values_per_block);
                k.copy_within(s..s + values_per_block, d);
                v.copy_within(s..s + values_per_block, d);
            }
        }
    }
}

impl KvCache {
    /// An f32 cache (exact mode).
    pub fn new(num_layers: usize, num_blocks: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        Self::with_dtype(num_layers, num_blocks, block_size, num_kv_heads, head_dim, KvDtype::F32)
    }

    pub fn with_dtype(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: KvDtype,
    ) -> Self {
        let n = num_blocks * block_size * num_kv_heads * head_dim;
        let data = match dtype {
            KvDtype::F32 => KvData::F32(Planes::new(num_layers, n)),
            KvDtype::F16 => KvData::F16(Planes::new(num_layers, n)),
        };
        Self {
            num_layers,
            num_blocks,
            block_size,
            num_kv_heads,
            head_dim,
            data,
        }
    }

    pub fn dtype(&self) -> KvDtype {
        match self.data {
            KvData::F32(_) => KvDtype::F32,
            KvData::F16(_) => KvDtype::F16,
        }
    }

    /// Values per token slot (all KV heads of one layer).
    pub fn slot_stride(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Bytes per block across all layers, K and V (what the memory budget divides).
    pub fn bytes_per_block(
        num_layers: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: KvDtype,
    ) -> usize {
        2 * num_layers * block_size * num_kv_heads * head_dim * dtype.bytes()
    }

    /// Writes `k`/`v` (`[T, num_kv_heads * head_dim]`) of one layer into the slots; slot -1 is skipped.
    pub fn write(&mut self, layer: usize, slot_mapping: &[i64], k: &[f32], v: &[f32]) {
        let s = self.slot_stride();
        match &mut self.data {
            KvData::F32(p) => p.write(layer, s, slot_mapping, k, v),
            KvData::F16(p) => p.write(layer, s, slot_mapping, k, v),
        }
    }

    /// Copies whole blocks `src -> dst` in every layer.
    pub fn copy_blocks(&mut self, pairs: &[(u32, u32)]) {
        let per_block = self.block_size * self.slot_stride();
        match &mut self.data {
            KvData::F32(p) => p.copy_blocks(per_block, pairs),
            KvData::F16(p) => p.copy_blocks(per_block, pairs),
        }
    }

    /// The f32 planes (exact mode's cache); `None` for an f16 cache.
    pub fn f32_planes_mut(&mut self) -> Option<&mut Planes<f32>> {
        match &mut self.data {
            KvData::F32(p) => Some(p),
            KvData::F16(_) => None,
        }
    }

    /// Sets every K and V value from `f` (rounded to the element type): test caches.
    pub fn fill_with(&mut self, mut f: impl FnMut() -> f32) {
        fn fill<T: KvElem>(p: &mut Planes<T>, f: &mut dyn FnMut() -> f32) {
            for plane in p.k.iter_mut().chain(p.v.iter_mut()) {
                for c in plane.chunks_mut(64) {
                    let vals: Vec<f32> = (0..c.len()).map(|_| f()).collect();
                    T::store(c, &vals);
                }
            }
        }
        match &mut self.data {
            KvData::F32(p) => fill(p, &mut f),
            KvData::F16(p) => fill(p, &mut f),
        }
    }

    /// Value `i` of layer `layer`'s K (`v = false`) or V plane, widened to f32 (tests and references).
    pub fn value(&self, layer: usize, v: bool, i: usize) -> f32 {
        match &self.data {
            KvData::F32(p) => (if v { &p.v } else { &p.k })[layer][i],
            KvData::F16(p) => (if v { &p.v } else { &p.k })[layer][i].to_f32(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_copy_block() {
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let mut kv = KvCache::with_dtype(2, 4, 2, 1, 3, dtype);
            let k: Vec<f32> = (0..6).map(|x| x as f32).collect();
            let v: Vec<f32> = (0..6).map(|x| -(x as f32)).collect();
            kv.write(1, &[2, -1], &k, &v); // block 1, offset 0; second token skipped
            let row = |kv: &KvCache, v: bool, at: usize| (at..at + 3).map(|i| kv.value(1, v, i)).collect::<Vec<_>>();
            assert_eq!(row(&kv, false, 6), [0.0, 1.0, 2.0], "{dtype:?}");
            assert_eq!(row(&kv, false, 9), [0.0, 0.0, 0.0], "{dtype:?}");
            kv.copy_blocks(&[(1, 3)]);
            assert_eq!(row(&kv, true, 18), [-0.0, -1.0, -2.0], "{dtype:?}");
            assert_eq!(row(&kv, false, 3), [0.0, 0.0, 0.0], "layer 1 only");
        }
    }

    #[test]
    fn f16_rows_round_on_write_and_the_simd_loops_match_the_plain_ones() {
        let q: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let src: Vec<f32> = (0..67).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
        let mut k = vec![f16::ZERO; 67];
        f16::store(&mut k, &src);
        for (a, b) in k.iter().zip(&src) {
            assert!(
                (a.to_f32() - b).abs() <= b.abs() / 1024.0,
                "f16 keeps 11 significant bits"
            );
        }
        let want: f64 = q.iter().zip(&k).map(|(a, b)| *a as f64 * b.to_f32() as f64).sum();
        assert!((f16::dot(&q, &k) as f64 - want).abs() < 1e-4);
        let mut acc = vec![1.0f32; 67];
        f16::axpy(&mut acc, 0.5, &k);
        #[cfg(target_arch = "x86_64")]
        if super::super::vec::has_avx2_fma() {
            // SAFETY: checked above.
            let d = unsafe { f16::dot_avx2(&q, &k) };
            assert_eq!(d, f16::dot(&q, &k), "same lanes, same sum");
            let mut acc2 = vec![1.0f32; 67];
            unsafe { f16::axpy_avx2(&mut acc2, 0.5, &k) };
            assert_eq!(acc2, acc);
        }
    }
}
