//! `KvCacheManager`: the block table of every request that holds KV, on top of the `BlockPool` (vLLM V1's
//! `KVCacheManager`, plus fork / copy-on-write for `n > 1` sampling, which V1 does not share in-engine).
//!
//! Guarantees:
//! - A request's table covers exactly the tokens it has been allocated for: block `i` holds positions
//!   `[i * block_size, (i + 1) * block_size)`.
//! - Prefix hits are whole full blocks and never cover a request's last token, so every scheduled request
//!   computes at least one token (its logits are needed) and nobody ever writes into a hit block.
//! - A request never writes into a block another table also holds: before a write range touches a shared block,
//!   `allocate_slots` swaps in a private copy and records `(src, dst)` in this step's `blocks_to_copy`.
//! - Blocks become prefix-cache entries as soon as they are allocated to be filled completely this step (the KV
//!   of a step is written before any of it is read, so a later request of the same step may hit them).

use std::collections::HashMap;

use super::block_hash::{extend_block_hashes_with, BlockHash, BlockHashAlgo};
use super::block_pool::BlockPool;
use crate::error::{EngineError, Result};
use crate::request::{Request, RequestId};

#[derive(Clone, Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_caching: bool,
    hash_algo: BlockHashAlgo,
    tables: HashMap<RequestId, Vec<u32>>,
    /// Chained hashes of each request's full blocks, extended as tokens arrive.
    hashes: HashMap<RequestId, Vec<BlockHash>>,
    /// Leading table entries already offered to the prefix cache.
    num_registered: HashMap<RequestId, usize>,
    blocks_to_copy: Vec<(u32, u32)>,
    prefix_cache_queries: u64,
    prefix_cache_hits: u64,
}

impl KvCacheManager {
    /// `num_blocks` includes the null block 0 (see `BlockPool::new`).
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> Result<Self> {
        Ok(Self {
            pool: BlockPool::new(num_blocks, block_size, enable_caching)?,
            block_size,
            enable_caching,
            hash_algo: BlockHashAlgo::default(),
            tables: HashMap::new(),
            hashes: HashMap::new(),
            num_registered: HashMap::new(),
            blocks_to_copy: Vec::new(),
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
        })
    }

