// Fused residual add + RMSNorm, after HF's LlamaRMSNorm (statistics in f32, the normalized value rounded to
// the activation type before the weight multiplies it). Entry points add_rms_norm_{bf16,f16,f32}.
//
// One block per output row r. The source row is rows[r] when `rows` is given (the final norm runs on the
// logits rows only), else r. With `delta`, the residual row becomes residual + delta (rounded to the activation
// type) and is written back when `write_residual` is set; the norm then runs on that sum. Rows are read in
// 8-value packs (16-byte loads) and kept in registers between the two passes (hidden <= NORM_THREADS * 8 *
// NORM_CHUNKS), so each element is loaded once: at one token per step this kernel is latency-bound, not bandwidth-bound.
#include "common.cuh"

#define NORM_THREADS 256
#define NORM_CHUNKS 4  // 8-value packs per thread: hidden up to 8192

// F32W: Gemma's RMSNorm (f32 weights, the normalized value times the weight in f32, rounded once).
template <typename T, bool F32W, typename W>
__device__ void add_rms_norm(T* __restrict__ residual, const T* __restrict__ delta, const W* __restrict__ weight,
                             T* __restrict__ out, const uint32_t* __restrict__ rows, int hidden, float eps,
                             int write_residual) {
  const int r = blockIdx.x;
  const size_t src = (size_t)(rows ? rows[r] : r) * hidden;
  const int chunks = hidden / 8;
  float v[NORM_CHUNKS][8];
  // The weights are loaded with the row, before the reduction, so their latency hides behind it (at one token
  // per step the kernel is a chain of latencies, not a stream of bytes).
  Pack8<W> w[NORM_CHUNKS];
  float sumsq = 0.f;
#pragma unroll
  for (int c = 0; c < NORM_CHUNKS; c++) {
    const int chunk = threadIdx.x + c * NORM_THREADS;
    if (chunk < chunks) {
      w[c] = reinterpret_cast<const Pack8<W>*>(weight)[chunk];
      const Pack8<T> x = reinterpret_cast<const Pack8<T>*>(residual + src)[chunk];
      if (delta) {
        const Pack8<T> d = reinterpret_cast<const Pack8<T>*>(delta + src)[chunk];
        Pack8<T> sum;
#pragma unroll
        for (int j = 0; j < 8; j++) {
          sum.v[j] = from_f32<T>(to_f32(x.v[j]) + to_f32(d.v[j]));
          v[c][j] = to_f32(sum.v[j]);
        }
        if (write_residual) reinterpret_cast<Pack8<T>*>(residual + src)[chunk] = sum;
      } else {
#pragma unroll
        for (int j = 0; j < 8; j++) v[c][j] = to_f32(x.v[j]);
      }
#pragma unroll
      for (int j = 0; j < 8; j++) sumsq += v[c][j] * v[c][j];
    }
  }
  const float inv = rsqrtf(block_sum(sumsq) / hidden + eps);
#pragma unroll
  for (int c = 0; c < NORM_CHUNKS; c++) {
    const int chunk = threadIdx.x + c * NORM_THREADS;
    if (chunk < chunks) {
      Pack8<T> o;
#pragma unroll
      for (int j = 0; j < 8; j++)
        o.v[j] = F32W ? from_f32<T>(v[c][j] * inv * to_f32(w[c].v[j]))
                      : from_f32<T>(round_to<T>(v[c][j] * inv) * to_f32(w[c].v[j]));
      reinterpret_cast<Pack8<T>*>(out + (size_t)r * hidden)[chunk] = o;
    }
  }
}

#define ADD_RMS_NORM(T)                                                                                         \
  extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                                   \
      add_rms_norm_##T(T* residual, const T* delta, const T* weight, T* out, const uint32_t* rows, int hidden, \
                       float eps, int write_residual) {                                                        \
    add_rms_norm<T, false, T>(residual, delta, weight, out, rows, hidden, eps, write_residual);                \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                                   \
      add_rms_norm_f32w_##T(T* residual, const T* delta, const float* weight, T* out, const uint32_t* rows,    \
                            int hidden, float eps, int write_residual) {                                       \
    add_rms_norm<T, true, float>(residual, delta, weight, out, rows, hidden, eps, write_residual);            \
  }
ADD_RMS_NORM(bf16)
ADD_RMS_NORM(f16)
ADD_RMS_NORM(f32)
