// Paged attention over a flattened varlen batch: prefill chunks and decodes in one launch.
//
// Work item = (query tile, kv head): a tile is up to Q_TILE consecutive query tokens of ONE sequence (listed by
// the host in tile_seq / tile_q0), and the block serves every query head of the kv head's GQA group for those
// tokens — ROWS = tokens x group query rows. Each K/V tile of KT keys is read from the paged cache once into
// shared memory and used by all ROWS rows, so a GQA group (and, in prefill, a run of tokens) shares every K/V
// byte it reads. Earlier blocks may come from the prefix cache or earlier chunks: nothing assumes the keys were
// computed in this step.
//
// Query token t of sequence s attends causally to the first ctx(t) = seq_lens[s] - (q_end(s) - 1 - t) tokens
// (with a sliding window w > 0, to the last w of them only; keys before the tile's first row's window are never
// read). `softcap` > 0 caps scores to c * tanh(s / c) (Gemma 2).
// Rows are dealt to warps round-robin (a decode's few rows run on all warps at once).
// Scores: lane j of a warp scores key j of the tile for one row at a time (q rows sit in shared memory as f32);
// online softmax per row with warp reductions; then lane l accumulates output dims l, l + 32, ... with each
// key's probability broadcast by shuffle. f32 throughout, bf16, f16 or f32 in and out (f32 runs here only: the
// tensor-core kernel takes 16-bit types).
#include "common.cuh"

#define ATTN_WARPS 4

