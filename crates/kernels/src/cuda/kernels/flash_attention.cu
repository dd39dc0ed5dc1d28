// Paged attention on the tensor cores for every step of a varlen batch: prefill chunks and decodes alike
// (FlashAttention-2's scheme with FlashDecoding's KV split; our own code).
//
// Work item = (query tile, kv head, KV split). A tile is up to 64 / group consecutive query tokens of ONE
// sequence (a decode is a tile of one token); its 64 rows are (token, query head of the kv head's GQA group)
// pairs, row r = token r / group, head r % group, so every K/V byte read into shared memory serves the whole
// GQA group and a run of tokens. Each of the 4 warps owns 16 rows and keeps them in registers for the sweep:
//   S = Q K^T   mma.sync m16n8k16 (bf16 in, f32 accumulate), Q fragments loaded once from global memory,
//               K fragments read as 32-bit words from a padded shared tile (conflict-free);
//   online softmax in the accumulator registers (rows g and g + 8 of each quad, reduced over the quad);
//   O += P V    P re-packed from the S accumulators as the A operand (same register layout), V fragments via
//               ldmatrix.trans from a row-major shared tile.
// K/V tiles of 32 keys stream through a 4-stage ring of shared buffers with cp.async, so three tiles' loads are
// in flight while the current one is multiplied (what keeps decode, a pure KV stream, near memory bandwidth).
// Query token t attends to the first ctx(t) = seq_len - (q_end - 1 - t) keys of its sequence, so earlier blocks
// from the prefix cache or from earlier chunks are read like any other; keys past a row's context are masked
// and out-of-range keys are zero-filled so garbage never reaches P V. With a sliding window w > 0 a row sees
// only its last w keys (lo(t) = ctx(t) - w): the sweep starts at the tile's first row's bound, keys before it
// are never read (their blocks may be freed), later rows mask theirs. `softcap` > 0 caps scores to
// c * tanh(s / c) (Gemma 2). Warps whose rows all end before a KV
// tile skip its math. With `splits > 1` each split covers a KV range and writes unnormalized partials, one row
// per (split, token, query head), that flash_attention_combine merges (decode grids too small or too ragged to
// fill the GPU's SMs evenly).
// Head dims 64 and 128 (256 would not fit the O accumulators in registers: the CUDA-core kernel serves it).
#include "common.cuh"

#define FLASH_WARPS 4
#define FLASH_ROWS 64  // query rows per block (16 per warp)
#define FLASH_KEYS 32   // keys per shared K/V tile
#define FLASH_STAGES 4  // tiles in flight; dynamic shared memory = flash_shared_bytes() in decoder/step.rs

// D += A B for one 16x16 (A, row-major) by 16x8 (B, column-major) tile of T = bf16 or f16, f32 accumulate.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bf16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, f16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four transposed 8x8 16-bit matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Two f32 as one 32-bit register of T (the lower index in the low half, as mma fragments hold them).
__device__ __forceinline__ uint32_t pack2(float lo, float hi, bf16) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, f16) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t load_u32(const void* p) { return *reinterpret_cast<const uint32_t*>(p); }

