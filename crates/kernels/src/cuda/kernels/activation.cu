// GLU activations: out[t, i] = act(gate[t, i]) * up[t, i], where row t of `gate_up` is [gate (inter) | up
// (inter)] (the fused gate+up projection's output). act: SiLU (SwiGLU, `silu_mul_*`) or the tanh approximation
// of GELU (GeGLU, Gemma's `gelu_pytorch_tanh`, `gelu_tanh_mul_*`). As HF does it: act(gate) rounded to T, then
// times up. Grid (x: chunks of a row, y: tokens, strided); 8-value packs (16-byte loads and stores) when
// inter % 8 == 0 (every real model's size), so the kernels run at memory bandwidth.
// Also the logit soft-cap (Gemma 2's final logits, f32): x -> cap * tanh(x / cap).
#include "common.cuh"

struct Silu {
  __device__ __forceinline__ static float apply(float x) { return x / (1.f + __expf(-x)); }
};

// PyTorch's gelu(approximate="tanh"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
struct GeluTanh {
  __device__ __forceinline__ static float apply(float x) {
    const float beta = 0.7978845608028654f, kappa = 0.044715f;
    return 0.5f * x * (1.f + tanhf(beta * (x + kappa * x * x * x)));
  }
};

template <typename Act, typename T>
__device__ __forceinline__ T glu(T g, T u) {
  const float a = round_to<T>(Act::apply(to_f32(g)));
  return from_f32<T>(a * to_f32(u));
}

template <typename T>
__device__ __forceinline__ T swiglu(T g, T u) {
  return glu<Silu, T>(g, u);
}

template <typename Act, typename T>
__device__ void glu_mul(const T* __restrict__ gate_up, T* __restrict__ out, int tokens, int inter) {
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
      for (int j = 0; j < 8; j++) r.v[j] = glu<Act, T>(g.v[j], u.v[j]);
      reinterpret_cast<Pack8<T>*>(o)[v] = r;
    }
    for (int i = vectors * 8 + start; i < inter; i += stride) o[i] = glu<Act, T>(gate[i], up[i]);
  }
}

#define GLU_KERNELS(T)                                                                              \
  extern "C" __global__ void silu_mul_##T(const T* gate_up, T* out, int tokens, int inter) {        \
    glu_mul<Silu, T>(gate_up, out, tokens, inter);                                                  \
  }                                                                                                 \
  extern "C" __global__ void gelu_tanh_mul_##T(const T* gate_up, T* out, int tokens, int inter) {   \
    glu_mul<GeluTanh, T>(gate_up, out, tokens, inter);                                              \
  }
GLU_KERNELS(bf16)
GLU_KERNELS(f16)
GLU_KERNELS(f32)

// In place on `n` f32 logits (grid-strided): HF's order, x / cap, tanh, * cap.
extern "C" __global__ void softcap_f32(float* __restrict__ x, int n, float cap) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    x[i] = tanhf(x[i] / cap) * cap;
}
