//! Sliding-window KV release: for models whose EVERY layer attends to only the last `w` positions (Mistral
//! v0.1, Phi-3 with a window), a request's blocks that lie wholly before the window of its next token are
//! released during decode, so a long generation holds about `ceil(w / block_size) + 1` blocks, not its whole
//! context. The design follows vLLM V1's `SlidingWindowManager` (`remove_skipped_blocks`, null-block table
//! entries, `find_longest_cache_hit`); this is our own code.
//!
//! Guarantees:
//! - A token at position `p` reads positions `p + 1 - w ..= p` (the attention kernels never read earlier keys,
//!   CPU and CUDA alike). With `c = num_computed_tokens`, every later token of the request sits at `>= c`, so
//!   table entry `i` is released once its last position `(i + 1) * bs - 1 < c + 1 - w`, i.e. for
//!   `i < (c + 1 - w) / bs` (`num_skipped_blocks`). Nothing at or after that index is ever released.
//! - A released entry becomes the null block 0 (a valid index that kernels never dereference for it), so block
//!   `i` still maps positions `[i * bs, (i + 1) * bs)`. Null entries form a prefix of the table.
//! - Releasing drops one reference (a block shared by a fork or a prefix hit stays with its other holders). A
//!   released block is fully computed, so it keeps its prefix-cache hash and stays findable until evicted, like
//!   blocks released by `free`; entries are released last-first, so a prefix's first blocks are evicted last.
//! - Prefix hits (`window_cache_hit`) need only the blocks the next token reads: the last
//!   `k - num_skipped_blocks(k * bs)` blocks before the hit point `k` must be cached and contiguous; earlier
//!   entries come back as null blocks. (Hashes chain over the whole prefix, so a hit still means equal tokens
//!   from position 0.)
//!
//! Not for interleaved local/global models (Gemma 2/3 `sliding_layers`): their global layers read every
//! position through the same block table, so nothing may be released. Per-layer-group block tables (vLLM's
//! hybrid KV-cache allocator) would be the way to release the local layers' blocks; not done.

use super::block_hash::BlockHash;
use super::block_pool::NULL_BLOCK_ID;
use super::kv_cache_manager::KvCacheManager;
use crate::request::{Request, RequestId};

impl KvCacheManager {
    /// Leading table entries no token at position `>= num_computed` reads (0 without a window).
    pub fn num_skipped_blocks(&self, num_computed: usize) -> usize {
        match self.sliding_window {
            Some(w) => (num_computed + 1).saturating_sub(w) / self.block_size(),
            None => 0,
        }
    }

    /// Releases the request's blocks that no future token of it reads, given its `num_computed_tokens`. The
    /// scheduler calls it once a step's tokens are computed; `allocate_slots` also does before allocating.
    pub fn remove_skipped_blocks(&mut self, request: &Request) {
        let skipped = self.num_skipped_blocks(request.num_computed_tokens);
        self.release_skipped(request.id, skipped);
    }

    /// Replaces table entries `..skipped` of `id` by the null block, dropping their references, last first.
    pub(super) fn release_skipped(&mut self, id: RequestId, skipped: usize) {
        let Some(table) = self.tables.get_mut(&id) else { return };
        // Nulls are a prefix: walk back from the end of the range to the first entry already released.
        let mut released = Vec::new();
        let end = skipped.min(table.len());
        for entry in table[..end].iter_mut().rev() {
            if *entry == NULL_BLOCK_ID {
                break;
            }
            released.push(std::mem::replace(entry, NULL_BLOCK_ID));
        }
        if released.is_empty() {
            return;
        }
        // A pending copy into a released block would be read by nobody (cannot happen: copies target the write
        // range, which is inside the window; kept as a guard like `free`'s).
        self.blocks_to_copy.retain(|(_, dst)| !released.contains(dst));
        self.pool.free_blocks(released);
    }

    /// The longest prefix hit under the window among `hashes` (the candidate full blocks of a prompt): the
    /// largest `k` whose last `max(1, k - num_skipped_blocks(k * bs))` blocks are all cached. Returns `k` table
    /// entries, null where the request will not read.
    pub(super) fn window_cache_hit(&self, hashes: &[BlockHash]) -> Vec<u32> {
        let bs = self.block_size();
        let found: Vec<Option<u32>> = hashes.iter().map(|&h| self.pool.get_cached_block(h)).collect();
        let (mut best, mut run) = (0, 0);
        for (i, b) in found.iter().enumerate() {
            run = if b.is_some() { run + 1 } else { 0 };
            let k = i + 1;
            if run >= (k - self.num_skipped_blocks(k * bs)).max(1) {
                best = k;
            }
        }
        let skipped = self.num_skipped_blocks(best * bs);
        (0..best)
            .map(|i| if i < skipped { NULL_BLOCK_ID } else { found[i].unwrap_or(NULL_BLOCK_ID) })
            .collect()
    }
}

#[cfg(test)]
#[path = "sliding_window_tests.rs"]
mod tests;
