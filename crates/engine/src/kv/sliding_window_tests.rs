//! Unit tests of the sliding-window release: bounded tables during decode, shared blocks, prefix hits that
//! need only the window's blocks, and the integrity check's placement rules for null entries.

use std::collections::HashMap;
use std::sync::Arc;

use crate::kv::{KvCacheManager, NULL_BLOCK_ID};
use crate::request::{Request, RequestId};
use crate::sampling_params::SamplingParams;

fn request(id: RequestId, tokens: Vec<u32>) -> Request {
    Request::new(id, tokens, Arc::new(SamplingParams::default()), 64, Arc::new(vec![]), id)
}

fn requests(rs: &[&Request]) -> HashMap<RequestId, Request> {
    rs.iter().map(|r| (r.id, (*r).clone())).collect()
}

fn windowed(num_blocks: usize, block_size: usize, window: usize) -> KvCacheManager {
    let mut m = KvCacheManager::new(num_blocks, block_size, true).unwrap();
    m.set_sliding_window(Some(window));
    m
}

/// One decode step of `r`: allocate its next slot, compute it, sample a token, release what fell out.
fn decode(m: &mut KvCacheManager, r: &mut Request, token: u32) {
    r.output_token_ids.push(token);
    m.allocate_slots(r, 1, &[]).expect("a free block");
    r.num_computed_tokens += 1;
    m.remove_skipped_blocks(r);
}

#[test]
fn skipped_blocks_follow_the_next_tokens_window() {
    let m = windowed(8, 4, 8);
    // Next token at 12 reads 5..=12: block 0 (0..=3) is out, block 1 (4..=7) is still needed.
    assert_eq!(m.num_skipped_blocks(12), 1);
    assert_eq!(m.num_skipped_blocks(10), 0);
    assert_eq!(m.num_skipped_blocks(11), 1, "the token at 11 reads 4..=11");
    assert_eq!(m.num_skipped_blocks(0), 0);
    let off = KvCacheManager::new(8, 4, true).unwrap();
    assert_eq!(off.num_skipped_blocks(1000), 0);
}

#[test]
fn a_long_decode_holds_only_the_windows_blocks() {
    let mut m = windowed(32, 4, 8);
    let mut a = request(1, (0..12).collect());
    m.allocate_slots(&a, 12, &[]).unwrap();
    a.num_computed_tokens = 12;
    let first = m.block_table(1)[0];
    m.remove_skipped_blocks(&a);
    assert_eq!(m.block_table(1)[0], NULL_BLOCK_ID);
    assert_eq!(m.num_held_blocks(1), 2);
    // Fully computed, so it keeps its prefix-cache entry while free.
    assert_eq!(m.pool().block(first).unwrap().ref_cnt, 0);
    assert!(m.pool().block(first).unwrap().hash.is_some());
    m.check_integrity(&requests(&[&a])).unwrap();
    for t in 0..40 {
        decode(&mut m, &mut a, 100 + t);
        assert!(m.num_held_blocks(1) <= 8usize.div_ceil(4) + 1, "{:?}", m.block_table(1));
        assert_eq!(m.block_table(1).len(), m.blocks_for(a.num_computed_tokens));
        let nulls = m.block_table(1).iter().take_while(|&&b| b == NULL_BLOCK_ID).count();
        assert_eq!(nulls, m.num_skipped_blocks(a.num_computed_tokens));
        m.check_integrity(&requests(&[&a])).unwrap();
    }
    assert_eq!(m.pool().num_blocks_in_use(), m.num_held_blocks(1));
    m.free(&a);
    assert_eq!(m.pool().num_blocks_in_use(), 0);
    m.check_integrity(&HashMap::new()).unwrap();
}

