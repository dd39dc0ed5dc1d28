// Sampling on the GPU, one block of 1024 threads per logits row, in vLLM V1's order (the CPU sampler's too):
//   0. a structured-output row's grammar bitmask (llguidance's layout, bit t % 32 of word t / 32): every token
//      it disallows gets -inf in the row itself, fused into pass 1, so the "raw" distribution of everything
//      below is the masked one, as in the CPU sampler (and in vLLM, which masks the logits before sampling);
//   1. raw log-sum-exp, and the top-N raw log-probs when asked (ties by lower id);
//   2. the row's sparse edits, merged per token by the host: logit bias, the min_tokens mask, repetition /
//      frequency / presence penalties (each edit keeps the raw value it replaced, for the log-prob and rank);
//   3. greedy: argmax (ties to the lower id); otherwise scale by 1 / T, then min_p, top_k (ties at the k-th
//      value survive) and top_p (the minimal (prob desc, id asc) prefix reaching top_p of the kept mass), and
//      draw by Gumbel-max over the survivors: argmax of s / T + Gumbel noise is an exact sample of their
//      renormalized softmax. The noise is a counter-based hash of (seed, token id), so a seeded request draws
//      the same tokens whatever its batch;
//   4. the sampled token's raw log-prob and (when log-probs are asked) its raw rank, count of logits >= it.
// Only ids, log-probs and ranks leave the GPU. The k-th value (top_k, top-N) and the nucleus edge (top_p) come
// from a 4-pass radix select over the float bits (8 bits per pass, a 256-bin histogram in shared memory) instead
// of a sort; nucleus masses are 2^40 fixed point, so sums are exact and independent of the atomics' order.
// A plain row (no edits, no truncation) takes one pass: log-sum-exp and the choice together.
#include "common.cuh"

#define SAMPLE_THREADS 1024  // the block reductions below assume exactly 32 warps
#define MAX_TOP_LOGPROBS 20
#define FIXED_ONE 1099511627776.0  // 2^40
#define NO_TOKEN 0xffffffffu       // nothing could be sampled (NaN logits, or every logit -inf after processing)

// Mirrors `DeviceSampleParams` in cuda/sample_params.rs (56 bytes).
struct SampleParams {
  float temperature;  // 0 = greedy
  float top_p;        // 1 = off
  float min_p;        // 0 = off
  float repetition;   // 1 = off
  float frequency;
  float presence;
  int top_k;    // 0 = off
  int num_top;  // length of the top log-prob list; -1 = no log-probs asked (no rank either)
  unsigned int edit_begin, edit_count;
  int mask_row;           // row of `masks` with the allowed tokens; -1 = unconstrained
  unsigned int reserved;  // explicit padding (the host copies the struct byte for byte)
  unsigned long long seed;
};

// Mirrors `TokenEdit` in cuda/sample_params.rs (20 bytes).
struct TokenEdit {
  unsigned int token;
  float bias;
  unsigned int count;  // occurrences in the output (frequency / presence penalties)
  unsigned int flags;  // 1: masked (min_tokens), 2: seen in the prompt or output (repetition penalty)
  float raw;           // written here: the logit before the edit
};

typedef unsigned long long u64;

