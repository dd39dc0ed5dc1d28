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
//! - With a sliding window (`set_sliding_window`), table entries wholly before the window of a request's next
//!   token are released and replaced by the null block 0 (`sliding_window.rs`); such null entries always form
//!   a prefix of the table. Without one, tables never hold the null block.

use std::collections::HashMap;

use super::block_hash::{extend_block_hashes_with, BlockHash, BlockHashAlgo};
use super::block_pool::{BlockPool, NULL_BLOCK_ID};
use crate::error::{EngineError, Result};
use crate::request::{Request, RequestId};

#[derive(Clone, Debug)]
pub struct KvCacheManager {
    pub(super) pool: BlockPool,
    block_size: usize,
    enable_caching: bool,
    hash_algo: BlockHashAlgo,
    pub(super) tables: HashMap<RequestId, Vec<u32>>,
    /// Chained hashes of each request's full blocks, extended as tokens arrive.
    hashes: HashMap<RequestId, Vec<BlockHash>>,
    /// Leading table entries already offered to the prefix cache.
    num_registered: HashMap<RequestId, usize>,
    pub(super) blocks_to_copy: Vec<(u32, u32)>,
    prefix_cache_queries: u64,
    prefix_cache_hits: u64,
    /// Every layer attends to at most this many positions (None: full attention, nothing is released early).
    pub(super) sliding_window: Option<usize>,
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
            sliding_window: None,
        })
    }

    /// Chooses the block hash (before any request holds blocks: hashes of different functions never match).
    pub fn set_hash_algo(&mut self, algo: BlockHashAlgo) {
        debug_assert!(self.tables.is_empty());
        self.hash_algo = algo;
    }

    /// Releases blocks wholly before the window of every request's next token (see `sliding_window.rs`). Only
    /// for models whose EVERY layer uses this window; set before any request holds blocks. 0 counts as none.
    pub fn set_sliding_window(&mut self, window: Option<usize>) {
        debug_assert!(self.tables.is_empty());
        self.sliding_window = window.filter(|&w| w > 0);
    }

    pub fn sliding_window(&self) -> Option<usize> {
        self.sliding_window
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

    /// Real blocks in the request's table (its null entries, released out of the window, excluded). O(log n):
    /// the null entries are a prefix.
    pub fn num_held_blocks(&self, id: RequestId) -> usize {
        let table = self.block_table(id);
        table.len() - table.partition_point(|&b| b == NULL_BLOCK_ID)
    }

    /// The longest cached prefix of a request that holds no blocks yet: `(blocks, num_computed_tokens)`.
    /// Stops one token short of the request's end so that its last token is always computed. With a sliding
    /// window only the blocks the next token reads must be cached; those before are null entries
    /// (`window_cache_hit`).
    pub fn get_computed_blocks(&mut self, request: &Request) -> (Vec<u32>, usize) {
        if !self.reads_prefix_cache(request) || self.has_blocks(request.id) {
            return (Vec::new(), 0);
        }
        let mut hashes = self.hashes.remove(&request.id).unwrap_or_default();
        extend_block_hashes_with(self.hash_algo, &mut hashes, request, self.block_size);
        let max_blocks = request.num_tokens().saturating_sub(1) / self.block_size;
        let candidates = &hashes[..max_blocks.min(hashes.len())];
        let blocks: Vec<u32> = match self.sliding_window {
            None => candidates.iter().map_while(|&h| self.pool.get_cached_block(h)).collect(),
            Some(_) => self.window_cache_hit(candidates),
        };
        self.hashes.insert(request.id, hashes);
        let n = blocks.len() * self.block_size;
        (blocks, n)
    }

    /// Makes room for `num_new_tokens` more tokens of `request` after its `num_computed_tokens` plus the
    /// `new_computed_blocks` of a prefix hit (appended to its table first). Returns the freshly allocated blocks
    /// (copy-on-write targets first), or `None` when too few blocks are free; then nothing has changed but the
    /// release of blocks outside the sliding window, which no token of the request reads any more.
    ///
    /// With a sliding window, entries of `new_computed_blocks` the request will never read become null entries
    /// (not referenced, not revived); the entries it will read must be real blocks, else `None`.
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
        // Released first, so this request's own stale blocks count as free below.
        let skipped = self.num_skipped_blocks(num_computed);
        self.release_skipped(id, skipped);
        let hits: Vec<u32> = (table_len..)
            .zip(new_computed_blocks)
            .map(|(i, &b)| if i < skipped { NULL_BLOCK_ID } else { b })
            .collect();
        if hits.iter().enumerate().any(|(j, &b)| b == NULL_BLOCK_ID && table_len + j >= skipped) {
            debug_assert!(false, "request {id}: a prefix hit inside the window lacks its block");
            return None;
        }
        let new_computed_blocks = &hits[..];
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
            .filter(|&&b| b != NULL_BLOCK_ID && self.pool.block(b).is_some_and(|b| b.ref_cnt == 0))
            .count();
        if num_fresh + cow.len() + revived > self.pool.num_free_blocks() {
            return None;
        }

        if table_len == 0 && self.reads_prefix_cache(request) {
            self.prefix_cache_queries += request.num_tokens() as u64;
            self.prefix_cache_hits += (new_computed_blocks.len() * bs) as u64;
        }
        let live: Vec<u32> = new_computed_blocks.iter().copied().filter(|&b| b != NULL_BLOCK_ID).collect();
        self.pool.touch(&live);
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
        let live: Vec<u32> = table.iter().copied().filter(|&b| b != NULL_BLOCK_ID).collect();
        self.pool.touch(&live);
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
            self.pool.free_blocks(table.iter().rev().copied().filter(|&b| b != NULL_BLOCK_ID));
            let computed_blocks = (request.num_computed_tokens / self.block_size).min(table.len());
            for &b in table[computed_blocks..].iter().filter(|&&b| b != NULL_BLOCK_ID) {
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
    /// request's prefix (recomputed from its tokens). Null entries (sliding window only) form a prefix of the
    /// table and cover no position the request's next token reads.
    pub fn check_integrity(&self, requests: &HashMap<RequestId, Request>) -> Result<(), String> {
        self.pool.check_integrity(self.tables.values().map(Vec::as_slice))?;
        for (id, table) in &self.tables {
            let req = requests
                .get(id)
                .ok_or(format!("block table for unknown or finished request {id}"))?;
            let nulls = table.iter().take_while(|&&b| b == NULL_BLOCK_ID).count();
            if table[nulls..].contains(&NULL_BLOCK_ID) {
                return Err(format!("request {id}: a null entry after a real block"));
            }
            if nulls > self.num_skipped_blocks(req.num_computed_tokens) {
                return Err(format!(
                    "request {id}: {nulls} null entries, but its next token (position {}) reads block {}",
                    req.num_computed_tokens,
                    self.num_skipped_blocks(req.num_computed_tokens)
                ));
            }
            let mut sorted: Vec<u32> = table[nulls..].to_vec();
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
#[path = "kv_cache_manager_tests.rs"]
mod tests;
