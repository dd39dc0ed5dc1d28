// SwiGLU: out[t, i] = silu(gate[t, i]) * up[t, i], where row t of `gate_up` is [gate (inter) | up (inter)]
// (the fused gate+up projection's output). Grid (x: chunks of a row, y: tokens, strided); 16-byte loads
// and stores when inter % 8 == 0 (every Llama-family size), so the kernel runs at memory bandwidth.
#include "common.cuh"

__device__ __forceinline__ bf16 swiglu(bf16 g, bf16 u) {
  const float x = to_f32(g);
  const float silu = round_bf16(x / (1.f + __expf(-x)));
  return to_bf16(silu * to_f32(u));
}

extern "C" __global__ void silu_mul_bf16(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int tokens,
                                         int inter) {
  const int vectors = (inter & 7) == 0 ? inter / 8 : 0;
  for (int t = blockIdx.y; t < tokens; t += gridDim.y) {
    const bf16* gate = gate_up + (size_t)t * 2 * inter;
    const bf16* up = gate + inter;
    bf16* o = out + (size_t)t * inter;
    const int start = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;
    for (int v = start; v < vectors; v += stride) {
      const uint4 g4 = reinterpret_cast<const uint4*>(gate)[v];
      const uint4 u4 = reinterpret_cast<const uint4*>(up)[v];
      const bf16* g = reinterpret_cast<const bf16*>(&g4);
      const bf16* u = reinterpret_cast<const bf16*>(&u4);
      uint4 o4;
      bf16* r = reinterpret_cast<bf16*>(&o4);
#pragma unroll
      for (int j = 0; j < 8; j++) r[j] = swiglu(g[j], u[j]);
      reinterpret_cast<uint4*>(o)[v] = o4;
    }
    for (int i = vectors * 8 + start; i < inter; i += stride) o[i] = swiglu(gate[i], up[i]);
  }
}
