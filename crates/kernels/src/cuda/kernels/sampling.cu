// Sampling on the GPU for rows that need no sorting: greedy (temperature 0) and plain temperature sampling by
// the Gumbel-max trick (argmax of logit / T + Gumbel noise is an exact sample from softmax(logit / T)). The
// noise is a counter-based hash of (seed, vocab index), so a seeded request gives the same tokens on every run
// and batch composition. Rows that need top-k / top-p / min-p / penalties / log-prob lists go to the CPU sampler.
//
// One block per row. Out: the token id and its log-prob under the raw (unscaled) distribution, what vLLM
// reports as the sampled token's log-prob.
#include "common.cuh"

__device__ __forceinline__ uint64_t mix64(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27; x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ float gumbel(uint64_t seed, uint32_t i) {
  // 24 random bits -> u in (0, 1).
  const float u = ((float)(mix64(seed ^ (0x9e3779b97f4a7c15ull * (i + 1))) >> 40) + 0.5f) * (1.0f / 16777216.0f);
  return -__logf(-__logf(u));
}

struct Best {
  float score;
  int id;
};

__device__ __forceinline__ Best better(Best a, Best b) {
  // Ties go to the lower id (as the CPU sampler's argmax does).
  return (b.score > a.score || (b.score == a.score && b.id < a.id)) ? b : a;
}

// Running (max, sum of exp(x - max)) of a set of logits, merged across threads.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

// One pass over the row: argmax of the (noised) scores and the row's log-sum-exp together; float4 loads
// (vocab % 4 == 0 is checked by the host) so one block pulls the row at a useful fraction of bandwidth.
extern "C" __global__ void __launch_bounds__(1024)
    sample_rows_f32(const float* __restrict__ logits, int vocab, const float* __restrict__ temperatures,
                    const unsigned long long* __restrict__ seeds, uint32_t* __restrict__ out_ids,
                    float* __restrict__ out_logprobs) {
  const int r = blockIdx.x;
  const float4* row4 = reinterpret_cast<const float4*>(logits + (size_t)r * vocab);
  const float temp = temperatures[r];
  const uint64_t seed = seeds[r];
  Best best = {-INFINITY, 0x7fffffff};
  float m = -INFINITY, s = 0.f;
  for (int c = threadIdx.x; c < vocab / 4; c += blockDim.x) {
    const float4 x4 = __ldg(row4 + c);
    const float xs[4] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int i = 4 * c + j;
      const float x = xs[j];
      lse_merge(m, s, x, 1.f);
      const float score = temp > 0.f ? x / temp + gumbel(seed, i) : x;
      best = better(best, {score, i});
    }
  }
  __shared__ float sm_score[32], sm_m[32], sm_s[32];
  __shared__ int sm_id[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    best = better(best, {__shfl_xor_sync(0xffffffffu, best.score, o), __shfl_xor_sync(0xffffffffu, best.id, o)});
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m, s, m2, s2);
  }
  if (lane == 0) {
    sm_score[warp] = best.score;
    sm_id[warp] = best.id;
    sm_m[warp] = m;
    sm_s[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) {
      best = better(best, {sm_score[w], sm_id[w]});
      lse_merge(m, s, sm_m[w], sm_s[w]);
    }
    out_ids[r] = (uint32_t)best.id;
    out_logprobs[r] = logits[(size_t)r * vocab + best.id] - m - logf(s);
  }
}
