//! `InputBatch`: ONE flattened, variable-length batch per engine step — the contract between the model runner
//! and every backend (the CUDA backend consumes exactly these arrays). Prefill chunks and decodes are mixed
//! freely: sequence `b` owns tokens `query_start_loc[b]..query_start_loc[b+1]`, which sit at the END of its
//! context of `seq_lens[b]` tokens (earlier ones are already in the paged KV cache, maybe from the prefix cache).

#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputBatch {
    /// `[T]` token ids of every scheduled token, sequence after sequence.
    pub token_ids: Vec<u32>,
    /// `[T]` absolute position of each token in its sequence.
    pub positions: Vec<u32>,
    /// `[B + 1]` prefix sums of tokens per sequence.
    pub query_start_loc: Vec<u32>,
    /// `[B]` context length of each sequence after this step (cached + new tokens).
    pub seq_lens: Vec<u32>,
    /// `[B * max_blocks_per_seq]` block ids, row `b` = sequence `b`'s block table, padded with 0 (the null block).
    pub block_tables: Vec<u32>,
    pub max_blocks_per_seq: usize,
    /// `[T]` KV slot for each token (`block_id * block_size + offset`); -1 = do not write.
    pub slot_mapping: Vec<i64>,
    /// Token rows whose logits the caller wants, in the order the logits are returned.
    pub logits_indices: Vec<u32>,
    pub block_size: usize,
}

impl InputBatch {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.seq_lens.len()
    }

    pub fn block_table(&self, b: usize) -> &[u32] {
        &self.block_tables[b * self.max_blocks_per_seq..(b + 1) * self.max_blocks_per_seq]
    }

    /// Panics with a message if the arrays disagree; backends call it in debug builds and tests.
    pub fn check(&self) {
        let t = self.token_ids.len();
        let b = self.seq_lens.len();
        assert_eq!(self.positions.len(), t, "positions");
        assert_eq!(self.slot_mapping.len(), t, "slot_mapping");
        assert_eq!(self.query_start_loc.len(), b + 1, "query_start_loc");
        assert_eq!(self.query_start_loc[b] as usize, t, "query_start_loc total");
        assert_eq!(self.block_tables.len(), b * self.max_blocks_per_seq, "block_tables");
        for s in 0..b {
            let q = (self.query_start_loc[s + 1] - self.query_start_loc[s]) as usize;
            assert!(q <= self.seq_lens[s] as usize, "seq {s}: more new tokens than context");
            assert!(
                (self.seq_lens[s] as usize).div_ceil(self.block_size) <= self.max_blocks_per_seq,
                "seq {s}: block table too short"
            );
        }
        for &i in &self.logits_indices {
            assert!((i as usize) < t, "logits index {i} out of range");
        }
    }
}
