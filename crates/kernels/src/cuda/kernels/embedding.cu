// Embedding gather: out[t, :] = table[ids[t], :]. One block per token, 16-byte copies. A byte copy, so one kernel
// serves every activation type: `hidden` counts 16-bit words (the hidden size, doubled for f32 tables), a
// multiple of 8.
#include "common.cuh"

extern "C" __global__ void embedding_gather(const uint16_t* __restrict__ table, const uint32_t* __restrict__ ids,
                                            uint16_t* __restrict__ out, int hidden) {
  const int t = blockIdx.x;
  const uint4* src = reinterpret_cast<const uint4*>(table + (size_t)ids[t] * hidden);
  uint4* dst = reinterpret_cast<uint4*>(out + (size_t)t * hidden);
  for (int i = threadIdx.x; i < hidden / 8; i += blockDim.x) dst[i] = src[i];
}

// Gemma: the gather times `scale` (sqrt(hidden), already rounded to T by the host as HF rounds its normalizer
// to the model dtype): out = round(table[ids[t]] * scale). A typed kernel, so the plain gather above (every
// other model) stays a byte copy.
template <typename T>
__device__ void embedding_gather_scaled(const T* __restrict__ table, const uint32_t* __restrict__ ids,
                                        T* __restrict__ out, int hidden, float scale) {
  const int t = blockIdx.x;
  const T* src = table + (size_t)ids[t] * hidden;
  T* dst = out + (size_t)t * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = from_f32<T>(to_f32(src[i]) * scale);
}

#define EMBEDDING_GATHER_SCALED(T)                                                                          \
  extern "C" __global__ void embedding_gather_scaled_##T(const T* table, const uint32_t* ids, T* out,       \
                                                         int hidden, float scale) {                         \
    embedding_gather_scaled<T>(table, ids, out, hidden, scale);                                             \
  }
EMBEDDING_GATHER_SCALED(bf16)
EMBEDDING_GATHER_SCALED(f16)
EMBEDDING_GATHER_SCALED(f32)
