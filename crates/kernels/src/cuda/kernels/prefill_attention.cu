// Paged causal attention for prefill chunks on the tensor cores (FlashAttention-2's scheme, our own code).
//
// Work item = (query tile, kv head). A tile is up to 64 / group consecutive query tokens of ONE sequence; its
// 64 rows are (token, query head of the kv head's GQA group) pairs, row r = token r / group, head r % group, so
// every K/V byte read into shared memory serves the whole GQA group and a run of tokens. Each of the 4 warps owns
// 16 rows and keeps them in registers for the whole KV sweep:
//   S = Q K^T   mma.sync m16n8k16 (bf16 in, f32 accumulate), Q fragments loaded once from global memory,
//               K fragments read as 32-bit words from a padded shared tile (conflict-free);
//   online softmax in the accumulator registers (rows g and g + 8 of each quad, reduced over the quad);
//   O += P V    P re-packed from the S accumulators as the A operand (same register layout), V fragments via
//               ldmatrix.trans from a row-major shared tile.
// Query token t attends to the first ctx(t) = seq_len - (q_end - 1 - t) keys of its sequence, so earlier blocks
// from the prefix cache or from earlier chunks are read like any other; keys past a row's context are masked
// and zero-filled tiles keep garbage out of P V. Warps whose rows all end before a KV tile skip its math.
// Head dims 64 and 128 (256 would not fit the O accumulators in registers: the CUDA-core kernel serves it).
#include "common.cuh"

#define PREFILL_WARPS 4
#define PREFILL_ROWS 64  // query rows per block (16 per warp)
#define PREFILL_KEYS 64  // keys per shared K/V tile

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four transposed 8x8 bf16 matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t load_u32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

