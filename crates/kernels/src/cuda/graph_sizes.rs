//! Which batch sizes get a captured CUDA graph for decode steps, and which one a step uses (vLLM's scheme:
//! 1, 2, 4, then every multiple of 8, up to `max_num_seqs`; a step of n sequences replays the smallest
//! captured size >= n with the rest padded; larger steps run eagerly). Pure: unit-tested without a GPU.

/// Largest batch captured (vLLM's default cap): beyond it launch overhead is a small share of a step.
pub const MAX_CAPTURED_BATCH: usize = 512;

/// Batch sizes to capture for an engine of `max_num_seqs`, ascending.
pub fn capture_sizes(max_num_seqs: usize) -> Vec<usize> {
    let cap = max_num_seqs.min(MAX_CAPTURED_BATCH);
    let mut sizes: Vec<usize> = [1, 2, 4]
        .into_iter()
        .chain((8..=MAX_CAPTURED_BATCH).step_by(8))
        .filter(|&s| s <= cap)
        .collect();
    // The largest batch the engine can form must be covered too (e.g. max_num_seqs = 12 -> 16 is too big).
    if cap > 0 && sizes.last() != Some(&cap) {
        sizes.push(cap);
    }
    sizes
}

/// The captured size a decode step of `n` sequences replays, if any.
pub fn bucket_for(n: usize, sizes: &[usize]) -> Option<usize> {
    if n == 0 {
        return None;
    }
    sizes.iter().copied().find(|&s| s >= n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_like_sizes() {
        assert_eq!(capture_sizes(1), vec![1]);
        assert_eq!(capture_sizes(12), vec![1, 2, 4, 8, 12]);
        let s = capture_sizes(256);
        assert_eq!(&s[..6], &[1, 2, 4, 8, 16, 24]);
        assert_eq!(*s.last().unwrap(), 256);
        assert_eq!(capture_sizes(4096).last(), Some(&MAX_CAPTURED_BATCH));
    }

    #[test]
    fn every_batch_pads_to_the_smallest_size_that_holds_it() {
        for max in [1usize, 3, 12, 64, 100, 256, 1000] {
            let sizes = capture_sizes(max);
            assert!(sizes.windows(2).all(|w| w[0] < w[1]));
            for n in 1..=max {
                match bucket_for(n, &sizes) {
                    Some(b) => {
                        assert!(b >= n && sizes.contains(&b));
                        assert!(sizes.iter().all(|&s| s < n || s >= b), "not the smallest");
                    }
                    None => assert!(n > MAX_CAPTURED_BATCH),
                }
            }
            assert_eq!(bucket_for(0, &sizes), None);
        }
    }
}
