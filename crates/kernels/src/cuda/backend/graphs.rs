//! CUDA graphs for decode steps (vLLM's scheme): one graph per padded batch size, captured at start-up over the
//! decoder's persistent buffers; a decode step uploads its inputs in the graph's fixed layout and replays it.

use super::*;

/// A captured decode step. The graph only refers to the backend's own persistent buffers.
pub(super) struct StepGraph(pub(super) CudaGraph);
// SAFETY: the graph is launched only from the thread that owns the backend (one at a time), on its stream.
unsafe impl Send for StepGraph {}

impl CudaBackend {
    /// A decode step padded to `size` sequences, in the fixed layout its graph was captured with: full-width
    /// block tables; padding sequences have one token, no KV write, context 1 (they read block 0 and are
    /// never sampled).
    pub(super) fn upload_padded_decode(&mut self, batch: &InputBatch, size: usize) -> Result<(), CudaError> {
        let n = batch.num_tokens();
        let w = self.max_blocks_per_seq;
        // Host staging reuses the backend's scratch vectors: a decode step allocates nothing on the host.
        let sc = &mut self.host;
        let padded = |out: &mut Vec<u32>, v: &[u32], fill: u32| {
            out.clear();
            out.extend_from_slice(v);
            out.resize(size, fill);
        };
        sc.tables.clear();
        sc.tables.resize(size * w, 0);
        for s in 0..n {
            let row = batch.block_table(s);
            sc.tables[s * w..s * w + row.len()].copy_from_slice(row);
        }
        sc.slots.clear();
        sc.slots.extend_from_slice(&batch.slot_mapping);
        sc.slots.resize(size, -1);
        if sc.iota.len() < size + 1 {
            sc.iota = (0..=size as u32).collect();
        }
        let g = &self.gpu;
        let inp = &self.inputs;
        padded(&mut sc.ids, &batch.token_ids, 0);
        g.upload(inp.tokens.ptr(), &sc.ids)?;
        padded(&mut sc.ids, &batch.positions, 0);
        g.upload(inp.positions.ptr(), &sc.ids)?;
        g.upload(inp.slots.ptr(), &sc.slots)?;
        g.upload(inp.query_start_loc.ptr(), &sc.iota[..=size])?;
        padded(&mut sc.ids, &batch.seq_lens, 1);
        g.upload(inp.seq_lens.ptr(), &sc.ids)?;
        g.upload(inp.block_tables.ptr(), &sc.tables)?;
        g.upload(inp.logits_indices.ptr(), &sc.iota[..size])?;
        g.upload(inp.tile_seq.ptr(), &sc.iota[..size])?;
        sc.ids.clear();
        sc.ids.resize(size, 0);
        g.upload(inp.tile_q0.ptr(), &sc.ids)?;
        Ok(())
    }

    pub(super) fn decode_shape(&self, size: usize) -> StepShape {
        StepShape {
            tokens: size,
            width: self.max_blocks_per_seq,
            tiles: size,
            logits_rows: size,
        }
    }

    /// Captures one decode-step graph of the model's `forward` per padded batch size (vLLM's CUDA-graph scheme;
    /// `--enforce-eager` skips this). Each capture is preceded by an eager run of the same shape, which creates
    /// the cuBLASLt plans outside the capture.
    pub(super) fn capture_decode_graphs(&mut self, forward: &mut Forward<'_, Self>) -> Result<(), CudaError> {
        let sizes = capture_sizes(self.max_seqs.min(self.max_tokens));
        for &size in &sizes {
            let dummy = InputBatch {
                token_ids: vec![0; size],
                positions: vec![0; size],
                query_start_loc: (0..=size as u32).collect(),
                seq_lens: vec![1; size],
                block_tables: vec![0; size],
                max_blocks_per_seq: 1,
                slot_mapping: vec![-1; size],
                logits_indices: (0..size as u32).collect(),
                block_size: self.opts.block_size,
            };
            self.upload_padded_decode(&dummy, size)?;
            self.step = self.decode_shape(size);
            self.num_logits_rows = size;
            forward(self)?;
            self.gpu.synchronize()?;
            let stream = self.gpu.stream.clone();
            stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                .map_err(driver_err("starting a graph capture"))?;
            let body = forward(self);
            let graph = stream
                .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH)
                .map_err(driver_err("capturing a decode graph"));
            body?;
            let graph = graph?.ok_or_else(|| CudaError::Unsupported("a decode graph captured nothing".into()))?;
            self.graphs.insert(size, StepGraph(graph));
        }
        self.graph_sizes = sizes;
        self.gpu.synchronize()
    }
}
