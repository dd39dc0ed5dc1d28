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

extern "C" __global__ void sample_rows_f32(const float* __restrict__ logits, int vocab,
                                           const float* __restrict__ temperatures,
                                           const unsigned long long* __restrict__ seeds,
                                           uint32_t* __restrict__ out_ids, float* __restrict__ out_logprobs) {
  const int r = blockIdx.x;
  const float* row = logits + (size_t)r * vocab;
  const float temp = temperatures[r];
  const uint64_t seed = seeds[r];
  Best best = {-INFINITY, 0x7fffffff};
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float x = row[i];
    mx = fmaxf(mx, x);
    const float score = temp > 0.f ? x / temp + gumbel(seed, i) : x;
    best = better(best, {score, i});
  }
  // Block argmax and max.
  __shared__ float sm_score[32], sm_max[32];
  __shared__ int sm_id[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    best = better(best, {__shfl_xor_sync(0xffffffffu, best.score, o), __shfl_xor_sync(0xffffffffu, best.id, o)});
  }
  mx = warp_max(mx);
  if (lane == 0) {
    sm_score[warp] = best.score;
    sm_id[warp] = best.id;
    sm_max[warp] = mx;
  }
  __syncthreads();
  best = {sm_score[0], sm_id[0]};
  mx = sm_max[0];
  for (int w = 1; w < (int)(blockDim.x >> 5); w++) {
    best = better(best, {sm_score[w], sm_id[w]});
    mx = fmaxf(mx, sm_max[w]);
  }
  float sum = 0.f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += __expf(row[i] - mx);
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    out_ids[r] = (uint32_t)best.id;
    out_logprobs[r] = row[best.id] - mx - logf(sum);
  }
}
