//! The paged KV cache on the CPU: per layer, K and V as `[num_blocks, block_size, num_kv_heads, head_dim]` f32.
//! Blocks are handed out by the engine's `BlockPool`; this type only stores bytes and copies whole blocks
//! (copy on write of a shared partial block for `n > 1`).

pub struct KvCache {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// `k[layer]`, `v[layer]`: `num_blocks * block_size * num_kv_heads * head_dim` floats each.
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(num_layers: usize, num_blocks: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        let n = num_blocks * block_size * num_kv_heads * head_dim;
        Self {
            num_layers,
            num_blocks,
            block_size,
            num_kv_heads,
            head_dim,
            k: (0..num_layers).map(|_| vec![0.0; n]).collect(),
            v: (0..num_layers).map(|_| vec![0.0; n]).collect(),
        }
    }

    /// Floats per token slot (all KV heads of one layer).
    pub fn slot_stride(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Bytes per block across all layers, K and V (what the memory budget divides).
    pub fn bytes_per_block(num_layers: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> usize {
        2 * num_layers * block_size * num_kv_heads * head_dim * std::mem::size_of::<f32>()
    }

    /// Writes `k`/`v` (`[T, num_kv_heads * head_dim]`) of one layer into the slots; slot -1 is skipped.
    pub fn write(&mut self, layer: usize, slot_mapping: &[i64], k: &[f32], v: &[f32]) {
        let s = self.slot_stride();
        for (t, &slot) in slot_mapping.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            let dst = slot as usize * s;
            self.k[layer][dst..dst + s].copy_from_slice(&k[t * s..(t + 1) * s]);
            self.v[layer][dst..dst + s].copy_from_slice(&v[t * s..(t + 1) * s]);
        }
    }

    /// Copies whole blocks `src -> dst` in every layer.
    pub fn copy_blocks(&mut self, pairs: &[(u32, u32)]) {
        let bs = self.block_size * self.slot_stride();
        for layer in 0..self.num_layers {
            for &(src, dst) in pairs {
                let (s, d) = (src as usize * bs, dst as usize * bs);
                self.k[layer].copy_within(s..s + bs, d);
                self.v[layer].copy_within(s..s + bs, d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_copy_block() {
        let mut kv = KvCache::new(2, 4, 2, 1, 3);
        let k: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let v: Vec<f32> = (0..6).map(|x| -(x as f32)).collect();
        kv.write(1, &[2, -1], &k, &v); // block 1, offset 0; second token skipped
        assert_eq!(&kv.k[1][6..9], &[0.0, 1.0, 2.0]);
        assert_eq!(&kv.k[1][9..12], &[0.0, 0.0, 0.0]);
        kv.copy_blocks(&[(1, 3)]);
        assert_eq!(&kv.v[1][18..21], &[-0.0, -1.0, -2.0]);
    }
}