// 16 bytes global -> shared without a register round trip; `valid == false` writes zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <typename T, int HD>
__device__ void flash_attention(const T* __restrict__ q, int q_stride, const T* __restrict__ k_cache,
                                const T* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                                int max_blocks_per_seq, const int* __restrict__ seq_lens,
                                const int* __restrict__ query_start_loc, const int* __restrict__ tile_seq,
                                const int* __restrict__ tile_q0, T* __restrict__ out, int num_heads,
                                int num_kv_heads, int block_size, float scale, int window, float softcap,
                                int splits, int num_tokens, float* __restrict__ part_acc,
                                float* __restrict__ part_ml) {
  constexpr int BN = FLASH_KEYS;
  constexpr int STRIDE = HD + 8;  // shared row stride (bf16): 16-byte rows, word stride = 4 mod 32
  constexpr int TILE = BN * STRIDE;
  // Stage st: K tile at [2 st * TILE], V tile at [(2 st + 1) * TILE] (FLASH_STAGES * 2 * TILE elements in all).
  extern __shared__ __align__(16) unsigned char flash_smem[];
  T* const smem = reinterpret_cast<T*>(flash_smem);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, tig = lane & 3;  // mma fragment coordinates: row group, thread in group
  const int tile = blockIdx.x, kvh = blockIdx.y;
  const int group = num_heads / num_kv_heads;
  const int s = tile_seq[tile];
  const int q_end = query_start_loc[s + 1];
  const int t0 = query_start_loc[s] + tile_q0[tile];
  const int rows = min(FLASH_ROWS / group, q_end - t0) * group;
  const int seq_len = seq_lens[s];
  const int kv_stride = num_kv_heads * HD;
  const uint32_t* table = block_tables + (size_t)s * max_blocks_per_seq;
  auto ctx_of = [&](int r) { return seq_len - (q_end - 1 - (t0 + r / group)); };
  auto lo_of = [&](int r) { return window > 0 ? max(0, ctx_of(r) - window) : 0; };

  const int r0 = warp * 16 + g, r1 = r0 + 8;
  const bool valid0 = r0 < rows, valid1 = r1 < rows;
  const int ctx0 = valid0 ? ctx_of(r0) : 0, ctx1 = valid1 ? ctx_of(r1) : 0;
  const int lo0 = valid0 ? lo_of(r0) : 0, lo1 = valid1 ? lo_of(r1) : 0;
  const bool warp_active = warp * 16 < rows;
  const int warp_ctx = warp_active ? ctx_of(min(warp * 16 + 15, rows - 1)) : 0;  // rows ascend by token
  // This split's keys: a BN-aligned share of the keys from the tile's first row's window start (0 without a
  // window) to the last row's context.
  const int k_first = lo_of(0);
  const int k_lo = k_first / BN * BN;
  const int k_end = ctx_of(rows - 1);
  const int chunk = ((k_end - k_lo + splits - 1) / splits + BN - 1) / BN * BN;
  const int k_begin = k_lo + blockIdx.z * chunk;
  const int k_stop = min(k_end, k_begin + chunk);

  // Q fragments (A operand, row-major 16 x HD): registers for the whole sweep.
  uint32_t qf[HD / 16][4];
  {
    const T* q0 = q + (size_t)(t0 + r0 / group) * q_stride + (kvh * group + r0 % group) * HD;
    const T* q1 = q + (size_t)(t0 + r1 / group) * q_stride + (kvh * group + r1 % group) * HD;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
      const int c = ks * 16 + tig * 2;
      qf[ks][0] = valid0 ? load_u32(q0 + c) : 0u;
      qf[ks][1] = valid1 ? load_u32(q1 + c) : 0u;
      qf[ks][2] = valid0 ? load_u32(q0 + c + 8) : 0u;
      qf[ks][3] = valid1 ? load_u32(q1 + c + 8) : 0u;
    }
  }

  float o[HD / 8][4];
