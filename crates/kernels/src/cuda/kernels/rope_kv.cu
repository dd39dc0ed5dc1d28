// Rotary embedding (HF rotate-half convention) on q and k of the fused qkv projection, in place, fused with
// writing k and v into the paged KV cache through the slot mapping (slot < 0: a padding token, not written).
//
// qkv row t: [q (num_heads * hd) | k (num_kv_heads * hd) | v (num_kv_heads * hd)]. `bias` (Qwen2) is added
// first when given, then (Qwen3: `q_norm`/`k_norm` given) each q and k head is RMS-normed over its hd values
// as HF does it: normalized in f32, rounded to T, times the weight, rounded to T. Cache layout per layer: [num_blocks * block_size, num_kv_heads, hd], so a slot's row is
// contiguous. Angles are position * inv_freq[i] (llama3 / linear / LongRoPE scaling folded into inv_freq on the
// host); cos and sin are multiplied by `rope_scale` first (LongRoPE's attention factor, HF's `attention_scaling`;
// 1 otherwise). Partial rotary (Phi-4-mini, vLLM's `rotary_dim < head_size`): only the first 2 * rot_half dims of a
// head rotate, pairing (j, j + rot_half); the rest pass through. Grid (T, num_heads + num_kv_heads), hd / 2
// threads: thread i owns dims i and i + hd / 2 (one rotation pair when rot_half == hd / 2; with partial rotary the
// head goes through shared memory, since a thread's outputs then need other threads' inputs); kv-head blocks also
// copy their v head (every launch is one short round, the decode case is latency-bound).
#include "common.cuh"

// check_config caps head_dim at 512.
#define ROPE_MAX_HEAD_DIM 512

template <typename T>
__device__ void rope_qkv_cache(T* __restrict__ qkv, const T* __restrict__ bias, const T* __restrict__ q_norm,
                               const T* __restrict__ k_norm, float norm_eps, const int* __restrict__ positions,
                               const float* __restrict__ inv_freq, int rot_half, float rope_scale,
                               const long long* __restrict__ slot_mapping, T* __restrict__ k_cache,
                               T* __restrict__ v_cache, int num_heads, int num_kv_heads, int hd) {
  const int t = blockIdx.x, head = blockIdx.y, i = threadIdx.x;
  const int half = hd / 2;
  const int q_dim = num_heads * hd, kv_dim = num_kv_heads * hd;
  T* row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
  const long long slot = slot_mapping[t];
  const int base = head * hd;  // q heads then k heads are contiguous in the row
  float x1 = to_f32(row[base + i]), x2 = to_f32(row[base + i + half]);
  if (bias) {
    x1 = round_to<T>(x1 + to_f32(bias[base + i]));
    x2 = round_to<T>(x2 + to_f32(bias[base + i + half]));
  }
  // Uniform per block (both weights are given or neither), so block_sum's barriers are safe.
  const T* norm_w = head < num_heads ? q_norm : k_norm;
  if (norm_w) {
    const float inv = rsqrtf(block_sum(x1 * x1 + x2 * x2) / (float)hd + norm_eps);
    x1 = round_to<T>(round_to<T>(x1 * inv) * to_f32(norm_w[i]));
    x2 = round_to<T>(round_to<T>(x2 * inv) * to_f32(norm_w[i + half]));
  }
  const float pos = (float)positions[t];
  T o1, o2;
  if (rot_half == half) {
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    c *= rope_scale;
    s *= rope_scale;
    o1 = from_f32<T>(x1 * c - x2 * s);
    o2 = from_f32<T>(x2 * c + x1 * s);
  } else {
    // Uniform per launch, so the barrier is safe.
    __shared__ float xs[ROPE_MAX_HEAD_DIM];
    xs[i] = x1;
    xs[i + half] = x2;
    __syncthreads();
    float out[2];
    const int dims[2] = {i, i + half};
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int e = dims[k];
      if (e >= 2 * rot_half) {
        out[k] = xs[e];
        continue;
      }
      const int j = e < rot_half ? e : e - rot_half;
      float s, c;
      sincosf(pos * inv_freq[j], &s, &c);
      c *= rope_scale;
      s *= rope_scale;
      out[k] = e < rot_half ? xs[e] * c - xs[e + rot_half] * s : xs[e] * c + xs[e - rot_half] * s;
    }
    o1 = from_f32<T>(out[0]);
    o2 = from_f32<T>(out[1]);
  }
  row[base + i] = o1;
  row[base + i + half] = o2;
  if (head >= num_heads) {
    const int kvh = head - num_heads;
    const int vat = q_dim + kv_dim + kvh * hd;
    T v1 = row[vat + i], v2 = row[vat + i + half];
    if (bias) {
      v1 = from_f32<T>(to_f32(v1) + to_f32(bias[vat + i]));
      v2 = from_f32<T>(to_f32(v2) + to_f32(bias[vat + i + half]));
      row[vat + i] = v1;
      row[vat + i + half] = v2;
    }
    if (slot >= 0) {
      T* kd = k_cache + (size_t)slot * kv_dim + kvh * hd;
      T* vd = v_cache + (size_t)slot * kv_dim + kvh * hd;
      kd[i] = o1;
      kd[i + half] = o2;
      vd[i] = v1;
      vd[i + half] = v2;
    }
  }
}

#define ROPE_QKV_CACHE(T)                                                                                     \
  extern "C" __global__ void rope_qkv_cache_##T(T* qkv, const T* bias, const T* q_norm, const T* k_norm,     \
                                                float norm_eps, const int* positions, const float* inv_freq,  \
                                                int rot_half, float rope_scale, const long long* slot_mapping, \
                                                T* k_cache, T* v_cache, int num_heads, int num_kv_heads,      \
                                                int hd) {                                                     \
    rope_qkv_cache<T>(qkv, bias, q_norm, k_norm, norm_eps, positions, inv_freq, rot_half, rope_scale,         \
                      slot_mapping, k_cache, v_cache, num_heads, num_kv_heads, hd);                           \
  }
ROPE_QKV_CACHE(bf16)
ROPE_QKV_CACHE(f16)
ROPE_QKV_CACHE(f32)

// Copies whole KV blocks (copy-on-write of a shared partial block): pairs[2j] -> pairs[2j + 1].
// One block per pair; `block_elems` = a block's bytes / 2 (block_size * num_kv_heads * hd values of 2 or 4 bytes),
// so one kernel serves every activation type.
extern "C" __global__ void copy_kv_blocks(uint16_t* __restrict__ k_cache, uint16_t* __restrict__ v_cache,
                                               const uint32_t* __restrict__ pairs, int block_elems) {
  const size_t from = (size_t)pairs[2 * blockIdx.x] * block_elems, to = (size_t)pairs[2 * blockIdx.x + 1] * block_elems;
  for (int i = threadIdx.x; i < block_elems; i += blockDim.x) {
    k_cache[to + i] = k_cache[from + i];
    v_cache[to + i] = v_cache[from + i];
  }
}