template <typename T, int HD, int KT, int ROWS>
__device__ void paged_attention(const T* __restrict__ q, int q_stride, const T* __restrict__ k_cache,
                                const T* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                                int max_blocks_per_seq, const int* __restrict__ seq_lens,
                                const int* __restrict__ query_start_loc, const int* __restrict__ tile_seq,
                                const int* __restrict__ tile_q0, int q_tile, T* __restrict__ out, int num_heads,
                                int num_kv_heads, int block_size, float scale, int window, float softcap,
                                int splits, float* __restrict__ part_acc, float* __restrict__ part_ml) {
  constexpr int DPL = HD / 32;                 // output dims per lane
  constexpr int RPW = ROWS / ATTN_WARPS;       // rows per warp
  // K row stride in shared memory: two values of padding (an odd word stride for 16-bit types, no bank
  // conflicts; f32 rows stay 8-byte aligned for to_f32x2).
  constexpr int KPAD = HD + 2;
  __shared__ float sq[ROWS][HD];
  __shared__ alignas(16) T sk[KT][KPAD];
  __shared__ alignas(sizeof(Pack8<T>)) T sv[KT][HD];

  const int tile = blockIdx.x, kvh = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = num_heads / num_kv_heads;
  const int s = tile_seq[tile];
  const int q_begin = query_start_loc[s], q_end = query_start_loc[s + 1];
  const int t0 = q_begin + tile_q0[tile];
  const int tokens = min(q_tile, q_end - t0);
  const int rows = tokens * group;  // row r = token t0 + r / group, head kvh * group + r % group
  const int seq_len = seq_lens[s];
  const int kv_stride = num_kv_heads * HD;
  const uint32_t* table = block_tables + (size_t)s * max_blocks_per_seq;

  // Stage the q rows (scaled) in shared memory.
  for (int i = threadIdx.x; i < ROWS * HD; i += blockDim.x) {
    const int r = i / HD, d = i % HD;
    float v = 0.f;
    if (r < rows) {
      const int t = t0 + r / group, h = kvh * group + r % group;
      v = to_f32(q[(size_t)t * q_stride + h * HD + d]) * scale;
    }
    sq[r][d] = v;
  }

  float m[RPW], l[RPW], acc[RPW][DPL];
  int ctx[RPW], lo[RPW];
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int r = i * ATTN_WARPS + warp;
    m[i] = -INFINITY;
    l[i] = 0.f;
    ctx[i] = r < rows ? seq_len - (q_end - 1 - (t0 + r / group)) : 0;
    lo[i] = window > 0 ? max(0, ctx[i] - window) : 0;
#pragma unroll
    for (int j = 0; j < DPL; j++) acc[i][j] = 0.f;
  }
  // Keys this tile needs: up to the last token's context; split z of `splits` takes one KT-aligned range.
  const int ctx_all = seq_len - (q_end - 1 - (t0 + tokens - 1));
  // The tile's first token has the earliest window start.
  const int k_first = window > 0 ? max(0, seq_len - (q_end - 1 - t0) - window) : 0;
  const int k_lo = k_first / KT * KT;
  const int chunk = ((ctx_all - k_lo + splits - 1) / splits + KT - 1) / KT * KT;
  const int k_begin = k_lo + blockIdx.z * chunk;
  const int ctx_max = min(ctx_all, k_begin + chunk);

  for (int k0 = k_begin; k0 < ctx_max; k0 += KT) {
    __syncthreads();  // previous tile fully consumed (and sq written, on the first pass)
    // Load K and V rows k0 .. k0 + KT of this kv head, one 8-value pack per thread-iteration.
    constexpr int CHUNKS = HD / 8;
    constexpr int WORDS = sizeof(Pack8<T>) / 4;
    for (int i = threadIdx.x; i < KT * CHUNKS; i += blockDim.x) {
      const int kk = i / CHUNKS, c = i % CHUNKS;
      const int key = k0 + kk;
      Pack8<T> kp, vp;
      if (key < ctx_max && key >= k_first) {
        const size_t slot = (size_t)table[key / block_size] * block_size + key % block_size;
        const size_t off = slot * kv_stride + kvh * HD + c * 8;
        kp = *reinterpret_cast<const Pack8<T>*>(k_cache + off);
        vp = *reinterpret_cast<const Pack8<T>*>(v_cache + off);
      } else {
#pragma unroll
        for (int j = 0; j < 8; j++) kp.v[j] = vp.v[j] = from_f32<T>(0.f);
      }
      // sk rows are 4-byte aligned only (the padded stride): store as 32-bit words.
      uint32_t* kd = reinterpret_cast<uint32_t*>(&sk[kk][c * 8]);
      const uint32_t* ks = reinterpret_cast<const uint32_t*>(&kp);
#pragma unroll
      for (int w = 0; w < WORDS; w++) kd[w] = ks[w];
      *reinterpret_cast<Pack8<T>*>(&sv[kk][c * 8]) = vp;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < RPW; i++) {
      const int r = i * ATTN_WARPS + warp;
      if (r >= rows) continue;  // warp-uniform
      // Score of key k0 + lane (lanes >= KT idle).
      float score = -INFINITY;
      const int key = k0 + lane;
      if (lane < KT && key < min(ctx[i], ctx_max) && key >= lo[i]) {
        float dot = 0.f;
#pragma unroll 8
        for (int d2 = 0; d2 < HD / 2; d2++) {
          const float2 kf = to_f32x2(&sk[lane][2 * d2]);
          dot += sq[r][2 * d2] * kf.x + sq[r][2 * d2 + 1] * kf.y;
        }
        score = softcap > 0.f ? softcap * tanhf(dot / softcap) : dot;
      }
      const float tile_max = warp_max(score);
      if (tile_max == -INFINITY) continue;  // every key of this tile is past this row's context
      const float m_new = fmaxf(m[i], tile_max);
      const float p = __expf(score - m_new);  // 0 for masked keys
      const float correction = __expf(m[i] - m_new);
      l[i] = l[i] * correction + warp_sum(p);
#pragma unroll
      for (int j = 0; j < DPL; j++) acc[i][j] *= correction;
#pragma unroll 4
      for (int kk = 0; kk < KT; kk++) {
        const float pk = __shfl_sync(0xffffffffu, p, kk);
#pragma unroll
        for (int j = 0; j < DPL; j++) acc[i][j] += pk * to_f32(sv[kk][lane + 32 * j]);
      }
      m[i] = m_new;
    }
  }
  if (splits > 1) {
    // Partial result of this split: unnormalized acc, running max and sum (merged by attention_combine).
    const size_t part = ((size_t)tile * num_kv_heads + kvh) * splits + blockIdx.z;
#pragma unroll
    for (int i = 0; i < RPW; i++) {
      const int r = i * ATTN_WARPS + warp;
      if (r >= rows) continue;
#pragma unroll
      for (int j = 0; j < DPL; j++) part_acc[(part * ROWS + r) * HD + lane + 32 * j] = acc[i][j];
      if (lane == 0) {
        part_ml[(part * ROWS + r) * 2] = m[i];
        part_ml[(part * ROWS + r) * 2 + 1] = l[i];
      }
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int r = i * ATTN_WARPS + warp;
    if (r >= rows) continue;
    const int t = t0 + r / group, h = kvh * group + r % group;
    T* orow = out + (size_t)t * num_heads * HD + h * HD;
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
#pragma unroll
    for (int j = 0; j < DPL; j++) orow[lane + 32 * j] = from_f32<T>(acc[i][j] * inv);
  }
}

