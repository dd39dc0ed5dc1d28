//! `FreeBlockQueue`: the free KV blocks as a doubly linked list threaded through two index arrays (vLLM V1's
//! `FreeKVCacheBlockQueue`). The list order IS the eviction order: allocation pops the head (least recently
//! freed), freeing appends to the tail, and a prefix-cache hit unlinks a block from the middle in O(1).
//!
//! Hand-written rather than a `VecDeque` or `LinkedList` because the middle removal must be O(1) by block id,
//! and the links live in flat `Vec<u32>`s indexed by block id (no per-node allocation, no pointers).

/// Marks "no neighbour" in `prev` / `next` and an empty list's head / tail.
pub const NO_LINK: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub struct FreeBlockQueue {
    prev: Vec<u32>,
    next: Vec<u32>,
    linked: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl FreeBlockQueue {
    /// An empty queue able to hold block ids `0..capacity`.
    pub fn new(capacity: usize) -> Self {
        Self {
            prev: vec![NO_LINK; capacity],
            next: vec![NO_LINK; capacity],
            linked: vec![false; capacity],
            head: NO_LINK,
            tail: NO_LINK,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, id: u32) -> bool {
        self.linked.get(id as usize).copied().unwrap_or(false)
    }

    /// The block that would be evicted next, without removing it.
    pub fn peek_front(&self) -> Option<u32> {
        (self.head != NO_LINK).then_some(self.head)
    }

    /// Appends `id` at the tail (evicted last). Returns false (and changes nothing) if it is already queued
    /// or out of range.
    pub fn push_back(&mut self, id: u32) -> bool {
        if id as usize >= self.linked.len() || self.linked[id as usize] {
            return false;
        }
        let i = id as usize;
        self.prev[i] = self.tail;
        self.next[i] = NO_LINK;
        if self.tail == NO_LINK {
            self.head = id;
        } else {
            self.next[self.tail as usize] = id;
        }
        self.tail = id;
        self.linked[i] = true;
        self.len += 1;
        true
    }

    /// Removes and returns the head (the least recently freed block).
    pub fn pop_front(&mut self) -> Option<u32> {
        let id = self.peek_front()?;
        self.remove(id);
        Some(id)
    }

    /// Unlinks `id` wherever it is. Returns false if it was not queued.
    pub fn remove(&mut self, id: u32) -> bool {
        if !self.contains(id) {
            return false;
        }
        let i = id as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NO_LINK {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NO_LINK {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NO_LINK;
        self.next[i] = NO_LINK;
        self.linked[i] = false;
        self.len -= 1;
        true
    }

    /// Block ids from head (next evicted) to tail.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NO_LINK {
                return None;
            }
            let id = cur;
            cur = self.next[id as usize];
            Some(id)
        })
    }

    /// Walks the list both ways and checks that links, membership flags and the length agree.
    pub fn check_integrity(&self) -> Result<(), String> {
        let cap = self.linked.len();
        let mut forward = Vec::with_capacity(self.len);
        let mut cur = self.head;
        let mut prev = NO_LINK;
        while cur != NO_LINK {
            if cur as usize >= cap {
                return Err(format!("free list links to out-of-range block {cur}"));
            }
            if forward.len() > self.len {
                return Err(format!("free list is longer than its length {} (cycle?)", self.len));
            }
            if self.prev[cur as usize] != prev {
                return Err(format!(
                    "block {cur}: prev link {} but reached from {prev}",
                    self.prev[cur as usize]
                ));
            }
            if !self.linked[cur as usize] {
                return Err(format!("block {cur} is in the free list but not marked linked"));
            }
            forward.push(cur);
            prev = cur;
            cur = self.next[cur as usize];
        }
        if prev != self.tail {
            return Err(format!("free list ends at {prev} but tail is {}", self.tail));
        }
        if forward.len() != self.len {
            return Err(format!(
                "free list walks {} blocks but its length is {}",
                forward.len(),
                self.len
            ));
        }
        let mut backward = Vec::with_capacity(self.len);
        let mut cur = self.tail;
        while cur != NO_LINK && backward.len() <= self.len {
            backward.push(cur);
            cur = self.prev[cur as usize];
        }
        backward.reverse();
        if backward != forward {
            return Err("free list differs walked forward and backward".to_string());
        }
        let marked = self.linked.iter().filter(|&&l| l).count();
        if marked != self.len {
            return Err(format!(
                "{marked} blocks marked linked but the free list holds {}",
                self.len
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::VecDeque;

    #[test]
    fn matches_a_reference_deque_under_random_operations() {
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let cap = 16;
            let mut q = FreeBlockQueue::new(cap);
            let mut reference: VecDeque<u32> = VecDeque::new();
            for _ in 0..500 {
                let id = rng.random_range(0..cap as u32);
                match rng.random_range(0..3) {
                    0 => {
                        let pushed = q.push_back(id);
                        assert_eq!(pushed, !reference.contains(&id));
                        if pushed {
                            reference.push_back(id);
                        }
                    }
                    1 => assert_eq!(q.pop_front(), reference.pop_front()),
                    _ => {
                        let pos = reference.iter().position(|&x| x == id);
                        assert_eq!(q.remove(id), pos.is_some());
                        if let Some(p) = pos {
                            reference.remove(p);
                        }
                    }
                }
                q.check_integrity().unwrap();
                assert_eq!(
                    q.iter().collect::<Vec<_>>(),
                    reference.iter().copied().collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn integrity_check_catches_a_broken_link() {
        let mut q = FreeBlockQueue::new(4);
        for id in 0..4 {
            q.push_back(id);
        }
        q.next[1] = 3; // skip block 2
        assert!(q.check_integrity().is_err());
    }
}
