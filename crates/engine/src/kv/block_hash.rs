//! Block hashes for automatic prefix caching (vLLM V1's `hash_block_tokens`): a FULL block's hash chains the
//! previous block's hash, this block's token ids and extra keys, so equal hashes mean equal whole prefixes, not
//! just equal blocks. The request's `cache_salt` is an extra key of the first block only; the chain carries it
//! into every later block, so requests with different salts never share a block.
//!
//! The hash runs over an unambiguous byte encoding, with one of two functions (vLLM's
//! `--prefix-caching-hash-algo`):
//! - `sha256` (the default, as in vLLM since 0.10.2): collision-resistant, so a client cannot craft a prompt whose
//!   blocks collide with another client's and be served their KV (or poison the cache for them).
//! - `xxhash` (xxh3-128): several times faster, and an accidental collision is negligible, but it is not keyed,
//!   so collisions can be constructed; for deployments whose clients are all trusted.
//!
//! Both fill a 32-byte `BlockHash` (xxh3 the first 16 bytes), so the cache's types do not depend on the choice.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_128;

use crate::request::Request;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 32]);

/// Which function hashes prefix-cache blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockHashAlgo {
    #[default]
    Sha256,
    Xxhash,
}

/// SHA-256 hash of one full block given its parent's hash (`None` for the first block of a sequence).
pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32], salt: Option<&str>) -> BlockHash {
    hash_block_with(BlockHashAlgo::Sha256, parent, tokens, salt)
}

/// Hash of one full block with `algo`.
pub fn hash_block_with(algo: BlockHashAlgo, parent: Option<BlockHash>, tokens: &[u32], salt: Option<&str>) -> BlockHash {
    let mut buf = Vec::with_capacity(1 + 32 + 4 + tokens.len() * 4 + 1 + salt.map_or(0, str::len));
    match parent {
        Some(BlockHash(h)) => {
            buf.push(1);
            buf.extend_from_slice(&h);
        }
        None => buf.push(0),
    }
    buf.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    for &t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    // The salt goes last, after the length-prefixed tokens, so the encoding stays unambiguous.
    if let Some(s) = salt {
        buf.push(1);
        buf.extend_from_slice(s.as_bytes());
    }
    let mut out = [0u8; 32];
    match algo {
        BlockHashAlgo::Sha256 => out.copy_from_slice(&Sha256::digest(&buf)),
        BlockHashAlgo::Xxhash => out[..16].copy_from_slice(&xxh3_128(&buf).to_le_bytes()),
    }
    BlockHash(out)
}

/// Extends `hashes` (the request's chained block hashes so far) to cover every full block of its current
/// tokens. Blocks already hashed are kept: tokens of a request never change, they are only appended.
pub fn extend_block_hashes(hashes: &mut Vec<BlockHash>, request: &Request, block_size: usize) {
    extend_block_hashes_with(BlockHashAlgo::Sha256, hashes, request, block_size)
}

/// `extend_block_hashes` with a chosen hash function.
pub fn extend_block_hashes_with(algo: BlockHashAlgo, hashes: &mut Vec<BlockHash>, request: &Request, block_size: usize) {
    let num_full = request.num_tokens() / block_size;
    while hashes.len() < num_full {
        let i = hashes.len();
        let tokens = request.tokens(i * block_size, (i + 1) * block_size);
        let salt = if i == 0 { request.cache_salt.as_deref() } else { None };
        hashes.push(hash_block_with(algo, hashes.last().copied(), &tokens, salt));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling_params::SamplingParams;
    use std::sync::Arc;

    fn request(tokens: Vec<u32>, salt: Option<&str>) -> Request {
        let mut r = Request::new(1, tokens, Arc::new(SamplingParams::default()), 16, Arc::new(vec![]), 0);
        r.cache_salt = salt.map(str::to_string);
        r
    }

    #[test]
    fn hashes_chain_over_the_whole_prefix() {
        let a = request(vec![1, 2, 3, 4, 5, 6, 7, 8, 9], None);
        let b = request(vec![9, 9, 3, 4, 5, 6, 7, 8], None);
        let (mut ha, mut hb) = (Vec::new(), Vec::new());
        extend_block_hashes(&mut ha, &a, 4);
        extend_block_hashes(&mut hb, &b, 4);
        assert_eq!(ha.len(), 2, "only full blocks are hashed");
        // Second blocks hold the same tokens but follow different prefixes.
        assert_ne!(ha[1], hb[1]);
        assert_eq!(ha[0], hash_block(None, &[1, 2, 3, 4], None));
        assert_eq!(ha[1], hash_block(Some(ha[0]), &[5, 6, 7, 8], None));
    }

    #[test]
    fn salt_separates_and_extension_is_incremental() {
        let toks: Vec<u32> = (0..12).collect();
        let (mut plain, mut salted, mut other) = (Vec::new(), Vec::new(), Vec::new());
        extend_block_hashes(&mut plain, &request(toks.clone(), None), 4);
        extend_block_hashes(&mut salted, &request(toks.clone(), Some("s1")), 4);
        extend_block_hashes(&mut other, &request(toks.clone(), Some("s2")), 4);
        for i in 0..3 {
            assert_ne!(plain[i], salted[i]);
            assert_ne!(salted[i], other[i]);
        }
        // Growing a request token by token gives the same hashes as hashing it at once.
        let mut r = request(vec![0, 1, 2], None);
        let mut inc = Vec::new();
        for t in 3..12 {
            r.output_token_ids.push(t);
            extend_block_hashes(&mut inc, &r, 4);
        }
        assert_eq!(inc, plain);
    }

    #[test]
    fn algorithms_differ_and_sha256_is_the_default() {
        let a = hash_block_with(BlockHashAlgo::Sha256, None, &[1, 2, 3], Some("t"));
        let b = hash_block_with(BlockHashAlgo::Xxhash, None, &[1, 2, 3], Some("t"));
        assert_ne!(a, b);
        assert_eq!(a, hash_block(None, &[1, 2, 3], Some("t")));
        assert_eq!(BlockHashAlgo::default(), BlockHashAlgo::Sha256);
        // xxh3 fills 16 bytes; SHA-256 all 32.
        assert_eq!(&b.0[16..], &[0u8; 16]);
        assert_ne!(&a.0[16..], &[0u8; 16]);
        // The salt is part of the hash under both.
        for algo in [BlockHashAlgo::Sha256, BlockHashAlgo::Xxhash] {
            assert_ne!(hash_block_with(algo, None, &[1], Some("x")), hash_block_with(algo, None, &[1], Some("y")));
            assert_ne!(hash_block_with(algo, None, &[1], Some("x")), hash_block_with(algo, None, &[1], None));
        }
        let algo: BlockHashAlgo = serde_json::from_str("\"xxhash\"").unwrap();
        assert_eq!(algo, BlockHashAlgo::Xxhash);
    }
}
