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
