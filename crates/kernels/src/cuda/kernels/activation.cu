// SwiGLU: out[t, i] = silu(gate[t, i]) * up[t, i], where row t of `gate_up` is [gate (inter) | up (inter)]
// (the fused gate+up projection's output). Grid (x: chunks of a row, y: tokens, strided); 16-byte loads
// and stores when inter % 8 == 0 (every Llama-family size), so the kernel runs at memory bandwidth.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T swiglu(T g, T u) {
  const float x = to_f32(g);
  const float silu = round_to<T>(x / (1.f + __expf(-x)));
  return from_f32<T>(silu * to_f32(u));
}

template <typename T>
__device__ void silu_mul(const T* __restrict__ gate_up, T* __restrict__ out, int tokens, int inter) {
  const int vectors = (inter & 7) == 0 ? inter / 8 : 0;
  for (int t = blockIdx.y; t < tokens; t += gridDim.y) {
    const T* gate = gate_up + (size_t)t * 2 * inter;
    const T* up = gate + inter;
    T* o = out + (size_t)t * inter;
    const int start = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;
    for (int v = start; v < vectors; v += stride) {
      const uint4 g4 = reinterpret_cast<const uint4*>(gate)[v];
      const uint4 u4 = reinterpret_cast<const uint4*>(up)[v];
      const T* g = reinterpret_cast<const T*>(&g4);
      const T* u = reinterpret_cast<const T*>(&u4);
      uint4 o4;
      T* r = reinterpret_cast<T*>(&o4);
#pragma unroll
      for (int j = 0; j < 8; j++) r[j] = swiglu(g[j], u[j]);
      reinterpret_cast<uint4*>(o)[v] = o4;
    }
    for (int i = vectors * 8 + start; i < inter; i += stride) o[i] = swiglu(gate[i], up[i]);
  }
}

extern "C" __global__ void silu_mul_bf16(const bf16* gate_up, bf16* out, int tokens, int inter) {
  silu_mul<bf16>(gate_up, out, tokens, inter);
}
extern "C" __global__ void silu_mul_f16(const f16* gate_up, f16* out, int tokens, int inter) {
  silu_mul<f16>(gate_up, out, tokens, inter);
}
