//! What prefix-cache block hashing costs per engine step, for each `--prefix-caching-hash-algo`.
//!
//! A step hashes each block that became full in it: a prefill-heavy step with `max_num_batched_tokens` 2048 and
//! 16-token blocks fills up to 128 blocks; a decode step of 64 sequences fills 64 / 16 = 4 blocks on average. This
//! hashes chains of random 16-token blocks (with a salt on the first, as `cache_salt` requests have) and reports
//! nanoseconds per block and microseconds per such step, as one JSON document on stdout.
//!
//!   cargo run --release -p pagedllm-engine --example block_hash_cost [-- BLOCKS [BLOCK_SIZE]]
//!
//! Timings are only meaningful on an otherwise idle machine.

use std::time::Instant;

use pagedllm_engine::kv::{hash_block_with, BlockHash, BlockHashAlgo};
use rand::{Rng, SeedableRng};

fn main() {
    let mut args = std::env::args().skip(1);
    let blocks: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let block_size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let tokens: Vec<u32> = (0..blocks * block_size).map(|_| rng.random_range(0..49_152)).collect();
    let mut results = Vec::new();
    for algo in [BlockHashAlgo::Sha256, BlockHashAlgo::Xxhash] {
        let mut best = f64::INFINITY;
        let mut sink = 0u8;
        for _round in 0..5 {
            let start = Instant::now();
            let mut parent: Option<BlockHash> = None;
            for (i, block) in tokens.chunks_exact(block_size).enumerate() {
                let salt = if i % 64 == 0 { Some("tenant") } else { None };
                let h = hash_block_with(algo, if i % 64 == 0 { None } else { parent }, block, salt);
                sink ^= h.0[0];
                parent = Some(h);
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        let ns_per_block = best * 1e9 / blocks as f64;
        results.push(serde_json::json!({
            "algo": format!("{algo:?}").to_lowercase(),
            "ns_per_block": (ns_per_block * 10.0).round() / 10.0,
            "us_per_prefill_step_128_blocks": (ns_per_block * 128.0 / 100.0).round() / 10.0,
            "us_per_decode_step_4_blocks": (ns_per_block * 4.0 / 100.0).round() / 10.0,
            "checksum": sink,
        }));
    }
    let doc = serde_json::json!({
        "bench": "block_hash_cost",
        "blocks": blocks,
        "block_size": block_size,
        "rounds": 5,
        "timing": "best of 5 rounds",
        "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap());
}