#[test]
fn releasing_a_shared_block_only_drops_a_reference() {
    let mut m = windowed(32, 4, 8);
    let mut p = request(1, (0..10).collect());
    m.allocate_slots(&p, 10, &[]).unwrap();
    p.num_computed_tokens = 10;
    let mut c = p.clone();
    c.id = 2;
    c.parent = Some(1);
    m.fork(1, 2).unwrap();
    let shared = m.block_table(1)[0];
    // Parent decodes to 12 tokens: block 0 leaves its table but the child still holds it.
    decode(&mut m, &mut p, 7);
    decode(&mut m, &mut p, 7);
    assert_eq!(m.block_table(1)[0], NULL_BLOCK_ID);
    assert_eq!(m.block_table(2)[0], shared);
    assert_eq!(m.pool().block(shared).unwrap().ref_cnt, 1);
    m.check_integrity(&requests(&[&p, &c])).unwrap();
    decode(&mut m, &mut c, 8);
    decode(&mut m, &mut c, 8);
    assert_eq!(m.pool().block(shared).unwrap().ref_cnt, 0, "the last holder released it");
    m.check_integrity(&requests(&[&p, &c])).unwrap();
    // A fork of a table with null entries shares only its real blocks.
    let mut g = c.clone();
    g.id = 3;
    m.fork(2, 3).unwrap();
    m.check_integrity(&requests(&[&p, &c, &g])).unwrap();
    for r in [&mut p, &mut c, &mut g] {
        for t in 0..10 {
            decode(&mut m, r, t);
        }
    }
    m.check_integrity(&requests(&[&p, &c, &g])).unwrap();
    for r in [&p, &c, &g] {
        m.free(r);
    }
    assert_eq!(m.pool().num_blocks_in_use(), 0);
    m.check_integrity(&HashMap::new()).unwrap();
}

#[test]
fn prefix_hits_need_only_the_blocks_the_window_reads() {
    // 7 usable blocks of 4 tokens, window 8.
    let mut m = windowed(8, 4, 8);
    let mut a = request(1, (0..20).collect());
    m.allocate_slots(&a, 20, &[]).unwrap();
    a.num_computed_tokens = 20;
    let table_a = m.block_table(1).to_vec();
    m.remove_skipped_blocks(&a); // blocks 0..3 out: the token at 20 reads 13..=20
    assert_eq!(m.num_held_blocks(1), 2);

    // Every block still cached: the hit covers all 5 full blocks, but only the last 2 are taken (and the 3
    // released ones stay free, not revived).
    let b = request(2, (0..20).chain([99]).collect());
    let (hits, n) = m.get_computed_blocks(&b);
    assert_eq!(n, 20);
    assert_eq!(hits, vec![NULL_BLOCK_ID, NULL_BLOCK_ID, NULL_BLOCK_ID, table_a[3], table_a[4]]);
    let free_before = m.pool().num_free_blocks();
    m.allocate_slots(&b, 1, &hits).unwrap();
    assert_eq!(m.pool().num_free_blocks(), free_before - 1, "only the new token's block is taken");
    let mut b = b;
    b.num_computed_tokens = 20;
    m.check_integrity(&requests(&[&a, &b])).unwrap();
    m.free(&b);

    // Evict the released block 2 (the free list hands out never-used blocks, then 2, 1, 0): a hole in the
    // cached prefix. The window rule still hits all 20 tokens; a contiguous-from-0 rule would stop at 8.
    let mut x = request(3, (500..508).collect());
    m.allocate_slots(&x, 8, &[]).unwrap();
    x.num_computed_tokens = 8;
    assert!(m.block_table(3).contains(&table_a[2]));
    let c = request(4, (0..20).chain([98]).collect());
    assert_eq!(m.get_computed_blocks(&c).1, 20);
    m.free(&x);
    m.free(&c);

    // A hit point whose window blocks are missing falls back to an earlier one: with blocks 3 and 4 gone
    // (`a` freed and evicted), the best hit is 8 tokens (blocks 0, 1, both read by the token at 8).
    m.free(&a);
    m.reset_prefix_cache();
    let mut y = request(5, (0..8).collect());
    m.allocate_slots(&y, 8, &[]).unwrap();
    y.num_computed_tokens = 8;
    let d = request(6, (0..20).chain([97]).collect());
    let (hits, n) = m.get_computed_blocks(&d);
    assert_eq!((hits.len(), n), (2, 8));
    assert!(hits.iter().all(|&b| b != NULL_BLOCK_ID));
}

#[test]
fn integrity_rejects_null_entries_a_future_token_reads() {
    let mut m = windowed(16, 4, 8);
    let mut a = request(1, (0..12).collect());
    m.allocate_slots(&a, 12, &[]).unwrap();
    a.num_computed_tokens = 12;
    m.remove_skipped_blocks(&a);
    m.check_integrity(&requests(&[&a])).unwrap();
    // The same table for a request at position 4: its next token would read the released block 0.
    let mut behind = a.clone();
    behind.num_computed_tokens = 4;
    let e = m.check_integrity(&requests(&[&behind])).unwrap_err();
    assert!(e.contains("null entries"), "{e}");
    // A released entry after a real one.
    let last = m.block_table(1)[2];
    m.tables.get_mut(&1).unwrap()[2] = NULL_BLOCK_ID;
    m.pool.free_blocks([last]);
    let e = m.check_integrity(&requests(&[&a])).unwrap_err();
    assert!(e.contains("after a real block"), "{e}");
}
