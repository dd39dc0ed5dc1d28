//! Paged KV memory management (vLLM V1's `v1/core`): the KV cache is a pool of fixed-size blocks; each request
//! owns a block table mapping its token positions to blocks. Full blocks are content-addressed by chained hashes
//! (automatic prefix caching) and shared between requests by reference counting; freed cached blocks stay
//! findable until evicted in LRU order. With a sliding window on every layer, blocks before a request's window are
//! released during decode (`sliding_window.rs`). Every structure has a `check_integrity` that tests run after each step.

pub mod block_hash;
pub mod block_pool;
pub mod free_block_queue;
pub mod kv_cache_manager;
pub mod sliding_window;

pub use block_hash::{hash_block, hash_block_with, BlockHash, BlockHashAlgo};
pub use block_pool::{BlockPool, KvBlock, NULL_BLOCK_ID};
pub use free_block_queue::{FreeBlockQueue, NO_LINK};
pub use kv_cache_manager::KvCacheManager;