#pragma unroll
  for (int dt = 0; dt < HD / 8; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // running max (log2 domain) and partial sums
  const float scale_log2 = scale * 1.4426950408889634f;

  // Keys k0 .. k0 + BN of this kv head into stage `st` (zeros past the split); the caller commits the group.
  auto load_tile = [&](int st, int k0) {
    constexpr int CHUNKS = HD / 8;
    T* tk = smem + 2 * st * TILE;
    T* tv = tk + TILE;
    for (int i = threadIdx.x; i < BN * CHUNKS; i += FLASH_WARPS * 32) {
      const int kk = i / CHUNKS, c = i % CHUNKS;
      const int key = k0 + kk;
      const bool live = key < k_stop && key >= k_first;
      size_t off = 0;
      if (live) {
        const size_t slot = (size_t)table[key / block_size] * block_size + key % block_size;
        off = slot * kv_stride + kvh * HD + c * 8;
      }
      cp_async16(&tk[kk * STRIDE + c * 8], k_cache + off, live);
      cp_async16(&tv[kk * STRIDE + c * 8], v_cache + off, live);
    }
  };

  // Group j of cp.async loads tile j (groups past the last tile are empty), so waiting until at most
  // FLASH_STAGES - 1 groups are pending means tile `it` has landed.
  const int num_tiles = k_stop > k_begin ? (k_stop - k_begin + BN - 1) / BN : 0;
#pragma unroll
  for (int st = 0; st < FLASH_STAGES - 1; st++) {
    if (st < num_tiles) load_tile(st, k_begin + st * BN);
    cp_async_commit();
  }
  for (int it = 0; it < num_tiles; it++) {
    const int k0 = k_begin + it * BN;
    const int ahead = it + FLASH_STAGES - 1;
    // Its stage was consumed in iteration it - 1 and released by that iteration's closing barrier.
    if (ahead < num_tiles) load_tile(ahead % FLASH_STAGES, k_begin + ahead * BN);
    cp_async_commit();
    cp_async_wait<FLASH_STAGES - 1>();
    __syncthreads();  // tile `it` is in shared memory for every warp
    const T* tk = smem + 2 * (it % FLASH_STAGES) * TILE;
    const T* tv = tk + TILE;
    if (warp_active && warp_ctx > k0) {  // warp-uniform: skip tiles past every row of this warp
      // S = Q K^T for 16 rows x BN keys.
      float sc[BN / 8][4];
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt++) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < HD / 16; ks++) {
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
          const T* kr = &tk[(nt * 8 + g) * STRIDE + ks * 16 + tig * 2];
          mma_16816(sc[nt], qf[ks], load_u32(kr), load_u32(kr + 8), T());
        }
      }
      // Mask past each row's context, scale into the log2 domain, and take the tile's row maxima.
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int key = k0 + nt * 8 + tig * 2 + (e & 1);
          const bool live = key < min(e < 2 ? ctx0 : ctx1, k_stop) && key >= (e < 2 ? lo0 : lo1);
          const float raw = softcap > 0.f ? softcap * tanhf(sc[nt][e] * scale / softcap) * 1.4426950408889634f
                                          : sc[nt][e] * scale_log2;
          sc[nt][e] = live ? raw : -INFINITY;
        }
        mx0 = fmaxf(mx0, fmaxf(sc[nt][0], sc[nt][1]));
        mx1 = fmaxf(mx1, fmaxf(sc[nt][2], sc[nt][3]));
      }
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
      }
      const float new0 = fmaxf(m0, mx0), new1 = fmaxf(m1, mx1);
      // A row with nothing live yet subtracts 0 instead of -inf (no inf - inf).
      const float base0 = new0 == -INFINITY ? 0.f : new0, base1 = new1 == -INFINITY ? 0.f : new1;
      const float alpha0 = exp2f(m0 - base0), alpha1 = exp2f(m1 - base1);
      m0 = new0;
      m1 = new1;
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt++) {
        sc[nt][0] = exp2f(sc[nt][0] - base0);
        sc[nt][1] = exp2f(sc[nt][1] - base0);
        sc[nt][2] = exp2f(sc[nt][2] - base1);
        sc[nt][3] = exp2f(sc[nt][3] - base1);
        sum0 += sc[nt][0] + sc[nt][1];
        sum1 += sc[nt][2] + sc[nt][3];
      }
      l0 = l0 * alpha0 + sum0;  // per-thread partial sums; the quad is summed once at the end
      l1 = l1 * alpha1 + sum1;
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt++) {
        o[dt][0] *= alpha0;
        o[dt][1] *= alpha0;
        o[dt][2] *= alpha1;
        o[dt][3] *= alpha1;
      }
      // O += P V, 16 keys per k-step; the S accumulators of key tiles 2kk, 2kk + 1 are P's A fragment.
