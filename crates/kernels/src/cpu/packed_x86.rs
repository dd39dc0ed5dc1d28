//! The x86 kernels over `PackedMatrix` tiles (see `packed_matrix` for the layout and the math).
//!
//! AVX-512 VNNI takes a whole 16-row tile per register: lane `r` of `vpdpbusd` sums row `r`'s 4 weights times
//! the 4 activation bytes broadcast to every lane. AVX-VNNI and AVX2 (16 vector registers, 8 lanes) run the
//! tile as two halves of 8 rows. Every path's integer dots equal the scalar reference's exactly:
//!
//! - `vpdpbusd` multiplies unsigned by signed bytes, so Q8_0's signed weights are offset to `q + 128` (one
//!   `xor 0x80` per weight vector, shared by the activation rows) and `128·Σq_a` is subtracted in integers;
//! - AVX2's `vpmaddubsw` adds pairs into saturating i16: for nibbles (at most 15·127·2 per pair) the four of a
//!   half block still fit in i16 before one `vpmaddwd` widens; Q8_0 uses the sign trick (`|w|`, `sign(x, w)`,
//!   exact as the activations never take -128) and Q5's and Q6's quants (0..32, 0..64) enter as they are,
//!   each product widened.
//!
//! Both paths keep the two 16-weight halves of a block apart (Q6_K scales them separately; for the others the
//! two chains only shorten the dependency chain).

use std::arch::x86_64::*;
use std::ops::Range;

use super::packed_matrix::{OutTiles, PackedKind, PackedMatrix, TILE};
use super::q8_acts::{Q8Acts, QK};

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;
const Q6: u8 = 3;
const Q5: u8 = 4;

/// Whether the kind's records are 8 chunks of one byte per weight (else 4 chunks of nibble pairs).
const fn byte_quants(kind: u8) -> bool {
    kind == Q8_0 || kind == Q6 || kind == Q5
}

/// Whether the kind has a second f16 scale per block (Q4_1's and Q5's min, Q6's second-half scale).
const fn two_scales(kind: u8) -> bool {
    kind == Q4_1 || kind == Q6 || kind == Q5
}

/// Whether the second scale is a min, added as `m·d_a·Σq_a` (Q4_1, Q5).
const fn has_min(kind: u8) -> bool {
    kind == Q4_1 || kind == Q5
}

/// The 4 activation bytes of group `g` (weights `4g .. 4g + 4` of the block) as one dword.
#[inline(always)]
unsafe fn x_word(x: *const i8, g: usize) -> i32 {
    (x.add(4 * g) as *const i32).read_unaligned()
}

/// Activation block offsets of the 8 weight vectors a record unpacks to: 4-bit chunk `j` gives groups `j`
/// (low nibbles) and `4 + j` (high), 8-bit chunk `g` gives group `g`, so vector `v` always meets group `v`, and
/// vectors 0..4 are the block's first 16 weights, 4..8 its last 16.
const GROUPS: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

macro_rules! by_kind {
    ($w:expr, $f:ident $(:: <$($g:ty),*>)?, $($arg:expr),*) => {
        match $w.kind {
            PackedKind::Q4_0 => $f::<$($($g,)*)? Q4_0, M>($($arg),*),
            PackedKind::Q4_1 => $f::<$($($g,)*)? Q4_1, M>($($arg),*),
            PackedKind::Q5 => $f::<$($($g,)*)? Q5, M>($($arg),*),
            PackedKind::Q8_0 => $f::<$($($g,)*)? Q8_0, M>($($arg),*),
            PackedKind::Q6 => $f::<$($($g,)*)? Q6, M>($($arg),*),
        }
    };
}

/// Rows `i0..i0 + M` of `a` against whole 16-row tiles, AVX-512 VNNI.
///
/// # Safety
/// The CPU has the features; as `packed_matrix::run_group`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tiles_avx512_vnni<const M: usize>(
    w: &PackedMatrix,
    a: &Q8Acts,
    i0: usize,
    tiles: Range<usize>,
    out: OutTiles,
) {
    by_kind!(w, tiles512, w, a, i0, tiles, out)
}

