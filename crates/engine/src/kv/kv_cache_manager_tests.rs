//! Unit tests of `KvCacheManager` without a sliding window (prefix hits, eviction, fork / copy-on-write).

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
