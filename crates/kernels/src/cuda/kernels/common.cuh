// Shared helpers for pagedllm's CUDA kernels: activation type <-> f32, 8-element packs, warp and block
// reductions. Activations are bf16, f16 or f32 in memory (each kernel is a template over the type T,
// instantiated as `<name>_bf16`, `<name>_f16` and, except the tensor-core kernels, `<name>_f32`); every kernel
// computes in f32 and rounds once when it stores.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;
typedef __half f16;
typedef float f32;

__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(f16 x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ bf16 to_bf16(float x) { return __float2bfloat16(x); }
__device__ __forceinline__ float round_bf16(float x) { return to_f32(to_bf16(x)); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ f16 from_f32<f16>(float x) {
  return __float2half(x);
}
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
// x rounded to T's precision, back in f32.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_f32(from_f32<T>(x));
}
// Two consecutive T values (4-byte aligned) as f32.
__device__ __forceinline__ float2 to_f32x2(const bf16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ float2 to_f32x2(const f16* p) { return __half22float2(*reinterpret_cast<const __half2*>(p)); }
__device__ __forceinline__ float2 to_f32x2(const float* p) { return *reinterpret_cast<const float2*>(p); }

// Eight consecutive T values, aligned to their size (16 bytes for 16-bit types, 32 for f32), so one
// assignment of a pack compiles to one or two 16-byte loads or stores. Rows hold multiples of 8 values.
template <typename T>
struct alignas(8 * sizeof(T)) Pack8 {
  T v[8];
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024). Every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// FlashDecoding's second pass for one (tile, kv head): merges `splits` (at most MAX_KV_SPLITS, the host's clamp in
// backend/step.rs) partial softmaxes of `rows` (at most MAX_ROWS) query rows into normalized outputs. Query row r
// is token t0 + r / group, head kvh * group + r % group; its output row (token * num_heads + head) also indexes the
// partials when PART_BY_TOKEN (the tensor-core kernel's layout), else they sit at part_first + r; split z adds
// z * split_stride rows. The merge is a chain of memory latencies over a few KB of partials, so each thread issues
// all its loads before using any: the (max, sum) of every split per row, the weights exp(m_z - M) / L into shared
// memory, then the partials of MERGE_BATCH output elements for all splits at once. The first version, one dependent
// load after another, took 17 us per layer at one decode on an H200 (ncu), more than the attention itself.
#define MAX_KV_SPLITS 16
#define MERGE_BATCH 4
template <typename T, int HD, int MAX_ROWS, bool EXP2, bool PART_BY_TOKEN>
__device__ __forceinline__ void merge_kv_splits(int rows, int splits, int t0, int group, int kvh, int num_heads,
                                                size_t part_first, size_t split_stride,
                                                const float* __restrict__ part_acc,
                                                const float* __restrict__ part_ml, T* __restrict__ out) {
  __shared__ float w_s[MAX_KV_SPLITS][MAX_ROWS];
  __shared__ size_t out_row_s[MAX_ROWS], part_row_s[MAX_ROWS];
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    const size_t out_row = (size_t)(t0 + r / group) * num_heads + kvh * group + r % group;
    const size_t part_row = PART_BY_TOKEN ? out_row : part_first + r;
    out_row_s[r] = out_row;
    part_row_s[r] = part_row;
    float m[MAX_KV_SPLITS], l[MAX_KV_SPLITS];
#pragma unroll
    for (int z = 0; z < MAX_KV_SPLITS; z++) {
      const float2 ml = z < splits ? *reinterpret_cast<const float2*>(part_ml + (part_row + z * split_stride) * 2)
                                   : make_float2(-INFINITY, 0.f);
      m[z] = ml.x;
      l[z] = ml.y;
    }
    float M = -INFINITY;
#pragma unroll
    for (int z = 0; z < MAX_KV_SPLITS; z++) M = fmaxf(M, m[z]);
    float L = 0.f;
#pragma unroll
    for (int z = 0; z < MAX_KV_SPLITS; z++) {
      // An empty split (max -inf) weighs 0, also when every split is empty (M = -inf: the output is 0).
      m[z] = m[z] == -INFINITY ? 0.f : (EXP2 ? exp2f(m[z] - M) : __expf(m[z] - M));
      L += l[z] * m[z];
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
#pragma unroll
    for (int z = 0; z < MAX_KV_SPLITS; z++) w_s[z][r] = m[z] * inv;
  }
  __syncthreads();
  const int n = rows * HD;
  for (int i0 = threadIdx.x; i0 < n; i0 += MERGE_BATCH * blockDim.x) {
    float a[MERGE_BATCH][MAX_KV_SPLITS];
#pragma unroll
    for (int k = 0; k < MERGE_BATCH; k++) {
      const int i = i0 + k * blockDim.x;
      const float* p = part_acc + (i < n ? part_row_s[i / HD] * HD + i % HD : 0);
#pragma unroll
      for (int z = 0; z < MAX_KV_SPLITS; z++) a[k][z] = i < n && z < splits ? p[z * split_stride * HD] : 0.f;
    }
#pragma unroll
    for (int k = 0; k < MERGE_BATCH; k++) {
      const int i = i0 + k * blockDim.x;
      if (i < n) {
        const int r = i / HD;
        float v = 0.f;
#pragma unroll
        for (int z = 0; z < MAX_KV_SPLITS; z++) v += w_s[z][r] != 0.f ? a[k][z] * w_s[z][r] : 0.f;
        out[out_row_s[r] * HD + i % HD] = from_f32<T>(v);
      }
    }
  }
}
