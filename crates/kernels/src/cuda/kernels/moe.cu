// The sparse MoE MLP (Backend::moe) without a host loop over experts and without reading anything back, so a
// step that runs it can be captured into a CUDA graph (the fused-MoE design of vLLM's `fused_moe` and SGLang:
// tokens grouped by expert on the device, one grouped GEMM launch per projection):
//
//   moe_route     per token: softmax of the router's f32 logits, top-k (ties to the lower expert), optional
//                 renormalization -> topk_ids / topk_w [tokens * k] ("entries", token-major)
//   moe_group     one block: entries counted per expert, their sorted positions (grouped by expert), and the
//                 work list of TILE_M-row tiles of each expert's rows (tile_expert / tile_row0 / num_tiles)
//   moe_gemm      the grouped GEMM: grid (the most tiles a step can have, column blocks); a tile past
//                 num_tiles exits. Rows are gathered from x (gate|up: row = x[entry / k]) or read in sorted
//                 order (down), weights are expert e's [n, k] slice of the stacked [experts, n, k] tensor
//   moe_combine   per token: out = sum_j w_j * y[pos(token, j)] (+ sigmoid(x . gate) * shared), f32 sums
//                 rounded once
//
// Between the two GEMMs the GLU kernels (activation.cu) run over the tokens * k sorted rows. The GEMM is a
// CUDA-core tiled kernel (64 x 64 tile, 4 x 4 outputs per thread, f32 accumulation), the same for bf16, f16 and
// f32; a tensor-core version is the next step for prefill-heavy MoE work.
#include "common.cuh"

#define MOE_TILE_M 64
#define MOE_TILE_N 64
#define MOE_TILE_K 32

// One warp per token. `experts` <= 1024, `top_k` <= 32.
extern "C" __global__ void moe_route(const float* __restrict__ logits, int experts, int top_k, int renormalize,
                                     unsigned* __restrict__ topk_ids, float* __restrict__ topk_w) {
  const int t = blockIdx.x, lane = threadIdx.x;
  const float* l = logits + (size_t)t * experts;
  float m = -INFINITY;
  for (int e = lane; e < experts; e += 32) m = fmaxf(m, l[e]);
  m = warp_max(m);
  float s = 0.f;
  for (int e = lane; e < experts; e += 32) s += __expf(l[e] - m);
  s = warp_sum(s);
  // Top-k by k rounds of a warp argmax over the not yet chosen experts (k is small: 2-8 in real models).
  // Bit i: this lane's i-th expert (lane + 32 i) is taken.
  unsigned taken = 0;
  float total = 0.f;
  float my_w = 0.f;
  unsigned my_id = 0;
  for (int j = 0; j < top_k; j++) {
    float best = -INFINITY;
    int best_e = 0x7fffffff;
    for (int e = lane, i = 0; e < experts; e += 32, i++) {
      if (taken >> i & 1u) continue;
      const float v = l[e];
      if (v > best || (v == best && e < best_e)) best = v, best_e = e;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oe = __shfl_xor_sync(0xffffffffu, best_e, o);
      if (ov > best || (ov == best && oe < best_e)) best = ov, best_e = oe;
    }
    if ((best_e & 31) == lane) taken |= 1u << (best_e >> 5);
    const float p = __expf(best - m) / s;
    total += p;
    if (lane == j) my_w = p, my_id = (unsigned)best_e;
  }
  if (lane < top_k) {
    topk_ids[(size_t)t * top_k + lane] = my_id;
    topk_w[(size_t)t * top_k + lane] = renormalize && total > 0.f ? my_w / total : my_w;
  }
}

// One block of 1024 threads. counts/cursor live in shared memory (experts <= 1024).
extern "C" __global__ void moe_group(const unsigned* __restrict__ topk_ids, int entries, int experts,
                                     unsigned* __restrict__ sorted_entry, unsigned* __restrict__ entry_pos,
                                     unsigned* __restrict__ expert_offsets, unsigned* __restrict__ tile_expert,
                                     unsigned* __restrict__ tile_row0, unsigned* __restrict__ num_tiles) {
  __shared__ unsigned counts[1024];
  __shared__ unsigned cursor[1024];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < entries; i += blockDim.x) atomicAdd(&counts[topk_ids[i]], 1u);
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned acc = 0, tiles = 0;
    for (int e = 0; e < experts; e++) {
      expert_offsets[e] = acc;
      cursor[e] = acc;
      for (unsigned r = 0; r < counts[e]; r += MOE_TILE_M) {
        tile_expert[tiles] = e;
        tile_row0[tiles] = acc + r;
        tiles++;
      }
      acc += counts[e];
    }
    expert_offsets[experts] = acc;
    *num_tiles = tiles;
  }
  __syncthreads();
  // Positions within an expert's rows depend on the atomics' order; every row is computed the same wherever
  // it sits, so results do not.
  for (int i = threadIdx.x; i < entries; i += blockDim.x) {
    const unsigned pos = atomicAdd(&cursor[topk_ids[i]], 1u);
    sorted_entry[pos] = i;
    entry_pos[i] = pos;
  }
}

