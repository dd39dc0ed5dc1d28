//! `BlockPool`: every KV block of the cache, their reference counts, the free list (LRU eviction order) and the
//! prefix cache's hash -> block map (vLLM V1's `BlockPool`).
//!
//! Guarantees:
//! - Block 0 is the reserved null block: it is never handed out, freed or cached.
//! - A block is free iff its ref count is 0, and then it is in the free list exactly once.
//! - Eviction is lazy: a freed full block keeps its hash (and stays findable by it) until the block is popped
//!   for reuse. A prefix hit on such a block (`touch`) unlinks it from the free list.
//! - Free-list order is eviction order: allocation pops the head; freeing appends to the tail in the order given,
//!   so callers free a request's blocks last-first and its tail blocks (least likely to be shared) go first.

use std::collections::HashMap;

use super::block_hash::BlockHash;
use super::free_block_queue::FreeBlockQueue;
use crate::error::{EngineError, Result};

/// The reserved block id that is never allocated (padding / "no block" in block tables handed to kernels).
pub const NULL_BLOCK_ID: u32 = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvBlock {
    pub id: u32,
    /// Number of block tables holding this block.
    pub ref_cnt: u32,
    /// Set once the block is full and registered in the prefix cache; cleared when it is evicted for reuse.
    pub hash: Option<BlockHash>,
}

#[derive(Clone, Debug)]
pub struct BlockPool {
    block_size: usize,
    enable_caching: bool,
    blocks: Vec<KvBlock>,
    free: FreeBlockQueue,
    cached: HashMap<BlockHash, u32>,
}

impl BlockPool {
    /// `num_blocks` counts every block of the cache INCLUDING the null block 0, so `num_blocks - 1` are usable.
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> Result<Self> {
        if num_blocks < 2 || num_blocks >= u32::MAX as usize {
            return Err(EngineError::invalid(
                "num_blocks",
                format!("must be in [2, 2^32 - 1), got {num_blocks}"),
            ));
        }
        if block_size == 0 {
            return Err(EngineError::invalid("block_size", "must be at least 1"));
        }
        let blocks = (0..num_blocks as u32)
            .map(|id| KvBlock {
                id,
                ref_cnt: 0,
                hash: None,
            })
            .collect();
        let mut free = FreeBlockQueue::new(num_blocks);
        for id in 1..num_blocks as u32 {
            free.push_back(id);
        }
        Ok(Self {
            block_size,
            enable_caching,
            blocks,
            free,
            cached: HashMap::new(),
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// All blocks, the null block included.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can ever be handed out (all but the null block).
    pub fn num_usable_blocks(&self) -> usize {
        self.blocks.len() - 1
    }

    /// Free blocks, cached ones included (they are evictable).
    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn num_blocks_in_use(&self) -> usize {
        self.num_usable_blocks() - self.free.len()
    }

    /// Free blocks that still hold a registered prefix (a hit would revive them).
    pub fn num_cached_free_blocks(&self) -> usize {
        self.free
            .iter()
            .filter(|&id| self.blocks[id as usize].hash.is_some())
            .count()
    }

    /// Fraction of usable blocks in use, in [0, 1].
    pub fn usage(&self) -> f32 {
        self.num_blocks_in_use() as f32 / self.num_usable_blocks() as f32
    }

    pub fn block(&self, id: u32) -> Option<&KvBlock> {
        self.blocks.get(id as usize)
    }

    /// Free block ids in eviction order (next evicted first).
    pub fn free_block_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.free.iter()
    }

    pub fn get_cached_block(&self, hash: BlockHash) -> Option<u32> {
        if !self.enable_caching {
            return None;
        }
        self.cached.get(&hash).copied()
    }

    /// Pops `n` blocks from the head of the free list (evicting their cached prefixes), each with ref count 1.
    /// `None` (and nothing changes) if fewer than `n` are free.
    pub fn get_new_blocks(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.free.pop_front()?;
            self.evict(id);
            self.blocks[id as usize].ref_cnt = 1;
            out.push(id);
        }
        Some(out)
    }

    /// Drops `id`'s registered prefix (lazy eviction happens here, at reuse).
    fn evict(&mut self, id: u32) {
        if let Some(h) = self.blocks[id as usize].hash.take() {
            if self.cached.get(&h) == Some(&id) {
                self.cached.remove(&h);
            }
        }
    }

    /// Takes one more reference on each block (prefix hits, forks); a free block leaves the free list.
    pub fn touch(&mut self, ids: &[u32]) {
        for &id in ids {
            debug_assert!(id != NULL_BLOCK_ID, "the null block is never shared");
            let b = &mut self.blocks[id as usize];
            if b.ref_cnt == 0 {
                self.free.remove(id);
            }
            b.ref_cnt += 1;
        }
    }

    /// Drops one reference from each block, in order; blocks reaching 0 join the free list's tail in that order.
    pub fn free_blocks(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            let b = &mut self.blocks[id as usize];
            debug_assert!(b.ref_cnt > 0, "block {id} freed more often than referenced");
            b.ref_cnt = b.ref_cnt.saturating_sub(1);
            if b.ref_cnt == 0 {
                self.free.push_back(id);
            }
        }
    }