    /// Chooses the block hash (before any request holds blocks: hashes of different functions never match).
    pub fn set_hash_algo(&mut self, algo: BlockHashAlgo) {
        debug_assert!(self.tables.is_empty());
        self.hash_algo = algo;
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// Prompt-logprob requests need logits at every prompt position, so they may not skip any by a cache hit.
    pub fn reads_prefix_cache(&self, request: &Request) -> bool {
        self.enable_caching && request.params.prompt_logprobs.is_none()
    }

    /// Prompt tokens served from the prefix cache (in tokens, like vLLM): lookups and hits since creation.
    pub fn prefix_cache_queries(&self) -> u64 {
        self.prefix_cache_queries
    }

    pub fn prefix_cache_hits(&self) -> u64 {
        self.prefix_cache_hits
    }

    pub fn block_table(&self, id: RequestId) -> &[u32] {
        self.tables.get(&id).map_or(&[], Vec::as_slice)
    }

    pub fn has_blocks(&self, id: RequestId) -> bool {
        self.tables.get(&id).is_some_and(|t| !t.is_empty())
    }

    /// The longest cached prefix of a request that holds no blocks yet: `(blocks, num_computed_tokens)`.
    /// Stops one token short of the request's end so that its last token is always computed.
    pub fn get_computed_blocks(&mut self, request: &Request) -> (Vec<u32>, usize) {
        if !self.reads_prefix_cache(request) || self.has_blocks(request.id) {
            return (Vec::new(), 0);
        }
        let hashes = self.hashes.entry(request.id).or_default();
        extend_block_hashes_with(self.hash_algo, hashes, request, self.block_size);
        let max_blocks = request.num_tokens().saturating_sub(1) / self.block_size;
        let blocks: Vec<u32> = hashes[..max_blocks.min(hashes.len())]
            .iter()
            .map_while(|&h| self.pool.get_cached_block(h))
            .collect();
        let n = blocks.len() * self.block_size;
        (blocks, n)
    }

    /// Makes room for `num_new_tokens` more tokens of `request` after its `num_computed_tokens` plus the
    /// `new_computed_blocks` of a prefix hit (appended to its table first). Returns the freshly allocated blocks
    /// (copy-on-write targets first), or `None` when too few blocks are free; then nothing has changed.
    pub fn allocate_slots(
        &mut self,
        request: &Request,
        num_new_tokens: usize,
        new_computed_blocks: &[u32],
    ) -> Option<Vec<u32>> {
        let bs = self.block_size;
        let id = request.id;
        let table_len = self.tables.get(&id).map_or(0, Vec::len);
        let num_computed = request.num_computed_tokens + new_computed_blocks.len() * bs;
        let total = num_computed + num_new_tokens;
        let num_fresh = self
            .blocks_for(total)
            .saturating_sub(table_len + new_computed_blocks.len());
        // Table entries the write range [num_computed, total) lands in that another table also holds.
        let cow: Vec<usize> = if num_new_tokens == 0 {
            Vec::new()
        } else {
            let table = self.tables.get(&id).map_or(&[][..], Vec::as_slice);
            (num_computed / bs..table_len.min((total - 1) / bs + 1))
                .filter(|&i| self.pool.block(table[i]).is_some_and(|b| b.ref_cnt > 1))
                .collect()
        };
        // Hit blocks that sit in the free list stop being evictable once we take them.
        let revived = new_computed_blocks
            .iter()
            .filter(|&&b| self.pool.block(b).is_some_and(|b| b.ref_cnt == 0))
            .count();
        if num_fresh + cow.len() + revived > self.pool.num_free_blocks() {
            return None;
        }

        if table_len == 0 && self.reads_prefix_cache(request) {
            self.prefix_cache_queries += request.num_tokens() as u64;
            self.prefix_cache_hits += (new_computed_blocks.len() * bs) as u64;
        }
        self.pool.touch(new_computed_blocks);
        let table = self.tables.entry(id).or_default();
        table.extend_from_slice(new_computed_blocks);
        let mut fresh = Vec::with_capacity(cow.len() + num_fresh);
        for i in cow {
            let src = table[i];
            let dst = self.pool.get_new_blocks(1)?[0];
            self.blocks_to_copy.push((src, dst));
            self.pool.free_blocks([src]);
            table[i] = dst;
            fresh.push(dst);
        }
        let new_blocks = self.pool.get_new_blocks(num_fresh)?;
        table.extend_from_slice(&new_blocks);
        fresh.extend(new_blocks);

        if self.enable_caching {
            let hashes = self.hashes.entry(id).or_default();
            extend_block_hashes_with(self.hash_algo, hashes, request, bs);
            let num_full = total.min(request.num_tokens()) / bs;
            let registered = self.num_registered.entry(id).or_default();
            for i in *registered..num_full.min(table.len()) {
                self.pool.cache_full_block(table[i], hashes[i]);
            }
            *registered = (*registered).max(num_full.min(table.len()));
        }
        Some(fresh)
    }

    /// Gives `child` the same blocks as `parent` (n > 1 sampling). Writes diverge later by copy-on-write.
    pub fn fork(&mut self, parent: RequestId, child: RequestId) -> Result<()> {
        let table = self
            .tables
            .get(&parent)
            .cloned()
            .ok_or(EngineError::UnknownRequest(parent.to_string()))?;
        if self.tables.contains_key(&child) {
            return Err(EngineError::Internal(format!(
                "fork target {child} already holds blocks"
            )));
        }
        self.pool.touch(&table);
        self.tables.insert(child, table);
        if let Some(h) = self.hashes.get(&parent).cloned() {
            self.hashes.insert(child, h);
        }
        if let Some(&n) = self.num_registered.get(&parent) {
            self.num_registered.insert(child, n);
        }
        Ok(())
    }

    /// Releases all of a request's blocks, last block first (so it is evicted first), and forgets its hashes.
    /// Blocks past its `num_computed_tokens` were registered for a step whose KV the request no longer vouches
    /// for (preempted or aborted mid-step), so once free they leave the prefix cache. Copies into its blocks still
    /// pending for this step are dropped: nobody will read them.
    pub fn free(&mut self, request: &Request) {
        let id = request.id;
        self.hashes.remove(&id);
        self.num_registered.remove(&id);
        if let Some(table) = self.tables.remove(&id) {
            self.blocks_to_copy.retain(|(_, dst)| !table.contains(dst));
            self.pool.free_blocks(table.iter().rev().copied());
            let computed_blocks = (request.num_computed_tokens / self.block_size).min(table.len());
            for &b in &table[computed_blocks..] {
                self.pool.uncache_if_free(b);
            }
        }
    }

    /// The `(src, dst)` block copies this step's writes depend on; the runner applies them before the forward.
    pub fn take_blocks_to_copy(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.blocks_to_copy)
    }

    pub fn reset_prefix_cache(&mut self) -> usize {
        self.pool.reset_prefix_cache()
    }

