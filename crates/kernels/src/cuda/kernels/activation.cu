// SwiGLU: out[t, i] = silu(gate[t, i]) * up[t, i], where row t of `gate_up` is [gate (inter) | up (inter)]
// (the fused gate+up projection's output).
#include "common.cuh"

extern "C" __global__ void silu_mul_bf16(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int tokens,
                                         int inter) {
  const size_t n = (size_t)tokens * inter;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
    const size_t t = idx / inter, i = idx % inter;
    const float g = to_f32(gate_up[t * 2 * inter + i]);
    const float u = to_f32(gate_up[t * 2 * inter + inter + i]);
    const float silu = round_bf16(g / (1.f + __expf(-g)));
    out[idx] = to_bf16(silu * u);
  }
}
