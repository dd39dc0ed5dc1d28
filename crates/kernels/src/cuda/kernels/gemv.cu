// Skinny GEMM for decode: y[t, n] = sum_k x[t, k] * W[n, k] for t < T <= GEMV_MAX_T, bf16 in, f32 accumulate.
//
// At a handful of tokens a projection is a pass over the weight matrix, so the kernel is built to stream W at
// full bandwidth: one warp per output row, 16-byte loads of W coalesced across the warp, GEMV_UNROLL loads in
// flight per lane, x (a few KB, shared by every warp) read through L1. cuBLASLt serves every larger T.
#include "common.cuh"

#define GEMV_MAX_T 4
#define GEMV_UNROLL 8
#define GEMV_WARPS 8

__device__ __forceinline__ void fma8(float& acc, const uint4& w, const uint4& x) {
  const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 a = __bfloat1622float2(w2[i]), b = __bfloat1622float2(x2[i]);
    acc += a.x * b.x + a.y * b.y;
  }
}

template <typename Out>
__device__ void gemv(const bf16* __restrict__ x, const bf16* __restrict__ w, Out* __restrict__ y, int T, int N,
                     int K) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
  if (n >= N) return;
  const uint4* wrow = reinterpret_cast<const uint4*>(w + (size_t)n * K);
  const int chunks = K / 8;  // 16-byte chunks per row
  float acc[GEMV_MAX_T];
#pragma unroll
  for (int t = 0; t < GEMV_MAX_T; t++) acc[t] = 0.f;
  int c = lane;
  for (; c + 32 * (GEMV_UNROLL - 1) < chunks; c += 32 * GEMV_UNROLL) {
    uint4 wv[GEMV_UNROLL];
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) wv[u] = __ldg(wrow + c + 32 * u);
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++) {
      if (t < T) {
        const uint4* xrow = reinterpret_cast<const uint4*>(x + (size_t)t * K);
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) fma8(acc[t], wv[u], xrow[c + 32 * u]);
      }
    }
  }
  for (; c < chunks; c += 32) {
    const uint4 wv = __ldg(wrow + c);
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++)
      if (t < T) fma8(acc[t], wv, reinterpret_cast<const uint4*>(x + (size_t)t * K)[c]);
  }
#pragma unroll
  for (int t = 0; t < GEMV_MAX_T; t++) {
    if (t < T) {
      const float v = warp_sum(acc[t]);
      if (lane == 0) {
        if constexpr (sizeof(Out) == 2) y[(size_t)t * N + n] = to_bf16(v);
        else y[(size_t)t * N + n] = v;
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_bf16(const bf16* x, const bf16* w, bf16* y, int T, int N, int K) {
  gemv<bf16>(x, w, y, T, N, K);
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_f32(const bf16* x, const bf16* w, float* y, int T, int N, int K) {
  gemv<float>(x, w, y, T, N, K);
}