    /// The pool's invariants against these tables, plus: every table belongs to a live request, holds no block
    /// twice, covers the request's computed tokens, and each cached block in it carries the hash of exactly that
    /// request's prefix (recomputed from its tokens).
    pub fn check_integrity(&self, requests: &HashMap<RequestId, Request>) -> Result<(), String> {
        self.pool.check_integrity(self.tables.values().map(Vec::as_slice))?;
        for (id, table) in &self.tables {
            let req = requests
                .get(id)
                .ok_or(format!("block table for unknown or finished request {id}"))?;
            let mut sorted = table.clone();
            sorted.sort_unstable();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return Err(format!("request {id}: a block appears twice in its table"));
            }
            let needed = self.blocks_for(req.num_computed_tokens);
            if table.len() < needed || table.len() > self.blocks_for(req.num_tokens()).max(needed) {
                return Err(format!(
                    "request {id}: {} blocks for {} computed of {} tokens",
                    table.len(),
                    req.num_computed_tokens,
                    req.num_tokens()
                ));
            }
            let mut expected = Vec::new();
            extend_block_hashes_with(self.hash_algo, &mut expected, req, self.block_size);
            if let Some(h) = self.hashes.get(id) {
                if h.len() > expected.len() || h[..] != expected[..h.len()] {
                    return Err(format!("request {id}: stored block hashes do not match its tokens"));
                }
            }
            for (i, &b) in table.iter().enumerate() {
                if let Some(h) = self.pool.block(b).and_then(|b| b.hash) {
                    if expected.get(i) != Some(&h) {
                        return Err(format!(
                            "request {id}: block {b} at index {i} is cached under another prefix"
                        ));
                    }
                }
            }
        }
        if let Some(id) = self
            .hashes
            .keys()
            .chain(self.num_registered.keys())
            .find(|id| !requests.contains_key(id))
        {
            return Err(format!("bookkeeping left behind for finished request {id}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling_params::SamplingParams;
    use std::sync::Arc;

    fn request(id: RequestId, tokens: Vec<u32>) -> Request {
        Request::new(id, tokens, Arc::new(SamplingParams::default()), 8, Arc::new(vec![]), id)
    }

    fn requests(rs: &[&Request]) -> HashMap<RequestId, Request> {
        rs.iter().map(|r| (r.id, (*r).clone())).collect()
    }

    #[test]
    fn prefix_hits_skip_whole_blocks_but_never_the_last_token() {
        let mut m = KvCacheManager::new(16, 4, true).unwrap();
        let mut a = request(1, (0..12).collect());
        assert_eq!(m.get_computed_blocks(&a), (vec![], 0));
        m.allocate_slots(&a, 12, &[]).unwrap();
        a.num_computed_tokens = 12;
        assert_eq!((m.prefix_cache_queries(), m.prefix_cache_hits()), (12, 0));

        // Same 12 tokens: only 2 blocks may hit, the last block is recomputed.
        let b = request(2, (0..12).collect());
        let (blocks, n) = m.get_computed_blocks(&b);
        assert_eq!((blocks.as_slice(), n), (&m.block_table(1)[..2], 8));
        m.allocate_slots(&b, 4, &blocks).unwrap();
        assert_eq!((m.prefix_cache_queries(), m.prefix_cache_hits()), (24, 8));
        assert_eq!(m.block_table(2)[..2], m.block_table(1)[..2]);
        assert_ne!(m.block_table(2)[2], m.block_table(1)[2]);
        let mut b = b;
        b.num_computed_tokens = 12;
        m.check_integrity(&requests(&[&a, &b])).unwrap();

        // Diverging after 6 tokens shares only the first block.
        let c = request(3, vec![0, 1, 2, 3, 4, 5, 99, 99, 99]);
        assert_eq!(m.get_computed_blocks(&c).1, 4);

        // Prompt logprobs need every position's logits: no lookup, no query counted.
        let mut d = request(4, (0..12).collect());
        d.params = Arc::new(SamplingParams {
            prompt_logprobs: Some(1),
            ..Default::default()
        });
        assert_eq!(m.get_computed_blocks(&d).1, 0);
    }

    #[test]
    fn freed_blocks_serve_hits_until_evicted() {
        let mut m = KvCacheManager::new(5, 2, true).unwrap(); // 4 usable
        let a = request(1, vec![1, 2, 3, 4, 5]);
        m.allocate_slots(&a, 5, &[]).unwrap();
        let table = m.block_table(1).to_vec();
        let mut a = a;
        a.num_computed_tokens = 5;
        m.free(&a);
        assert_eq!(m.pool().num_cached_free_blocks(), 2);
        let b = request(2, vec![1, 2, 3, 4, 9]);
        let (blocks, n) = m.get_computed_blocks(&b);
        assert_eq!((blocks.as_slice(), n), (&table[..2], 4));
        // Needs 1 fresh block; 4 free minus the 2 revived hits leaves 2.
        m.allocate_slots(&b, 1, &blocks).unwrap();
        assert_eq!(m.pool().num_free_blocks(), 1);
        let mut b = b;
        b.num_computed_tokens = 5;
        m.check_integrity(&requests(&[&b])).unwrap();
    }

    #[test]
    fn allocation_fails_cleanly_when_blocks_run_out() {
        let mut m = KvCacheManager::new(4, 2, true).unwrap(); // 3 usable
        let a = request(1, (0..7).collect());
        assert!(m.allocate_slots(&a, 7, &[]).is_none());
        assert_eq!(m.pool().num_free_blocks(), 3, "a failed allocation changes nothing");
        assert!(m.block_table(1).is_empty());
        assert!(m.allocate_slots(&a, 6, &[]).is_some());
    }

    #[test]
    fn fork_shares_blocks_and_copy_on_write_splits_the_partial_block() {
        let mut m = KvCacheManager::new(10, 4, true).unwrap();
        let mut p = request(1, (0..6).collect()); // 1 full + 1 partial block
        m.allocate_slots(&p, 6, &[]).unwrap();
        p.num_computed_tokens = 6;
        let mut c = p.clone();
        c.id = 2;
        c.parent = Some(1);
        m.fork(1, 2).unwrap();
        assert_eq!(m.block_table(1), m.block_table(2));
        m.check_integrity(&requests(&[&p, &c])).unwrap();

        // Both decode one token: the first writer copies the shared partial block, the second writes in place.
        p.output_token_ids.push(7);
        c.output_token_ids.push(8);
        let shared = m.block_table(1)[1];
        let fresh = m.allocate_slots(&p, 1, &[]).unwrap();
        assert_eq!(m.take_blocks_to_copy(), vec![(shared, fresh[0])]);
        assert_eq!(m.block_table(1)[1], fresh[0]);
        assert!(m.allocate_slots(&c, 1, &[]).unwrap().is_empty());
        assert!(m.take_blocks_to_copy().is_empty(), "the last holder writes in place");
        assert_eq!(m.block_table(2)[1], shared);
        assert_eq!(m.block_table(1)[0], m.block_table(2)[0], "full blocks stay shared");
        p.num_computed_tokens = 7;
        c.num_computed_tokens = 7;
        m.check_integrity(&requests(&[&p, &c])).unwrap();
        m.free(&p);
        m.free(&c);
        m.check_integrity(&HashMap::new()).unwrap();
        assert_eq!(m.pool().num_blocks_in_use(), 0);
    }

    #[test]
    fn blocks_of_a_step_that_never_ran_leave_the_cache() {
        let mut m = KvCacheManager::new(8, 4, true).unwrap();
        let mut a = request(1, (0..9).collect());
        a.num_computed_tokens = 4;
        m.allocate_slots(&a, 5, &[]).unwrap(); // registers blocks 0 and 1 (block 1 full after this step)
        assert_eq!(m.get_computed_blocks(&request(2, (0..9).collect())).1, 8);
        // Preempted or aborted before the step's update: only block 0 holds computed KV.
        m.free(&a);
        assert_eq!(m.pool().num_cached_free_blocks(), 1);
        assert_eq!(m.get_computed_blocks(&request(3, (0..9).collect())).1, 4);
        m.free(&request(2, vec![]));
        m.free(&request(3, vec![]));
        m.check_integrity(&HashMap::new()).unwrap();
    }

    #[test]
    fn salted_requests_do_not_share() {
        let mut m = KvCacheManager::new(16, 4, true).unwrap();
        let mut a = request(1, (0..9).collect());
        a.cache_salt = Some("alice".into());
        m.allocate_slots(&a, 9, &[]).unwrap();
        let mut b = request(2, (0..9).collect());
        b.cache_salt = Some("bob".into());
        assert_eq!(m.get_computed_blocks(&b).1, 0);
        let mut c = request(3, (0..9).collect());
        c.cache_salt = Some("alice".into());
        assert_eq!(m.get_computed_blocks(&c).1, 8);
    }

    #[test]
    fn integrity_check_catches_a_wrong_prefix_registration() {
        let mut m = KvCacheManager::new(8, 2, true).unwrap();
        let mut a = request(1, vec![1, 2, 3, 4]);
        m.allocate_slots(&a, 4, &[]).unwrap();
        a.num_computed_tokens = 4;
        m.check_integrity(&requests(&[&a])).unwrap();
        // Pretend the request's tokens were different: its cached blocks no longer match its prefix.
        let mut forged = a.clone();
        forged.prompt_token_ids = Arc::new(vec![1, 2, 3, 5]);
        assert!(m.check_integrity(&requests(&[&forged])).is_err());
        // A table for a request the caller does not know is a leak.
        assert!(m.check_integrity(&HashMap::new()).is_err());
    }
}