#pragma unroll
      for (int kk = 0; kk < BN / 16; kk++) {
        const uint32_t pa[4] = {pack2(sc[2 * kk][0], sc[2 * kk][1], T()), pack2(sc[2 * kk][2], sc[2 * kk][3], T()),
                                pack2(sc[2 * kk + 1][0], sc[2 * kk + 1][1], T()),
                                pack2(sc[2 * kk + 1][2], sc[2 * kk + 1][3], T())};
        // Lanes 0-15 address keys kk*16 + 0..15 at dims dt*8; lanes 16-31 the same keys at dims dt*8 + 8.
        const int vrow = kk * 16 + (lane & 15);
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt += 2) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, &tv[vrow * STRIDE + dt * 8 + (lane >> 4) * 8]);
          mma_16816(o[dt], pa, vb[0], vb[1], T());
          mma_16816(o[dt + 1], pa, vb[2], vb[3], T());
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before a later iteration refills it
  }

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  if (splits > 1) {
    // Unnormalized partials of this split (max in the log2 domain), merged by flash_attention_combine.
    auto part_row = [&](int r) {
      return ((size_t)blockIdx.z * num_tokens + t0 + r / group) * num_heads + kvh * group + r % group;
    };
    if (valid0) {
      float* acc = part_acc + part_row(r0) * HD;
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt++)
        *reinterpret_cast<float2*>(acc + dt * 8 + tig * 2) = make_float2(o[dt][0], o[dt][1]);
      if (tig == 0) *reinterpret_cast<float2*>(part_ml + part_row(r0) * 2) = make_float2(m0, l0);
    }
    if (valid1) {
      float* acc = part_acc + part_row(r1) * HD;
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt++)
        *reinterpret_cast<float2*>(acc + dt * 8 + tig * 2) = make_float2(o[dt][2], o[dt][3]);
      if (tig == 0) *reinterpret_cast<float2*>(part_ml + part_row(r1) * 2) = make_float2(m1, l1);
    }
    return;
  }
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  const int out_stride = num_heads * HD;
  if (valid0) {
    T* orow = out + (size_t)(t0 + r0 / group) * out_stride + (kvh * group + r0 % group) * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++)
      *reinterpret_cast<uint32_t*>(orow + dt * 8 + tig * 2) = pack2(o[dt][0] * inv0, o[dt][1] * inv0, T());
  }
  if (valid1) {
    T* orow = out + (size_t)(t0 + r1 / group) * out_stride + (kvh * group + r1 % group) * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++)
      *reinterpret_cast<uint32_t*>(orow + dt * 8 + tig * 2) = pack2(o[dt][2] * inv1, o[dt][3] * inv1, T());
  }
}

// Merges the `splits` partials of each (tile, kv head) into the output (FlashDecoding's second pass).
template <typename T, int HD>
__device__ void flash_attention_combine(const int* __restrict__ query_start_loc, const int* __restrict__ tile_seq,
                                        const int* __restrict__ tile_q0, T* __restrict__ out, int num_heads,
                                        int num_kv_heads, int splits, int num_tokens,
                                        const float* __restrict__ part_acc, const float* __restrict__ part_ml) {
  const int tile = blockIdx.x, kvh = blockIdx.y;
  const int group = num_heads / num_kv_heads;
  const int s = tile_seq[tile];
  const int q_end = query_start_loc[s + 1];
  const int t0 = query_start_loc[s] + tile_q0[tile];
  const int rows = min(FLASH_ROWS / group, q_end - t0) * group;
  merge_kv_splits<T, HD, FLASH_ROWS, true, true>(rows, splits, t0, group, kvh, num_heads, 0,
                                                 (size_t)num_tokens * num_heads, part_acc, part_ml, out);
}

#define DEFINE_FLASH_ATTENTION(T, HD)                                                                          \
  extern "C" __global__ void __launch_bounds__(FLASH_WARPS * 32) flash_attention_hd##HD##_##T(                 \
      const T* q, int q_stride, const T* k_cache, const T* v_cache, const uint32_t* block_tables,              \
      int max_blocks_per_seq, const int* seq_lens, const int* query_start_loc, const int* tile_seq,            \
      const int* tile_q0, T* out, int num_heads, int num_kv_heads, int block_size, float scale, int window,    \
      float softcap, int splits, int num_tokens, float* part_acc, float* part_ml) {                                                       \
    flash_attention<T, HD>(q, q_stride, k_cache, v_cache, block_tables, max_blocks_per_seq, seq_lens,         \
                           query_start_loc, tile_seq, tile_q0, out, num_heads, num_kv_heads, block_size,      \
                           scale, window, softcap, splits, num_tokens, part_acc, part_ml);                                  \
  }                                                                                                            \
  extern "C" __global__ void flash_attention_combine_hd##HD##_##T(                                             \
      const int* query_start_loc, const int* tile_seq, const int* tile_q0, T* out, int num_heads,             \
      int num_kv_heads, int splits, int num_tokens, const float* part_acc, const float* part_ml) {             \
    flash_attention_combine<T, HD>(query_start_loc, tile_seq, tile_q0, out, num_heads, num_kv_heads, splits,  \
                                   num_tokens, part_acc, part_ml);                                             \
  }

DEFINE_FLASH_ATTENTION(bf16, 64)
DEFINE_FLASH_ATTENTION(bf16, 128)
DEFINE_FLASH_ATTENTION(f16, 64)
DEFINE_FLASH_ATTENTION(f16, 128)
