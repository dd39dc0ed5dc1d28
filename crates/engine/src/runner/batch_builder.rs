//! Builds the flattened `InputBatch` (token ids, positions, query start offsets, sequence lengths, block
//! tables, slot mapping, logits indices) from the scheduled sequences. Pure and unit-tested: every backend
//! consumes exactly these arrays, so their layout is checked here once.

use std::borrow::Cow;

use pagedllm_kernels::InputBatch;

use crate::request::RequestId;

/// One sequence's share of a step, as the runner needs it.
#[derive(Clone)]
pub struct ScheduledSeq<'a> {
    pub request_id: RequestId,
    /// Tokens computed this step (prompt chunk, recompute, or the one decode token), usually borrowed from the
    /// request.
    pub token_ids: Cow<'a, [u32]>,
    /// Position of `token_ids[0]` (= tokens already in the KV cache).
    pub start_pos: usize,
    pub block_table: &'a [u32],
    /// The last token's logits are needed (to sample the next token).
    pub sample: bool,
    /// Positions `p` in this chunk whose logits are needed for prompt log-probs (they predict token `p + 1`).
    pub prompt_logprob_positions: std::ops::Range<usize>,
}

/// Where each request's logits rows landed in the forward's output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchLayout {
    /// Row of the sampling logits per sampling request.
    pub sample_rows: Vec<(RequestId, usize)>,
    /// Rows for prompt log-probs: (request, first position, first row, count).
    pub prompt_logprob_rows: Vec<(RequestId, usize, usize, usize)>,
}

pub fn build_input_batch(seqs: &[ScheduledSeq<'_>], block_size: usize) -> (InputBatch, BatchLayout) {
    let mut b = InputBatch::default();
    let mut layout = BatchLayout::default();
    build_input_batch_into(seqs, block_size, &mut b, &mut layout);
    (b, layout)
}

/// [`build_input_batch`] into existing arrays (cleared first): the engine reuses one batch and layout across
/// steps, so building a step allocates nothing once they have grown.
pub fn build_input_batch_into(
    seqs: &[ScheduledSeq<'_>],
    block_size: usize,
    b: &mut InputBatch,
    layout: &mut BatchLayout,
) {
    let max_blocks = seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(0).max(1);
    b.token_ids.clear();
    b.positions.clear();
    b.query_start_loc.clear();
    b.seq_lens.clear();
    b.block_tables.clear();
    b.block_tables.resize(seqs.len() * max_blocks, 0);
    b.max_blocks_per_seq = max_blocks;
    b.slot_mapping.clear();
    b.logits_indices.clear();
    b.block_size = block_size;
    layout.sample_rows.clear();
    layout.prompt_logprob_rows.clear();
    b.query_start_loc.push(0);
    for (i, s) in seqs.iter().enumerate() {
        let first_row = b.token_ids.len();
        b.block_tables[i * max_blocks..i * max_blocks + s.block_table.len()].copy_from_slice(s.block_table);
        for (k, &tok) in s.token_ids.iter().enumerate() {
            let pos = s.start_pos + k;
            b.token_ids.push(tok);
            b.positions.push(pos as u32);
            let block = s.block_table[pos / block_size] as i64;
            b.slot_mapping
                .push(block * block_size as i64 + (pos % block_size) as i64);
        }
        b.query_start_loc.push(b.token_ids.len() as u32);
        b.seq_lens.push((s.start_pos + s.token_ids.len()) as u32);

        let pl = &s.prompt_logprob_positions;
        if !pl.is_empty() {
            let row0 = b.logits_indices.len();
            for pos in pl.clone() {
                b.logits_indices.push((first_row + pos - s.start_pos) as u32);
            }
            layout
                .prompt_logprob_rows
                .push((s.request_id, pl.start, row0, pl.len()));
        }
        if s.sample {
            layout.sample_rows.push((s.request_id, b.logits_indices.len()));
            b.logits_indices.push((b.token_ids.len() - 1) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_a_prefill_chunk_and_a_decode() {
        let t0 = [7u32, 3];
        let t1 = [5u32, 6];
        let seqs = vec![
            // Prefill chunk of 3 tokens at positions 2..5 of a prompt of 6, with prompt log-probs for 2..5.
            ScheduledSeq {
                request_id: 10,
                token_ids: vec![1, 2, 3].into(),
                start_pos: 2,
                block_table: &t0,
                sample: false,
                prompt_logprob_positions: 2..5,
            },
            // Decode at position 4 (second block, offset 0).
            ScheduledSeq {
                request_id: 11,
                token_ids: vec![9].into(),
                start_pos: 4,
                block_table: &t1,
                sample: true,
                prompt_logprob_positions: 0..0,
            },
        ];
        let (b, layout) = build_input_batch(&seqs, 4);
        b.check();
        assert_eq!(b.token_ids, vec![1, 2, 3, 9]);
        assert_eq!(b.positions, vec![2, 3, 4, 4]);
        assert_eq!(b.query_start_loc, vec![0, 3, 4]);
        assert_eq!(b.seq_lens, vec![5, 5]);
        assert_eq!(b.max_blocks_per_seq, 2);
        assert_eq!(b.block_tables, vec![7, 3, 5, 6]);
        // pos 2,3 -> block 7 offsets 2,3; pos 4 -> block 3 offset 0; the decode at pos 4 -> block 6 offset 0.
        assert_eq!(b.slot_mapping, vec![30, 31, 12, 24]);
        assert_eq!(layout.prompt_logprob_rows, vec![(10, 2, 0, 3)]);
        assert_eq!(layout.sample_rows, vec![(11, 3)]);
        assert_eq!(b.logits_indices, vec![0, 1, 2, 3]);

        // Rebuilding into used arrays gives the same batch: first a different step with more tokens, wider block
        // tables and other rows, whose leftovers must not survive.
        let wide = [9u32, 8, 7, 6, 5];
        let other = [ScheduledSeq {
            request_id: 12,
            token_ids: vec![4; 9].into(),
            start_pos: 8,
            block_table: &wide,
            sample: true,
            prompt_logprob_positions: 8..12,
        }];
        let (mut b2, mut layout2) = build_input_batch(&other, 4);
        assert_eq!(b2.max_blocks_per_seq, 5);
        build_input_batch_into(&seqs, 4, &mut b2, &mut layout2);
        assert_eq!((&b2, &layout2), (&b, &layout));
        // A short block table is padded with zeros, not with the previous step's entries.
        let one = [2u32];
        let mixed = [
            ScheduledSeq {
                request_id: 13,
                token_ids: vec![3].into(),
                start_pos: 1,
                block_table: &one,
                sample: true,
                prompt_logprob_positions: 0..0,
            },
            seqs[1].clone(),
        ];
        build_input_batch_into(&other, 4, &mut b2, &mut layout2);
        build_input_batch_into(&mixed, 4, &mut b2, &mut layout2);
        assert_eq!(b2.block_tables, vec![2, 0, 5, 6]);
        assert_eq!((b2, layout2), build_input_batch(&mixed, 4));
    }
}