#[inline(always)]
unsafe fn tiles512<const KIND: u8, const M: usize>(
    w: &PackedMatrix,
    a: &Q8Acts,
    i0: usize,
    tiles: Range<usize>,
    out: OutTiles,
) {
    let (nb, k) = (w.blocks(), w.cols);
    let qr = if byte_quants(KIND) { 512 } else { 256 };
    // What `I − bias·Σq_a` removes: Q4_0's -8, the +128 that makes Q8_0's weights unsigned, Q6_K's -32.
    let bias = match KIND {
        Q4_0 => 8,
        Q8_0 => 128,
        Q6 => 32,
        _ => 0,
    };
    for t in tiles {
        let tile = w.tile_ptr(t);
        let scales = tile.add(nb * qr);
        let mut acc = [_mm512_setzero_ps(); M];
        let mut acc2 = [_mm512_setzero_ps(); M];
        for b in 0..nb {
            let q = tile.add(b * qr);
            let d = _mm512_cvtph_ps(_mm256_load_si256(scales.add(b * 32) as *const __m256i));
            let d2 = if two_scales(KIND) {
                _mm512_cvtph_ps(_mm256_load_si256(scales.add(nb * 32 + b * 32) as *const __m256i))
            } else {
                _mm512_setzero_ps()
            };
            let mut wv = [_mm512_setzero_si512(); 8];
            if byte_quants(KIND) {
                for (g, v) in wv.iter_mut().enumerate() {
                    let raw = _mm512_load_si512(q.add(g * 64) as *const _);
                    *v = if KIND == Q8_0 { _mm512_xor_si512(raw, _mm512_set1_epi8(-128)) } else { raw };
                }
            } else {
                let lo = _mm512_set1_epi8(0x0F);
                for j in 0..4 {
                    let v = _mm512_load_si512(q.add(j * 64) as *const _);
                    wv[j] = _mm512_and_si512(v, lo);
                    wv[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo);
                }
            }
            for i in 0..M {
                let row = i0 + i;
                let x = a.qs.as_ptr().add(row * k + b * QK);
                // Two chains of four (the block's halves), so the dot is not one 8-deep latency chain.
                let mut s = [_mm512_setzero_si512(); 2];
                for g in GROUPS {
                    s[g / 4] = _mm512_dpbusd_epi32(s[g / 4], wv[g], _mm512_set1_epi32(x_word(x, g)));
                }
                let ai = row * nb + b;
                let xd = _mm512_set1_ps(*a.d.get_unchecked(ai));
                if KIND == Q6 {
                    let qs16 = a.qsum16.as_ptr().add(2 * ai);
                    let lo = _mm512_sub_epi32(s[0], _mm512_set1_epi32(bias * *qs16));
                    let hi = _mm512_sub_epi32(s[1], _mm512_set1_epi32(bias * *qs16.add(1)));
                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_mul_ps(d, xd), acc[i]);
                    acc2[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_mul_ps(d2, xd), acc2[i]);
                    continue;
                }
                let mut dot = _mm512_add_epi32(s[0], s[1]);
                if bias != 0 {
                    dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(bias * *a.qsum.get_unchecked(ai)));
                }
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, xd), acc[i]);
                if has_min(KIND) {
                    acc2[i] = _mm512_fmadd_ps(d2, _mm512_set1_ps(*a.s.get_unchecked(ai)), acc2[i]);
                }
            }
        }
        let live = TILE.min(w.rows - t * TILE);
        let mask: __mmask16 = if live == TILE { 0xFFFF } else { (1u16 << live) - 1 };
        for i in 0..M {
            let v = if two_scales(KIND) { _mm512_add_ps(acc[i], acc2[i]) } else { acc[i] };
            // SAFETY (caller): this tile's output columns belong to this task only.
            let dst = out.ptr.get().add((i0 + i) * out.ld + out.col0 + t * TILE);
            _mm512_mask_storeu_ps(dst, mask, v);
        }
    }
}

/// The 8-lane integer dots of one 8-row half-record with one activation block: `[first 16 weights, last 16]`.
trait HalfDot {
    /// Whether Q8_0 weights enter as `q + 128` (so `128·Σq_a` is subtracted) rather than signed.
    const Q8_UNSIGNED: bool;
    unsafe fn dot<const KIND: u8>(w: &[__m256i; 8], x: *const i8) -> [__m256i; 2];
}

struct Avx2;
impl HalfDot for Avx2 {
    const Q8_UNSIGNED: bool = false;
    #[inline(always)]
    unsafe fn dot<const KIND: u8>(w: &[__m256i; 8], x: *const i8) -> [__m256i; 2] {
        let ones = _mm256_set1_epi16(1);
        let mut s = [_mm256_setzero_si256(); 2];
        if KIND == Q4_0 || KIND == Q4_1 {
            // Four nibble pair-sums stay below 2^15 (4·2·15·127), so add in i16 and widen once per half.
            for g in GROUPS {
                let p = _mm256_maddubs_epi16(w[g], _mm256_set1_epi32(x_word(x, g)));
                s[g / 4] = _mm256_add_epi16(s[g / 4], p);
            }
            return [_mm256_madd_epi16(s[0], ones), _mm256_madd_epi16(s[1], ones)];
        }
        for g in GROUPS {
            let xv = _mm256_set1_epi32(x_word(x, g));
            // Q8_0: the sign trick; Q5 / Q6: their quants are already unsigned (0..32, 0..64).
            let p = if KIND == Q8_0 {
                _mm256_maddubs_epi16(_mm256_sign_epi8(w[g], w[g]), _mm256_sign_epi8(xv, w[g]))
            } else {
                _mm256_maddubs_epi16(w[g], xv)
            };
            s[g / 4] = _mm256_add_epi32(s[g / 4], _mm256_madd_epi16(p, ones));
        }
        s
    }
}

struct AvxVnni;
impl HalfDot for AvxVnni {
    const Q8_UNSIGNED: bool = true;
    #[inline(always)]
    unsafe fn dot<const KIND: u8>(w: &[__m256i; 8], x: *const i8) -> [__m256i; 2] {
        let mut s = [_mm256_setzero_si256(); 2];
        for g in GROUPS {
            s[g / 4] = _mm256_dpbusd_avx_epi32(s[g / 4], w[g], _mm256_set1_epi32(x_word(x, g)));
        }
        s
    }
}

