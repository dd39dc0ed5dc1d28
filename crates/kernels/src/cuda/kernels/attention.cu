// Paged attention over a flattened varlen batch: prefill chunks and decodes in one launch.
//
// Query token t belongs to sequence s (found from query_start_loc); it attends causally to the first
// ctx = seq_lens[s] - (q_end(s) - 1 - t) tokens of its sequence, read from the paged cache through
// block_tables[s] — earlier blocks may come from the prefix cache or earlier chunks, so nothing assumes the
// keys were computed in this step. GQA: query head h reads kv head h / (num_heads / num_kv_heads).
//
// Grid (T, num_heads), 4 warps per block. Each warp walks every 4th key with an online softmax; lane l holds
// dims [l * HD/32, (l + 1) * HD/32) of q, k, v and the output. The warps merge at the end through shared memory.
// This is the correct, simple first version (one block per query head; K/V re-reads of a GQA group come from
// L2): the split-KV decode and tensor-core prefill kernels replace it without changing its interface.
#include "common.cuh"

#define ATTN_WARPS 4

template <int HD>
__device__ void paged_attention(const bf16* __restrict__ q, int q_stride, const bf16* __restrict__ k_cache,
                                const bf16* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                                int max_blocks_per_seq, const int* __restrict__ seq_lens,
                                const int* __restrict__ query_start_loc, int num_seqs, bf16* __restrict__ out,
                                int num_heads, int num_kv_heads, int block_size, float scale) {
  constexpr int PER_LANE = HD / 32;
  const int t = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Sequence of token t: the last s with query_start_loc[s] <= t.
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (query_start_loc[mid] <= t) lo = mid; else hi = mid - 1;
  }
  const int s = lo;
  const int q_end = query_start_loc[s + 1];
  const int ctx = seq_lens[s] - (q_end - 1 - t);
  const int kvh = h / (num_heads / num_kv_heads);
  const int kv_stride = num_kv_heads * HD;
  const uint32_t* table = block_tables + (size_t)s * max_blocks_per_seq;

  float qv[PER_LANE], acc[PER_LANE];
  const bf16* qrow = q + (size_t)t * q_stride + h * HD + lane * PER_LANE;
#pragma unroll
  for (int j = 0; j < PER_LANE; j++) {
    qv[j] = to_f32(qrow[j]) * scale;
    acc[j] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int key = warp; key < ctx; key += ATTN_WARPS) {
    const size_t slot = (size_t)table[key / block_size] * block_size + key % block_size;
    const bf16* krow = k_cache + slot * kv_stride + kvh * HD + lane * PER_LANE;
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) dot += qv[j] * to_f32(krow[j]);
    dot = warp_sum(dot);
    const float m_new = fmaxf(m, dot);
    const float correction = __expf(m - m_new);
    const float p = __expf(dot - m_new);
    l = l * correction + p;
    const bf16* vrow = v_cache + slot * kv_stride + kvh * HD + lane * PER_LANE;
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) acc[j] = acc[j] * correction + p * to_f32(vrow[j]);
    m = m_new;
  }
  // Merge the warps' partial softmaxes.
  __shared__ float sm_m[ATTN_WARPS], sm_l[ATTN_WARPS];
  __shared__ float sm_acc[ATTN_WARPS][HD];
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < PER_LANE; j++) sm_acc[warp][lane * PER_LANE + j] = acc[j];
  __syncthreads();
  float gm = -INFINITY;
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; w++) gm = fmaxf(gm, sm_m[w]);
  float gl = 0.f;
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; w++) gl += sm_m[w] == -INFINITY ? 0.f : sm_l[w] * __expf(sm_m[w] - gm);
  bf16* orow = out + (size_t)t * num_heads * HD + h * HD;
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++)
      if (sm_m[w] != -INFINITY) v += sm_acc[w][d] * __expf(sm_m[w] - gm);
    orow[d] = to_bf16(gl > 0.f ? v / gl : 0.f);
  }
}

#define DEFINE_ATTENTION(HD)                                                                                   \
  extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) paged_attention_hd##HD##_bf16(                 \
      const bf16* q, int q_stride, const bf16* k_cache, const bf16* v_cache, const uint32_t* block_tables,     \
      int max_blocks_per_seq, const int* seq_lens, const int* query_start_loc, int num_seqs, bf16* out,        \
      int num_heads, int num_kv_heads, int block_size, float scale) {                                          \
    paged_attention<HD>(q, q_stride, k_cache, v_cache, block_tables, max_blocks_per_seq, seq_lens,            \
                        query_start_loc, num_seqs, out, num_heads, num_kv_heads, block_size, scale);           \
  }

DEFINE_ATTENTION(64)
DEFINE_ATTENTION(128)
DEFINE_ATTENTION(256)