// y[row, n] = sum_k a_row[k] * w_e[n, k] for the rows of tile blockIdx.x, columns blockIdx.y * 64 ...
// gather != 0: a_row = a[(sorted_entry[row] / top_k) * kdim] (the token's x); else a_row = a[row * kdim].
template <typename T>
__device__ void moe_gemm(const T* __restrict__ a, int gather, int top_k, const unsigned* __restrict__ sorted_entry,
                         const T* __restrict__ w, T* __restrict__ y, int n, int kdim,
                         const unsigned* __restrict__ expert_offsets, const unsigned* __restrict__ tile_expert,
                         const unsigned* __restrict__ tile_row0, const unsigned* __restrict__ num_tiles) {
  if (blockIdx.x >= *num_tiles) return;
  const int e = tile_expert[blockIdx.x];
  const int row0 = tile_row0[blockIdx.x];
  const int rows = min(MOE_TILE_M, (int)expert_offsets[e + 1] - row0);
  const int n0 = blockIdx.y * MOE_TILE_N;
  const T* we = w + (size_t)e * n * kdim;
  __shared__ float as[MOE_TILE_K][MOE_TILE_M + 4];
  __shared__ float ws[MOE_TILE_K][MOE_TILE_N + 4];
  __shared__ const T* a_rows[MOE_TILE_M];
  const int tid = threadIdx.x;  // 256 threads: 16 x 16, each 4 rows x 4 columns
  if (tid < MOE_TILE_M) {
    const int r = row0 + tid;
    a_rows[tid] = tid < rows ? a + (size_t)(gather ? sorted_entry[r] / top_k : r) * kdim : nullptr;
  }
  __syncthreads();
  const int tr = tid / 16, tc = tid % 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < kdim; k0 += MOE_TILE_K) {
    // 64 x 32 values of a and of w per stage, 8 each per thread.
    for (int i = tid; i < MOE_TILE_M * MOE_TILE_K; i += 256) {
      const int r = i / MOE_TILE_K, k = i % MOE_TILE_K;
      const T* ar = a_rows[r];
      as[k][r] = ar && k0 + k < kdim ? to_f32(ar[k0 + k]) : 0.f;
      const int c = n0 + r;
      ws[k][r] = c < n && k0 + k < kdim ? to_f32(we[(size_t)c * kdim + k0 + k]) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < MOE_TILE_K; k++) {
      float av[4], wv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) av[i] = as[k][tr * 4 + i], wv[i] = ws[k][tc * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] += av[i] * wv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int r = tr * 4 + i;
    if (r >= rows) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int c = n0 + tc * 4 + j;
      if (c < n) y[(size_t)(row0 + r) * n + c] = from_f32<T>(acc[i][j]);
    }
  }
}

// out[t] = sum_j topk_w[t, j] * y[entry_pos[t, j]] (+ sigmoid(x[t] . shared_gate) * shared[t], Qwen2-MoE).
template <typename T>
__device__ void moe_combine(const T* __restrict__ y, const float* __restrict__ topk_w,
                            const unsigned* __restrict__ entry_pos, const T* __restrict__ x,
                            const T* __restrict__ shared, const T* __restrict__ shared_gate, T* __restrict__ out,
                            int hidden, int top_k) {
  const int t = blockIdx.x;
  float sig = 0.f;
  if (shared) {
    float d = 0.f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x)
      d += to_f32(x[(size_t)t * hidden + c]) * to_f32(shared_gate[c]);
    d = block_sum(d);
    // HF: the gate's logit in the model's type, then sigmoid.
    sig = 1.f / (1.f + __expf(-round_to<T>(d)));
  }
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float s = 0.f;
    for (int j = 0; j < top_k; j++) {
      const size_t entry = (size_t)t * top_k + j;
      s += topk_w[entry] * to_f32(y[(size_t)entry_pos[entry] * hidden + c]);
    }
    if (shared) s += round_to<T>(sig) * to_f32(shared[(size_t)t * hidden + c]);
    out[(size_t)t * hidden + c] = from_f32<T>(s);
  }
}

#define MOE_KERNELS(T)                                                                                          \
  extern "C" __global__ void moe_gemm_##T(const T* a, int gather, int top_k, const unsigned* sorted_entry,      \
                                          const T* w, T* y, int n, int kdim, const unsigned* expert_offsets,    \
                                          const unsigned* tile_expert, const unsigned* tile_row0,               \
                                          const unsigned* num_tiles) {                                          \
    moe_gemm<T>(a, gather, top_k, sorted_entry, w, y, n, kdim, expert_offsets, tile_expert, tile_row0,         \
                num_tiles);                                                                                     \
  }                                                                                                             \
  extern "C" __global__ void moe_combine_##T(const T* y, const float* topk_w, const unsigned* entry_pos,         \
                                             const T* x, const T* shared, const T* shared_gate, T* out,         \
                                             int hidden, int top_k) {                                           \
    moe_combine<T>(y, topk_w, entry_pos, x, shared, shared_gate, out, hidden, top_k);                          \
  }
MOE_KERNELS(bf16)
MOE_KERNELS(f16)
MOE_KERNELS(f32)