/// Rows `i0..i0 + M` of `a` against whole tiles, AVX2 (`vpmaddubsw`).
///
/// # Safety
/// The CPU has the features; as `packed_matrix::run_group`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tiles_avx2<const M: usize>(w: &PackedMatrix, a: &Q8Acts, i0: usize, tiles: Range<usize>, out: OutTiles) {
    by_kind!(w, tiles256::<Avx2>, w, a, i0, tiles, out)
}

/// As `tiles_avx2` with AVX-VNNI's `vpdpbusd`.
///
/// # Safety
/// The CPU has the features; as `packed_matrix::run_group`.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn tiles_avx_vnni<const M: usize>(
    w: &PackedMatrix,
    a: &Q8Acts,
    i0: usize,
    tiles: Range<usize>,
    out: OutTiles,
) {
    by_kind!(w, tiles256::<AvxVnni>, w, a, i0, tiles, out)
}

#[inline(always)]
unsafe fn tiles256<D: HalfDot, const KIND: u8, const M: usize>(
    w: &PackedMatrix,
    a: &Q8Acts,
    i0: usize,
    tiles: Range<usize>,
    out: OutTiles,
) {
    let (nb, k) = (w.blocks(), w.cols);
    let qr = if byte_quants(KIND) { 512 } else { 256 };
    let bias = match KIND {
        Q4_0 => 8,
        Q8_0 if D::Q8_UNSIGNED => 128,
        Q6 => 32,
        _ => 0,
    };
    for t in tiles {
        let tile = w.tile_ptr(t);
        let scales = tile.add(nb * qr);
        let live = TILE.min(w.rows - t * TILE);
        // Half `h` is rows `8h .. 8h + 8` of the tile: bytes `32h ..` of every 64-byte chunk and scale record.
        for h in 0..2 {
            if 8 * h >= live {
                break;
            }
            let mut acc = [_mm256_setzero_ps(); M];
            let mut acc2 = [_mm256_setzero_ps(); M];
            for b in 0..nb {
                let q = tile.add(b * qr + 32 * h);
                let d = _mm256_cvtph_ps(_mm_load_si128(scales.add(b * 32 + 16 * h) as *const __m128i));
                let d2 = if two_scales(KIND) {
                    _mm256_cvtph_ps(_mm_load_si128(scales.add(nb * 32 + b * 32 + 16 * h) as *const __m128i))
                } else {
                    _mm256_setzero_ps()
                };
                let mut wv = [_mm256_setzero_si256(); 8];
                if byte_quants(KIND) {
                    for (g, v) in wv.iter_mut().enumerate() {
                        let raw = _mm256_load_si256(q.add(g * 64) as *const __m256i);
                        let flip = KIND == Q8_0 && D::Q8_UNSIGNED;
                        *v = if flip { _mm256_xor_si256(raw, _mm256_set1_epi8(-128)) } else { raw };
                    }
                } else {
                    let lo = _mm256_set1_epi8(0x0F);
                    for j in 0..4 {
                        let v = _mm256_load_si256(q.add(j * 64) as *const __m256i);
                        wv[j] = _mm256_and_si256(v, lo);
                        wv[4 + j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo);
                    }
                }
                for i in 0..M {
                    let row = i0 + i;
                    let s = D::dot::<KIND>(&wv, a.qs.as_ptr().add(row * k + b * QK));
                    let ai = row * nb + b;
                    let xd = _mm256_set1_ps(*a.d.get_unchecked(ai));
                    if KIND == Q6 {
                        let qs16 = a.qsum16.as_ptr().add(2 * ai);
                        let lo = _mm256_sub_epi32(s[0], _mm256_set1_epi32(bias * *qs16));
                        let hi = _mm256_sub_epi32(s[1], _mm256_set1_epi32(bias * *qs16.add(1)));
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(d, xd), acc[i]);
                        acc2[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(d2, xd), acc2[i]);
                        continue;
                    }
                    let mut dot = _mm256_add_epi32(s[0], s[1]);
                    if bias != 0 {
                        dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(bias * *a.qsum.get_unchecked(ai)));
                    }
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d, xd), acc[i]);
                    if has_min(KIND) {
                        acc2[i] = _mm256_fmadd_ps(d2, _mm256_set1_ps(*a.s.get_unchecked(ai)), acc2[i]);
                    }
                }
            }
            let n = 8.min(live - 8 * h);
            for i in 0..M {
                let v = if two_scales(KIND) { _mm256_add_ps(acc[i], acc2[i]) } else { acc[i] };
                let dst = out.ptr.get().add((i0 + i) * out.ld + out.col0 + t * TILE + 8 * h);
                if n == 8 {
                    _mm256_storeu_ps(dst, v);
                } else {
                    let mut lanes = [0.0f32; 8];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                    std::ptr::copy_nonoverlapping(lanes.as_ptr(), dst, n);
                }
            }
        }
    }
}
