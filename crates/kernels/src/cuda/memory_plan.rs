//! KV-cache sizing from a memory profile, after vLLM's `determine_num_available_blocks`: after the weights are
//! loaded and one forward pass of the largest step has run, the KV cache gets
//! `gpu_memory_utilization x total - (memory in use now)`. "In use now" counts everything on the device (our
//! weights and activation buffers, cuBLAS workspaces, the CUDA context, other processes), so the budget is a
//! share of the whole card, as vLLM's flag means. Pure arithmetic: unit-tested without a GPU.

/// The outcome of planning, logged at start-up.
#[derive(Clone, Debug, PartialEq)]
pub struct KvPlan {
    pub total_bytes: usize,
    pub in_use_bytes: usize,
    pub budget_bytes: usize,
    pub kv_bytes: usize,
    pub bytes_per_block: usize,
    pub num_blocks: usize,
}

/// Blocks for the KV cache, or a message naming what does not fit. `in_use` is `total - free` measured after
/// the profile step. At least two blocks are needed (block 0 is the reserved null block).
pub fn plan_kv_blocks(
    total: usize,
    in_use: usize,
    gpu_memory_utilization: f64,
    bytes_per_block: usize,
) -> Result<KvPlan, String> {
    if !(gpu_memory_utilization > 0.0 && gpu_memory_utilization <= 1.0) {
        return Err(format!(
            "gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
        ));
    }
    if bytes_per_block == 0 {
        return Err("a KV block of 0 bytes".into());
    }
    let budget = (total as f64 * gpu_memory_utilization) as usize;
    let kv_bytes = budget.saturating_sub(in_use);
    let num_blocks = kv_bytes / bytes_per_block;
    if num_blocks < 2 {
        return Err(format!(
            "{:.2} GiB of {:.2} GiB are in use after loading the model and profiling a step, leaving {:.2} GiB \
             under gpu_memory_utilization {gpu_memory_utilization}: not enough for 2 KV blocks of {} bytes; \
             raise gpu_memory_utilization or lower max_num_batched_tokens",
            gib(in_use),
            gib(total),
            gib(kv_bytes),
            bytes_per_block
        ));
    }
    Ok(KvPlan {
        total_bytes: total,
        in_use_bytes: in_use,
        budget_bytes: budget,
        kv_bytes: num_blocks * bytes_per_block,
        bytes_per_block,
        num_blocks,
    })
}

fn gib(b: usize) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    #[test]
    fn budget_is_a_share_of_the_card_minus_what_is_in_use() {
        // H100-like: 80 GiB, 16 GiB of weights + 2 GiB of activations and context in use, 0.9 of the card.
        let per_block = 16 * 131072; // Llama-3-8B: 128 KiB per token, 16 tokens per block
        let p = plan_kv_blocks(80 * GIB, 18 * GIB, 0.9, per_block).unwrap();
        let expected = ((80.0 * 0.9 - 18.0) * GIB as f64) as usize / per_block;
        assert_eq!(p.num_blocks, expected);
        assert!(p.kv_bytes <= p.budget_bytes - p.in_use_bytes);
        assert!(p.kv_bytes + per_block > p.budget_bytes - p.in_use_bytes);
    }

    #[test]
    fn refuses_when_nothing_is_left_and_names_the_knob() {
        let err = plan_kv_blocks(80 * GIB, 75 * GIB, 0.9, 1 << 21).unwrap_err();
        assert!(err.contains("gpu_memory_utilization"), "{err}");
        assert!(plan_kv_blocks(80 * GIB, 0, 0.0, 1).is_err());
        assert!(plan_kv_blocks(80 * GIB, 0, 1.5, 1).is_err());
        assert!(plan_kv_blocks(80 * GIB, 0, f64::NAN, 1).is_err());
    }

    #[test]
    fn randomized_plans_never_exceed_the_budget() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let total = ((x >> 33) as usize % (200 * GIB)) + GIB;
            let in_use = (x as usize >> 7) % total;
            let util = ((x >> 17) % 1000 + 1) as f64 / 1000.0;
            let per_block = ((x >> 40) as usize % (4 << 20)) + 1;
            if let Ok(p) = plan_kv_blocks(total, in_use, util, per_block) {
                assert!(p.num_blocks >= 2);
                assert!(p.in_use_bytes + p.kv_bytes <= p.budget_bytes);
                assert!(p.budget_bytes as f64 <= total as f64 * util + 1.0);
            }
        }
    }
}