__device__ __forceinline__ uint64_t mix64(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27; x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ float gumbel(uint64_t seed, uint32_t i) {
  // 23 random bits -> u in [2^-24, 1 - 2^-24]: (x + 0.5) is exact below 2^23, so u never rounds to 1 (with 24
  // bits, x = 2^24 - 1 gave u == 1 and +inf noise: a uniformly random token ~V / 2^24 of the time). Accurate
  // logf: near u = 1, -log(u) ~ 6e-8 is below __logf's absolute error.
  const float u = ((float)(mix64(seed ^ (0x9e3779b97f4a7c15ull * (i + 1))) >> 41) + 0.5f) * (1.0f / 8388608.0f);
  return -logf(-logf(u));
}

// Float -> unsigned key with the same order (larger float, larger key), and back.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

struct Best {
  float score;
  int id;
};

__device__ __forceinline__ Best better(Best a, Best b) {
  // Ties go to the lower id (as the CPU sampler's argmax does). NaN loses to everything (and between NaNs the
  // lower id wins), so the order is total and every lane of a reduction ends with the same answer.
  const bool an = a.score != a.score, bn = b.score != b.score;
  if (an || bn) return (an && bn) ? (b.id < a.id ? b : a) : (an ? b : a);
  return (b.score > a.score || (b.score == a.score && b.id < a.id)) ? b : a;
}

// Running (max, sum of exp(x - max)) of a set of logits, merged across threads.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

// Block reductions over exactly 32 warps; every thread gets the result.
__device__ Best block_best(Best b) {
  __shared__ float ps[32];
  __shared__ int pi[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    b = better(b, {__shfl_xor_sync(0xffffffffu, b.score, o), __shfl_xor_sync(0xffffffffu, b.id, o)});
  __syncthreads();
  if (lane == 0) {
    ps[warp] = b.score;
    pi[warp] = b.id;
  }
  __syncthreads();
  b = {ps[lane], pi[lane]};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    b = better(b, {__shfl_xor_sync(0xffffffffu, b.score, o), __shfl_xor_sync(0xffffffffu, b.id, o)});
  return b;
}

__device__ float block_lse(float m, float s) {
  __shared__ float pm[32], psum[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  __syncthreads();
  if (lane == 0) {
    pm[warp] = m;
    psum[warp] = s;
  }
  __syncthreads();
  m = pm[lane];
  s = psum[lane];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  return m + __logf(s);
}

__device__ float block_max(float v) {
  __shared__ float part[32];
  v = warp_max(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  return warp_max(part[threadIdx.x & 31]);
}

__device__ u64 block_sum_u64(u64 v) {
  __shared__ u64 part[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  v = part[threadIdx.x & 31];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The key K where, walking the row's values from the largest, the cumulative weight first reaches `target`:
// weight(> K) < target <= weight(>= K). `above` gets weight(> K). Weights are integers (counts, or 2^40 fixed
// point masses); a value of weight 0 is invisible. Needs target <= the row's total weight.
template <class Value, class Weight>
__device__ uint32_t radix_select(int n, Value value, Weight weight, u64 target, u64* above, u64* hist) {
  __shared__ uint32_t s_bin;
  __shared__ u64 s_acc;
  uint32_t prefix = 0, mask = 0;
  u64 acc = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const float v = value(i);
      const uint32_t k = order_key(v);
      if ((k & mask) != prefix) continue;
      const u64 w = weight(v);
      if (w) atomicAdd(&hist[(k >> shift) & 255u], w);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int b = 255;
      for (; b > 0; b--) {
        if (acc + hist[b] >= target) break;
        acc += hist[b];
      }
      s_bin = (uint32_t)b;
      s_acc = acc;
    }
    __syncthreads();
    prefix |= s_bin << shift;
    mask |= 255u << shift;
    acc = s_acc;
    __syncthreads();  // s_bin / s_acc and hist are rewritten next pass
  }
  *above = acc;
  return prefix;
}

// Calls take(i) for the `need` lowest ids i < n where pred(i) holds (block-wide ordered scan, used only for
// ties at a select boundary).
template <class Pred, class Take>
__device__ void take_lowest(int n, u64 need, Pred pred, Take take) {
  __shared__ int counts[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int base = 0; base < n && need > 0; base += blockDim.x) {
    const int i = base + threadIdx.x;
    const bool p = i < n && pred(i);
    const unsigned ballot = __ballot_sync(0xffffffffu, p);
    __syncthreads();
    if (lane == 0) counts[warp] = __popc(ballot);
    __syncthreads();
    u64 before = __popc(ballot & ((1u << lane) - 1u)), total = 0;
    for (int w = 0; w < 32; w++) {
      if (w < warp) before += counts[w];
      total += counts[w];
    }
    if (p && before < need) take(i);
    need = total >= need ? 0 : need - total;
  }
}

// The `num` largest raw logits as log-probs (value desc, id asc) into ids / logprobs.
__device__ void top_logprobs_of_row(const float* row, int vocab, int num, float lse, uint32_t* ids, float* logprobs,
                                    u64* hist) {
  __shared__ int s_count;
  __shared__ int s_ids[MAX_TOP_LOGPROBS];
  __shared__ float s_vals[MAX_TOP_LOGPROBS];
  u64 above;
  const uint32_t kth = radix_select(
      vocab, [&](int i) { return row[i]; }, [](float) -> u64 { return 1; }, (u64)num, &above, hist);
  if (threadIdx.x == 0) s_count = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    if (order_key(v) > kth) {
      const int at = atomicAdd(&s_count, 1);
      s_ids[at] = i;
      s_vals[at] = v;
    }
  }
  __syncthreads();
  take_lowest(
      vocab, (u64)num - above, [&](int i) { return order_key(row[i]) == kth; },
      [&](int i) {
        const int at = atomicAdd(&s_count, 1);
        s_ids[at] = i;
        s_vals[at] = row[i];
      });
  __syncthreads();
  if (threadIdx.x == 0) {
    const int n = min(s_count, num);
    for (int a = 1; a < n; a++) {  // insertion sort of <= 20 entries
      const int id = s_ids[a];
      const float v = s_vals[a];
      int b = a - 1;
      while (b >= 0 && (s_vals[b] < v || (s_vals[b] == v && s_ids[b] > id))) {
        s_ids[b + 1] = s_ids[b];
        s_vals[b + 1] = s_vals[b];
        b--;
      }
      s_ids[b + 1] = id;
      s_vals[b + 1] = v;
    }
    for (int a = 0; a < n; a++) {
      ids[a] = (uint32_t)s_ids[a];
      logprobs[a] = s_vals[a] - lse;
    }
  }
  __syncthreads();
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(float* __restrict__ logits, int vocab, const SampleParams* __restrict__ params,
                TokenEdit* __restrict__ edits, const uint32_t* __restrict__ masks, int mask_words,
                uint32_t* __restrict__ out_ids, float* __restrict__ out_logprobs,
                int* __restrict__ out_ranks, uint32_t* __restrict__ top_ids, float* __restrict__ top_logprobs) {
  __shared__ u64 hist[256];
  __shared__ float s_raw;
  __shared__ int s_tie_cut;
  const int r = blockIdx.x;
  float* row = logits + (size_t)r * vocab;
  const SampleParams P = params[r];
  const bool greedy = P.temperature <= 0.f;
  const bool top_k_on = P.top_k > 0 && P.top_k < vocab;
  const bool truncates = !greedy && (top_k_on || P.top_p < 1.f || P.min_p > 0.f);
  const bool plain = P.edit_count == 0 && !truncates;
  TokenEdit* row_edits = edits + P.edit_begin;

  // 0-1. The grammar mask, then the raw log-sum-exp (float4 loads: vocab % 4 == 0 is checked by the host); a
  // plain row also chooses here. A masked float4 is written back: the passes below read the row again.
  const uint32_t* mask = P.mask_row >= 0 ? masks + (size_t)P.mask_row * mask_words : nullptr;
  float m = -INFINITY, s = 0.f;
  Best best = {-INFINITY, 0x7fffffff};
  float4* row4 = reinterpret_cast<float4*>(row);
  for (int c = threadIdx.x; c < vocab / 4; c += blockDim.x) {
    float4 x4 = row4[c];
    if (mask) {
      // The 4 tokens of a float4 share one mask word (4c is a multiple of 4, a word holds 32 tokens).
      const uint32_t bits = mask[c >> 3] >> ((4 * c) & 31);
      if (!(bits & 1u)) x4.x = -INFINITY;
      if (!(bits & 2u)) x4.y = -INFINITY;
      if (!(bits & 4u)) x4.z = -INFINITY;
      if (!(bits & 8u)) x4.w = -INFINITY;
      row4[c] = x4;
    }
    const float xs[4] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
      lse_merge(m, s, xs[j], 1.f);
      if (plain) {
        const int i = 4 * c + j;
        const float score = greedy ? xs[j] : xs[j] / P.temperature + gumbel(P.seed, i);
        best = better(best, {score, i});
      }
    }
  }
  const float lse = block_lse(m, s);  // its barriers also publish the masked row to the whole block
  if (P.num_top > 0)
    top_logprobs_of_row(row, vocab, min(min(P.num_top, MAX_TOP_LOGPROBS), vocab), lse,
                        top_ids + (size_t)r * MAX_TOP_LOGPROBS, top_logprobs + (size_t)r * MAX_TOP_LOGPROBS, hist);

  if (plain) {
    best = block_best(best);
  } else {
    // 2. Edits (one per token; the host merged duplicates), in the CPU sampler's order of operations.
    for (unsigned j = threadIdx.x; j < P.edit_count; j += blockDim.x) {
      TokenEdit e = row_edits[j];
      float l = row[e.token];
      row_edits[j].raw = l;
      l += e.bias;
      if (e.flags & 1u) l = -INFINITY;
      if ((e.flags & 2u) && P.repetition != 1.f) l = l > 0.f ? l / P.repetition : l * P.repetition;
      if (e.count > 0) {
        l -= P.frequency * (float)e.count;
        l -= P.presence;
      }
      row[e.token] = l;
    }
    __syncthreads();
    // 3. The choice.
    Best b = {-INFINITY, 0x7fffffff};
    if (greedy) {
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) b = better(b, {row[i], i});
    } else {
      const float T = P.temperature;
      auto scaled = [&](int i) { return row[i] / T; };
      float mx = -INFINITY;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, scaled(i));
      mx = block_max(mx);
      float min_logit = -INFINITY;  // top_k: the k-th largest scaled logit; ties survive
      if (top_k_on) {
        u64 above;
        min_logit = key_value(radix_select(vocab, scaled, [](float) -> u64 { return 1; }, (u64)P.top_k, &above, hist));
      }
      const float log_min_p = P.min_p > 0.f ? logf(P.min_p) : -INFINITY;
      auto keeps = [&](float v) { return v > -INFINITY && v >= min_logit && v - mx >= log_min_p; };
      // top_p: keep values above the nucleus key, and its ties up to the lowest `tie_cut` id.
      const bool nucleus = P.top_p < 1.f;
      uint32_t edge = 0;
      if (threadIdx.x == 0) s_tie_cut = 0x7fffffff;
      if (nucleus) {
        auto mass = [&](float v) -> u64 { return keeps(v) ? (u64)(expf(v - mx) * FIXED_ONE) : 0ull; };
        u64 total = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) total += mass(scaled(i));
        total = block_sum_u64(total);
        const double limit = (double)P.top_p * (double)total;
        u64 target = (u64)ceil(limit);
        target = target < 1 ? 1 : (target > total ? total : target);
        u64 above;
        edge = radix_select(vocab, scaled, mass, target, &above, hist);
        // Tokens at the edge value each weigh w; the CPU keeps them (lowest id first) while the mass before
        // each is below the limit: ceil((limit - above) / w) of them.
        const u64 w = mass(key_value(edge));
        const double room = limit - (double)above;
        const u64 keep_ties = w > 0 ? (u64)ceil(room / (double)w) : 0;
        u64 ties = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
          const float v = scaled(i);
          ties += (keeps(v) && order_key(v) == edge) ? 1 : 0;
        }
        ties = block_sum_u64(ties);
        if (ties > keep_ties) {
          __syncthreads();
          if (threadIdx.x == 0) s_tie_cut = -1;
          __syncthreads();
          take_lowest(
              vocab, keep_ties,
              [&](int i) {
                const float v = scaled(i);
                return keeps(v) && order_key(v) == edge;
              },
              [&](int i) { atomicMax(&s_tie_cut, i); });
        }
      }
      __syncthreads();
      const int tie_cut = s_tie_cut;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = scaled(i);
        if (!keeps(v)) continue;
        if (nucleus) {
          const uint32_t k = order_key(v);
          if (k < edge || (k == edge && i > tie_cut)) continue;
        }
        b = better(b, {v + gumbel(P.seed, i), i});
      }
    }
    best = block_best(b);
  }

  // 4. The sampled token's raw log-prob and rank (count of raw logits >= its raw logit).
  const int token = best.id;
  // NaN anywhere in the raw row makes the log-sum-exp NaN: refused like the CPU sampler does (uniform per block).
  const bool none = best.score == -INFINITY || best.score != best.score || token >= vocab || lse != lse;
  __syncthreads();
  if (threadIdx.x == 0) s_raw = none ? 0.f : row[token];
  __syncthreads();
  if (!plain && !none)
    for (unsigned j = threadIdx.x; j < P.edit_count; j += blockDim.x)
      if (row_edits[j].token == (unsigned)token) s_raw = row_edits[j].raw;
  __syncthreads();
  const float raw = s_raw;
  if (threadIdx.x == 0) {
    out_ids[r] = none ? NO_TOKEN : (uint32_t)token;
    out_logprobs[r] = raw - lse;
  }
  if (P.num_top >= 0 && !none) {
    u64 count = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) count += row[i] >= raw ? 1 : 0;
    if (!plain)
      for (unsigned j = threadIdx.x; j < P.edit_count; j += blockDim.x) {
        const TokenEdit e = row_edits[j];
        count += e.raw >= raw ? 1 : 0;
        count -= row[e.token] >= raw ? 1 : 0;
      }
    count = block_sum_u64(count);
    if (threadIdx.x == 0) out_ranks[r] = (int)count;
  }
}
