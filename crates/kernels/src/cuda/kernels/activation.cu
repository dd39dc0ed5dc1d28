// SwiGLU: out[t, i] = silu(gate[t, i]) * up[t, i], where row t of `gate_up` is [gate (inter) | up (inter)]
// (the fused gate+up projection's output). Grid (x: chunks of a row, y: tokens, strided); 8-value packs
// (16-byte loads and stores) when inter % 8 == 0 (every Llama-family size), so the kernel runs at memory
// bandwidth.
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
      const Pack8<T> g = reinterpret_cast<const Pack8<T>*>(gate)[v];
      const Pack8<T> u = reinterpret_cast<const Pack8<T>*>(up)[v];
      Pack8<T> r;
#pragma unroll
      for (int j = 0; j < 8; j++) r.v[j] = swiglu(g.v[j], u.v[j]);
      reinterpret_cast<Pack8<T>*>(o)[v] = r;
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
extern "C" __global__ void silu_mul_f32(const f32* gate_up, f32* out, int tokens, int inter) {
  silu_mul<f32>(gate_up, out, tokens, inter);
}