// Merges the `splits` partial softmaxes of each (tile, kv head) into the output (flash-decoding's second pass).
template <typename T, int HD, int ROWS>
__device__ void attention_combine(const int* __restrict__ query_start_loc, const int* __restrict__ tile_seq,
                                  const int* __restrict__ tile_q0, int q_tile, T* __restrict__ out,
                                  int num_heads, int num_kv_heads, int splits, const float* __restrict__ part_acc,
                                  const float* __restrict__ part_ml) {
  const int tile = blockIdx.x, kvh = blockIdx.y;
  const int group = num_heads / num_kv_heads;
  const int s = tile_seq[tile];
  const int q_end = query_start_loc[s + 1];
  const int t0 = query_start_loc[s] + tile_q0[tile];
  const int rows = min(q_tile, q_end - t0) * group;
  const size_t part0 = ((size_t)tile * num_kv_heads + kvh) * splits;
  merge_kv_splits<T, HD, ROWS, false, false>(rows, splits, t0, group, kvh, num_heads, part0 * ROWS, ROWS, part_acc,
                                             part_ml, out);
}

#define DEFINE_ATTENTION(T, HD, KT, ROWS)                                                                      \
  extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) paged_attention_hd##HD##_##T(                  \
      const T* q, int q_stride, const T* k_cache, const T* v_cache, const uint32_t* block_tables,              \
      int max_blocks_per_seq, const int* seq_lens, const int* query_start_loc, const int* tile_seq,            \
      const int* tile_q0, int q_tile, T* out, int num_heads, int num_kv_heads, int block_size, float scale,     \
      int window, float softcap, int splits, float* part_acc, float* part_ml) {                                                           \
    paged_attention<T, HD, KT, ROWS>(q, q_stride, k_cache, v_cache, block_tables, max_blocks_per_seq,         \
                                     seq_lens, query_start_loc, tile_seq, tile_q0, q_tile, out, num_heads,     \
                                     num_kv_heads, block_size, scale, window, softcap, splits, part_acc, part_ml);              \
  }                                                                                                            \
  extern "C" __global__ void attention_combine_hd##HD##_##T(                                                   \
      const int* query_start_loc, const int* tile_seq, const int* tile_q0, int q_tile, T* out, int num_heads, \
      int num_kv_heads, int splits, const float* part_acc, const float* part_ml) {                             \
    attention_combine<T, HD, ROWS>(query_start_loc, tile_seq, tile_q0, q_tile, out, num_heads, num_kv_heads,  \
                                   splits, part_acc, part_ml);                                                 \
  }

// ROWS query rows per block (tokens x GQA group); the host picks q_tile = max(1, ROWS / group).
DEFINE_ATTENTION(bf16, 64, 32, 32)
DEFINE_ATTENTION(bf16, 128, 32, 32)
DEFINE_ATTENTION(bf16, 256, 16, 16)
DEFINE_ATTENTION(f16, 64, 32, 32)
DEFINE_ATTENTION(f16, 128, 32, 32)
DEFINE_ATTENTION(f16, 256, 16, 16)
// f32 halves the keys per shared tile to stay within 48 KiB of static shared memory.
DEFINE_ATTENTION(f32, 64, 16, 32)
DEFINE_ATTENTION(f32, 128, 16, 32)
DEFINE_ATTENTION(f32, 256, 8, 16)
