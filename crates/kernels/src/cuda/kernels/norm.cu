// Fused residual add + RMSNorm, after HF's LlamaRMSNorm (statistics in f32, the normalized value rounded to
// bf16 before the weight multiplies it).
//
// One block per output row r. The source row is rows[r] when `rows` is given (the final norm runs on the
// logits rows only), else r. With `delta`, the residual row becomes residual + delta (rounded to bf16) and is
// written back when `write_residual` is set; the norm then runs on that sum.
#include "common.cuh"

extern "C" __global__ void add_rms_norm_bf16(bf16* __restrict__ residual, const bf16* __restrict__ delta,
                                             const bf16* __restrict__ weight, bf16* __restrict__ out,
                                             const uint32_t* __restrict__ rows, int hidden, float eps,
                                             int write_residual) {
  const int r = blockIdx.x;
  const size_t src = (size_t)(rows ? rows[r] : r) * hidden;
  bf16* x = residual + src;
  float sumsq = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = to_f32(x[i]);
    if (delta) {
      v = round_bf16(v + to_f32(delta[src + i]));
      if (write_residual) x[i] = to_bf16(v);
    }
    sumsq += v * v;
  }
  const float inv = rsqrtf(block_sum(sumsq) / hidden + eps);
  bf16* o = out + (size_t)r * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    // Re-read (cached) rather than keep `hidden / blockDim` values in registers: the row is small.
    float v = to_f32(x[i]);
    if (delta && !write_residual) v = round_bf16(v + to_f32(delta[src + i]));
    o[i] = to_bf16(round_bf16(v * inv) * to_f32(weight[i]));
  }
}