template <int HD>
__device__ void prefill_attention(const bf16* __restrict__ q, int q_stride, const bf16* __restrict__ k_cache,
                                  const bf16* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                                  int max_blocks_per_seq, const int* __restrict__ seq_lens,
                                  const int* __restrict__ query_start_loc, const int* __restrict__ tile_seq,
                                  const int* __restrict__ tile_q0, bf16* __restrict__ out, int num_heads,
                                  int num_kv_heads, int block_size, float scale) {
  constexpr int BN = PREFILL_KEYS;
  constexpr int STRIDE = HD + 8;  // shared row stride (bf16): 16-byte rows, word stride = 4 mod 32
  __shared__ __align__(16) bf16 sk[BN * STRIDE];
  __shared__ __align__(16) bf16 sv[BN * STRIDE];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, tig = lane & 3;  // mma fragment coordinates: row group, thread in group
  const int tile = blockIdx.x, kvh = blockIdx.y;
  const int group = num_heads / num_kv_heads;
  const int s = tile_seq[tile];
  const int q_end = query_start_loc[s + 1];
  const int t0 = query_start_loc[s] + tile_q0[tile];
  const int rows = min(PREFILL_ROWS / group, q_end - t0) * group;
  const int seq_len = seq_lens[s];
  const int kv_stride = num_kv_heads * HD;
  const uint32_t* table = block_tables + (size_t)s * max_blocks_per_seq;
  auto ctx_of = [&](int r) { return seq_len - (q_end - 1 - (t0 + r / group)); };

  const int r0 = warp * 16 + g, r1 = r0 + 8;
  const bool valid0 = r0 < rows, valid1 = r1 < rows;
  const int ctx0 = valid0 ? ctx_of(r0) : 0, ctx1 = valid1 ? ctx_of(r1) : 0;
  const bool warp_active = warp * 16 < rows;
  const int warp_ctx = warp_active ? ctx_of(min(warp * 16 + 15, rows - 1)) : 0;  // rows ascend by token
  const int k_end = ctx_of(rows - 1);

  // Q fragments (A operand, row-major 16 x HD): registers for the whole sweep.
  uint32_t qf[HD / 16][4];
  {
    const bf16* q0 = q + (size_t)(t0 + r0 / group) * q_stride + (kvh * group + r0 % group) * HD;
    const bf16* q1 = q + (size_t)(t0 + r1 / group) * q_stride + (kvh * group + r1 % group) * HD;
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

  for (int k0 = 0; k0 < k_end; k0 += BN) {
    __syncthreads();  // the previous tile is consumed
    constexpr int CHUNKS = HD / 8;
    for (int i = threadIdx.x; i < BN * CHUNKS; i += PREFILL_WARPS * 32) {
      const int kk = i / CHUNKS, c = i % CHUNKS;
      const int key = k0 + kk;
      uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
      if (key < k_end) {
        const size_t slot = (size_t)table[key / block_size] * block_size + key % block_size;
        const size_t off = slot * kv_stride + kvh * HD + c * 8;
        kv4 = *reinterpret_cast<const uint4*>(k_cache + off);
        vv4 = *reinterpret_cast<const uint4*>(v_cache + off);
      }
      *reinterpret_cast<uint4*>(&sk[kk * STRIDE + c * 8]) = kv4;
      *reinterpret_cast<uint4*>(&sv[kk * STRIDE + c * 8]) = vv4;
    }
    __syncthreads();
    if (!warp_active || warp_ctx <= k0) continue;  // warp-uniform: every row of this warp ends before the tile

    // S = Q K^T for 16 rows x BN keys.
    float sc[BN / 8][4];
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt++) {
        const bf16* kr = &sk[(nt * 8 + g) * STRIDE + ks * 16 + tig * 2];
        mma_16816(sc[nt], qf[ks], load_u32(kr), load_u32(kr + 8));
      }
    }
    // Mask past each row's context, scale into the log2 domain, and take the tile's row maxima.
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int key = k0 + nt * 8 + tig * 2 + (e & 1);
        const bool live = key < (e < 2 ? ctx0 : ctx1);
        sc[nt][e] = live ? sc[nt][e] * scale_log2 : -INFINITY;
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
      const uint32_t pa[4] = {pack_bf16x2(sc[2 * kk][0], sc[2 * kk][1]), pack_bf16x2(sc[2 * kk][2], sc[2 * kk][3]),
                              pack_bf16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                              pack_bf16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
      // Lanes 0-15 address keys kk*16 + 0..15 at dims dt*8; lanes 16-31 the same keys at dims dt*8 + 8.
      const int vrow = kk * 16 + (lane & 15);
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt += 2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, &sv[vrow * STRIDE + dt * 8 + (lane >> 4) * 8]);
        mma_16816(o[dt], pa, vb[0], vb[1]);
        mma_16816(o[dt + 1], pa, vb[2], vb[3]);
      }
    }
  }

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  const int out_stride = num_heads * HD;
  if (valid0) {
    bf16* orow = out + (size_t)(t0 + r0 / group) * out_stride + (kvh * group + r0 % group) * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++)
      *reinterpret_cast<uint32_t*>(orow + dt * 8 + tig * 2) = pack_bf16x2(o[dt][0] * inv0, o[dt][1] * inv0);
  }
  if (valid1) {
    bf16* orow = out + (size_t)(t0 + r1 / group) * out_stride + (kvh * group + r1 % group) * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++)
      *reinterpret_cast<uint32_t*>(orow + dt * 8 + tig * 2) = pack_bf16x2(o[dt][2] * inv1, o[dt][3] * inv1);
  }
}

#define DEFINE_PREFILL_ATTENTION(HD)                                                                           \
  extern "C" __global__ void __launch_bounds__(PREFILL_WARPS * 32) prefill_attention_hd##HD##_bf16(            \
      const bf16* q, int q_stride, const bf16* k_cache, const bf16* v_cache, const uint32_t* block_tables,     \
      int max_blocks_per_seq, const int* seq_lens, const int* query_start_loc, const int* tile_seq,            \
      const int* tile_q0, bf16* out, int num_heads, int num_kv_heads, int block_size, float scale) {           \
    prefill_attention<HD>(q, q_stride, k_cache, v_cache, block_tables, max_blocks_per_seq, seq_lens,          \
                          query_start_loc, tile_seq, tile_q0, out, num_heads, num_kv_heads, block_size, scale); \
  }

DEFINE_PREFILL_ATTENTION(64)
DEFINE_PREFILL_ATTENTION(128)