    /// Drops a FREE block's cached prefix now instead of at reuse (its KV turned out never to be computed).
    pub fn uncache_if_free(&mut self, id: u32) {
        if self.blocks.get(id as usize).is_some_and(|b| b.ref_cnt == 0) {
            self.evict(id);
        }
    }

    /// Registers a block that has just become full under `hash`. If another block already holds that prefix the
    /// block stays unregistered (both hold the same KV; the first one keeps serving hits). Returns whether it was
    /// registered.
    pub fn cache_full_block(&mut self, id: u32, hash: BlockHash) -> bool {
        if !self.enable_caching || id == NULL_BLOCK_ID || self.blocks[id as usize].hash.is_some() {
            return false;
        }
        if self.cached.contains_key(&hash) {
            return false;
        }
        self.cached.insert(hash, id);
        self.blocks[id as usize].hash = Some(hash);
        true
    }

    /// Forgets every cached prefix held by a free block (vLLM's `reset_prefix_cache` for idle blocks). Returns
    /// how many were dropped; blocks in use keep theirs.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let ids: Vec<u32> = self
            .free
            .iter()
            .filter(|&id| self.blocks[id as usize].hash.is_some())
            .collect();
        for &id in &ids {
            self.evict(id);
        }
        ids.len()
    }

    /// Checks the pool against the block tables that reference it: free + in use == usable, the free list is
    /// consistent both ways and holds exactly the ref-count-0 blocks, the hash map and the blocks' hashes agree,
    /// and every ref count equals the number of tables holding the block (null entries hold nothing).
    pub fn check_integrity<'a>(&self, tables: impl IntoIterator<Item = &'a [u32]>) -> Result<(), String> {
        self.free.check_integrity()?;
        let mut holders = vec![0u32; self.blocks.len()];
        for table in tables {
            // Null entries stand for blocks released out of a sliding window; their placement is the
            // manager's to check.
            for &id in table.iter().filter(|&&id| id != NULL_BLOCK_ID) {
                let slot = holders
                    .get_mut(id as usize)
                    .ok_or(format!("a block table holds unknown block {id}"))?;
                *slot += 1;
            }
        }
        let null = &self.blocks[0];
        if null.ref_cnt != 0 || null.hash.is_some() || self.free.contains(NULL_BLOCK_ID) {
            return Err("the null block was handed out, cached or freed".to_string());
        }
        let mut in_use = 0;
        for b in &self.blocks[1..] {
            if b.ref_cnt != holders[b.id as usize] {
                return Err(format!(
                    "block {} has ref_cnt {} but {} tables hold it",
                    b.id, b.ref_cnt, holders[b.id as usize]
                ));
            }
            if (b.ref_cnt == 0) != self.free.contains(b.id) {
                let where_ = if self.free.contains(b.id) { "in" } else { "not in" };
                return Err(format!(
                    "block {} has ref_cnt {} but is {where_} the free list",
                    b.id, b.ref_cnt
                ));
            }
            if b.ref_cnt > 0 {
                in_use += 1;
            }
            if let Some(h) = b.hash {
                if self.cached.get(&h) != Some(&b.id) {
                    return Err(format!(
                        "block {} carries a hash the map does not point back to it",
                        b.id
                    ));
                }
            }
        }
        if in_use + self.free.len() != self.num_usable_blocks() {
            return Err(format!(
                "{in_use} in use + {} free != {} usable",
                self.free.len(),
                self.num_usable_blocks()
            ));
        }
        for (h, &id) in &self.cached {
            if self.blocks.get(id as usize).and_then(|b| b.hash) != Some(*h) {
                return Err(format!("hash map points at block {id}, which does not carry that hash"));
            }
        }
        if !self.enable_caching && !self.cached.is_empty() {
            return Err("prefix caching is off but blocks are cached".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::block_hash::hash_block;

    fn h(i: u32) -> BlockHash {
        hash_block(None, &[i], None)
    }

    #[test]
    fn null_block_is_never_handed_out() {
        let mut pool = BlockPool::new(8, 4, true).unwrap();
        assert_eq!(pool.num_usable_blocks(), 7);
        let ids = pool.get_new_blocks(7).unwrap();
        assert!(!ids.contains(&NULL_BLOCK_ID));
        assert_eq!(pool.get_new_blocks(1), None, "only 7 usable blocks");
        pool.check_integrity([ids.as_slice()]).unwrap();
        pool.free_blocks(ids.iter().rev().copied());
        let again = pool.get_new_blocks(7).unwrap();
        assert!(!again.contains(&NULL_BLOCK_ID));
    }

    #[test]
    fn tail_first_freeing_evicts_a_requests_last_block_first() {
        let mut pool = BlockPool::new(6, 4, true).unwrap();
        let req = pool.get_new_blocks(3).unwrap(); // blocks 1, 2, 3
        for (i, &id) in req.iter().enumerate() {
            assert!(pool.cache_full_block(id, h(i as u32)));
        }
        // Free last-first as a request does: 3, 2, 1 land behind the never-used 4, 5.
        pool.free_blocks(req.iter().rev().copied());
        assert_eq!(
            pool.free_block_ids().collect::<Vec<_>>(),
            vec![4, 5, req[2], req[1], req[0]]
        );
        assert_eq!(pool.num_cached_free_blocks(), 3);
        let next = pool.get_new_blocks(3).unwrap();
        assert_eq!(next, vec![4, 5, req[2]], "the request's last block is evicted first");
        assert_eq!(pool.get_cached_block(h(2)), None, "evicted at reuse");
        assert_eq!(pool.get_cached_block(h(0)), Some(req[0]));
        assert_eq!(pool.get_cached_block(h(1)), Some(req[1]));
        pool.check_integrity([next.as_slice()]).unwrap();
    }

    #[test]
    fn lazy_eviction_keeps_freed_blocks_findable_until_reused() {
        let mut pool = BlockPool::new(3, 4, true).unwrap();
        let a = pool.get_new_blocks(1).unwrap()[0];
        pool.cache_full_block(a, h(7));
        pool.free_blocks([a]);
        assert_eq!(pool.get_cached_block(h(7)), Some(a), "free but still cached");
        assert_eq!(pool.block(a).unwrap().hash, Some(h(7)));
        // A hit revives it: out of the free list, ref count 1, hash kept.
        pool.touch(&[a]);
        assert_eq!(pool.block(a).unwrap().ref_cnt, 1);
        assert!(!pool.free_block_ids().any(|id| id == a));
        pool.check_integrity([[a].as_slice()]).unwrap();
        pool.free_blocks([a]);
        // Two allocations take the other block, then reuse `a`, which only now loses its prefix.
        let got = pool.get_new_blocks(2).unwrap();
        assert_eq!(got[1], a);
        assert_eq!(pool.get_cached_block(h(7)), None);
        assert_eq!(pool.block(a).unwrap().hash, None);
    }

    #[test]
    fn ref_counts_return_blocks_only_when_the_last_holder_frees() {
        let mut pool = BlockPool::new(4, 2, true).unwrap();
        let ids = pool.get_new_blocks(2).unwrap();
        pool.touch(&ids); // a second table (a fork) shares both
        pool.check_integrity([ids.as_slice(), ids.as_slice()]).unwrap();
        assert!(
            pool.check_integrity([ids.as_slice()]).is_err(),
            "ref counts must match the tables"
        );
        pool.free_blocks(ids.iter().rev().copied());
        assert_eq!(pool.num_free_blocks(), 1);
        pool.free_blocks(ids.iter().rev().copied());
        assert_eq!(pool.num_free_blocks(), 3);
        pool.check_integrity(std::iter::empty()).unwrap();
    }

    #[test]
    fn duplicate_prefixes_register_once_and_caching_off_registers_nothing() {
        let mut pool = BlockPool::new(4, 2, true).unwrap();
        let ids = pool.get_new_blocks(2).unwrap();
        assert!(pool.cache_full_block(ids[0], h(1)));
        assert!(!pool.cache_full_block(ids[1], h(1)));
        assert_eq!(pool.get_cached_block(h(1)), Some(ids[0]));
        pool.check_integrity([ids.as_slice()]).unwrap();

        let mut off = BlockPool::new(4, 2, false).unwrap();
        let ids = off.get_new_blocks(1).unwrap();
        assert!(!off.cache_full_block(ids[0], h(1)));
        assert_eq!(off.get_cached_block(h(1)), None);
    }

    #[test]
    fn reset_prefix_cache_drops_only_free_blocks() {
        let mut pool = BlockPool::new(4, 2, true).unwrap();
        let ids = pool.get_new_blocks(2).unwrap();
        pool.cache_full_block(ids[0], h(0));
        pool.cache_full_block(ids[1], h(1));
        pool.free_blocks([ids[1]]);
        assert_eq!(pool.reset_prefix_cache(), 1);
        assert_eq!(pool.get_cached_block(h(1)), None);
        assert_eq!(pool.get_cached_block(h(0)), Some(ids[0]));
        pool.check_integrity([&ids[..1]]).unwrap();
    }

    #[test]
    fn rejects_degenerate_sizes() {
        assert!(BlockPool::new(1, 16, true).is_err());
        assert!(BlockPool::new(8, 0, true).is_err());
    }
}
