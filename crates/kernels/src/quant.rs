//! GGML tensor types and their block layouts (ggml `ggml-common.h`), with row dequantization.
//!
//! Every decoder reproduces ggml's `dequantize_row_*` (`ggml-quants.c`) bit for bit, including the order of
//! the float operations, so a weight dequantized here equals the one llama.cpp computes. The per-block
//! decoders are public to the crate because the matmul fuses them into its dot loops (`cpu::matmul`).

/// GGML type ids as stored in GGUF tensor infos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    pub const SUPPORTED: &'static str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";

    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Weights per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 2 + 16,
            Self::Q4_1 => 2 + 2 + 16,
            Self::Q5_0 => 2 + 4 + 16,
            Self::Q5_1 => 2 + 2 + 4 + 16,
            Self::Q8_0 => 2 + 32,
            Self::Q4K => 2 + 2 + 12 + 128,
            Self::Q5K => 2 + 2 + 12 + 32 + 128,
            Self::Q6K => 128 + 64 + 16 + 2,
        }
    }

    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_size() * self.block_bytes()
    }
}

/// Dequantizes one row (`out.len()` weights, a multiple of the block size) of type `dtype` into f32.
///
/// Panics if `bytes` is not exactly `dtype.row_bytes(out.len())` long: `WeightMatrix::new` has already
/// validated every stored tensor, so a mismatch here is a bug in the caller, not bad input.
pub fn dequantize_row(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let bs = dtype.block_size();
    assert!(
        out.len() % bs == 0,
        "{dtype:?}: row length {} is not a multiple of {bs}",
        out.len()
    );
    assert_eq!(
        bytes.len(),
        dtype.row_bytes(out.len()),
        "{dtype:?}: byte length does not match the row length"
    );
    let decode = block_decoder(dtype);
    for (src, dst) in bytes.chunks_exact(dtype.block_bytes()).zip(out.chunks_exact_mut(bs)) {
        decode(src, dst);
    }
}

/// The decoder of one block of `dtype` (`block_bytes()` in, `block_size()` floats out).
pub fn block_decoder(dtype: GgmlType) -> fn(&[u8], &mut [f32]) {
    match dtype {
        GgmlType::F32 => decode_f32,
        GgmlType::F16 => decode_f16,
        GgmlType::BF16 => decode_bf16,
        GgmlType::Q4_0 => decode_q4_0,
        GgmlType::Q4_1 => decode_q4_1,
        GgmlType::Q5_0 => decode_q5_0,
        GgmlType::Q5_1 => decode_q5_1,
        GgmlType::Q8_0 => decode_q8_0,
        GgmlType::Q4K => decode_q4_k,
        GgmlType::Q5K => decode_q5_k,
        GgmlType::Q6K => decode_q6_k,
    }
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Plain floats, any number of them (float "blocks" are one element, so callers may pass whole runs).
#[inline(always)]
pub fn decode_f32(b: &[u8], y: &mut [f32]) {
    for (v, c) in y.iter_mut().zip(b.chunks_exact(4)) {
        *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

#[inline(always)]
pub fn decode_f16(b: &[u8], y: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    // `f16::to_f32` re-detects F16C on every call; the slice conversion detects once per run and uses SIMD.
    let mut h = [half::f16::ZERO; 32];
    for (yc, bc) in y.chunks_mut(32).zip(b.chunks(64)) {
        let h = &mut h[..yc.len()];
        for (v, c) in h.iter_mut().zip(bc.chunks_exact(2)) {
            *v = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
        }
        h.convert_to_f32_slice(yc);
    }
}

#[inline(always)]
pub fn decode_bf16(b: &[u8], y: &mut [f32]) {
    // bf16 is the top half of an f32: widening is a shift, exact.
    for (v, c) in y.iter_mut().zip(b.chunks_exact(2)) {
        *v = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

/// `block_q4_0 { f16 d; u8 qs[16] }`: low nibbles are weights 0..16, high nibbles 16..32, offset 8.
#[inline(always)]
pub fn decode_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        lo[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        hi[j] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1 { f16 d; f16 m; u8 qs[16] }`: `y = q * d + m`.
#[inline(always)]
pub fn decode_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        lo[j] = (qs[j] & 0x0F) as f32 * d + m;
        hi[j] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// The 5-bit quants of a `block_q5_0` / `block_q5_1` (`qh` the 4 high-bit bytes, `qs` the 16 nibble bytes):
/// weight `j < 16` is `qs[j]`'s low nibble with bit `j` of `qh` on top, weight `16 + j` the high nibble with
/// bit `16 + j`.
#[inline(always)]
pub(crate) fn q5_quants(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0F) | (((h >> j) << 4) & 0x10) as u8;
        q[16 + j] = (qs[j] >> 4) | ((h >> (j + 12)) & 0x10) as u8;
    }
    q
}

/// `block_q5_0 { f16 d; u8 qh[4]; u8 qs[16] }`: `y = (q - 16) * d`, `q` 5 bits (see `q5_quants`).
#[inline(always)]
pub fn decode_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let q = q5_quants(&b[2..6], &b[6..22]);
    for (v, &q) in y[..32].iter_mut().zip(&q) {
        *v = (q as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16] }`: `y = q * d + m`.
#[inline(always)]
pub fn decode_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let q = q5_quants(&b[4..8], &b[8..24]);
    for (v, &q) in y[..32].iter_mut().zip(&q) {
        *v = q as f32 * d + m;
    }
}

/// `block_q8_0 { f16 d; i8 qs[32] }`.
#[inline(always)]
pub fn decode_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in y[..32].iter_mut().zip(&b[2..34]) {
        *v = (q as i8) as f32 * d;
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) packed in 12 bytes. Sub-blocks
/// 0..4 sit in the low 6 bits of bytes `j` / `j + 4`; sub-blocks 4..8 put their low 4 bits in byte `j + 4`
/// and their top 2 bits in the spare top bits of bytes `j - 4` / `j`.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`: 8 sub-blocks of 32, `y = d*sc*q - dmin*m`.
#[inline(always)]
pub fn decode_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (c, (q, out)) in qs.chunks_exact(32).zip(y[..256].chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, mm1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, mm2) = (d * sc2 as f32, min * m2 as f32);
        let (lo, hi) = out.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0x0F) as f32 - mm1;
            hi[l] = d2 * (q[l] >> 4) as f32 - mm2;
        }
    }
}

/// `block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }`: Q4_K's sub-blocks with a fifth bit
/// per weight, bit `j` of `qh[l]` for weight `l` of sub-block `j`: `y = d*sc*q - dmin*m`.
#[inline(always)]
pub fn decode_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (c, (q, out)) in qs.chunks_exact(32).zip(y[..256].chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, mm1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, mm2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let (lo, hi) = out.split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16.0 } else { 0.0 };
            let h2 = if qh[l] & u2 != 0 { 16.0 } else { 0.0 };
            lo[l] = d1 * ((q[l] & 0x0F) as f32 + h1) - mm1;
            hi[l] = d2 * ((q[l] >> 4) as f32 + h2) - mm2;
        }
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`: 6-bit quants (low 4 bits in `ql`, top 2 in
/// `qh`), offset 32, one signed 8-bit scale per 16 weights. Two halves of 128 weights, each four runs of 32.
#[inline(always)]
pub fn decode_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let out = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Test-only quantizers after ggml's `quantize_row_*_ref`, and block packers written from the layout
/// descriptions, shared by the tests of this module and of `cpu::matmul`.
#[cfg(test)]
pub(crate) mod testing {
    use half::f16;

    use super::GgmlType;

    pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let amax = blk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
        }
        out
    }

    pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let max = blk.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            for j in 0..16 {
                let q0 = ((blk[j] * id + 8.5) as i8).min(15) as u8;
                let q1 = ((blk[j + 16] * id + 8.5) as i8).min(15) as u8;
                out.push(q0 | (q1 << 4));
            }
        }
        out
    }

    pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let min = blk.iter().cloned().fold(f32::MAX, f32::min);
            let max = blk.iter().cloned().fold(f32::MIN, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
            for j in 0..16 {
                let q0 = (((blk[j] - min) * id + 0.5) as u8).min(15);
                let q1 = (((blk[j + 16] - min) * id + 0.5) as u8).min(15);
                out.push(q0 | (q1 << 4));
            }
        }
        out
    }

    /// The 5-bit quants `q` (0..32) of one 32-weight block as `(qh, qs)`, the inverse of `q5_quants`.
    fn pack_q5(q: &[u8; 32]) -> ([u8; 4], [u8; 16]) {
        let mut qh = 0u32;
        let mut qs = [0u8; 16];
        for j in 0..16 {
            qs[j] = (q[j] & 0x0F) | ((q[16 + j] & 0x0F) << 4);
            qh |= ((q[j] as u32 >> 4) & 1) << j;
            qh |= ((q[16 + j] as u32 >> 4) & 1) << (j + 16);
        }
        (qh.to_le_bytes(), qs)
    }

    pub fn quantize_q5_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let max = blk.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q: [u8; 32] = std::array::from_fn(|j| ((blk[j] * id + 16.5) as i8).min(31) as u8);
            let (qh, qs) = pack_q5(&q);
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend_from_slice(&qh);
            out.extend_from_slice(&qs);
        }
        out
    }

    pub fn quantize_q5_1(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in x.chunks_exact(32) {
            let min = blk.iter().cloned().fold(f32::MAX, f32::min);
            let max = blk.iter().cloned().fold(f32::MIN, f32::max);
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q: [u8; 32] = std::array::from_fn(|j| (((blk[j] - min) * id + 0.5) as u8).min(31));
            let (qh, qs) = pack_q5(&q);
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
            out.extend_from_slice(&qh);
            out.extend_from_slice(&qs);
        }
        out
    }

    /// Packs 8 six-bit scales and mins into Q4_K's 12 bytes (the inverse of `get_scale_min_k4`).
    pub fn pack_scales_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
        let mut q = [0u8; 12];
        for j in 0..4 {
            q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            q[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
        }
        q
    }

    /// A Q4_K block from its fields; `q[e]` (0..16) is the quant of weight `e`.
    pub fn pack_q4_k(d: f32, dmin: f32, sc: &[u8; 8], m: &[u8; 8], q: &[u8; 256]) -> Vec<u8> {
        let mut b = Vec::with_capacity(144);
        b.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(dmin).to_le_bytes());
        b.extend_from_slice(&pack_scales_k4(sc, m));
        // Each 64-weight chunk shares 32 bytes: its first 32 weights in the low nibbles, the next 32 high.
        for c in 0..4 {
            for l in 0..32 {
                b.push(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
            }
        }
        b
    }

    /// A Q5_K block from its fields; `q[e]` (0..32) is the quant of weight `e`.
    pub fn pack_q5_k(d: f32, dmin: f32, sc: &[u8; 8], m: &[u8; 8], q: &[u8; 256]) -> Vec<u8> {
        let mut b = Vec::with_capacity(176);
        b.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(dmin).to_le_bytes());
        b.extend_from_slice(&pack_scales_k4(sc, m));
        // The fifth bits: bit j of qh[l] belongs to weight l of sub-block j.
        b.extend((0..32).map(|l| (0..8).fold(0u8, |h, j| h | ((q[32 * j + l] >> 4) & 1) << j)));
        for c in 0..4 {
            for l in 0..32 {
                b.push((q[64 * c + l] & 0x0F) | ((q[64 * c + 32 + l] & 0x0F) << 4));
            }
        }
        b
    }

    /// A Q6_K block from its fields; `q[e]` (0..64) is the unsigned 6-bit quant of weight `e`.
    pub fn pack_q6_k(d: f32, scales: &[i8; 16], q: &[u8; 256]) -> Vec<u8> {
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for (e, &v) in q.iter().enumerate() {
            let (n, r) = (e / 128, e % 128);
            let (quarter, l) = (r / 32, r % 32);
            let byte = 64 * n + l + 32 * (quarter & 1);
            ql[byte] |= if quarter >= 2 { (v & 0x0F) << 4 } else { v & 0x0F };
            qh[32 * n + l] |= (v >> 4) << (2 * quarter);
        }
        let mut b = Vec::with_capacity(210);
        b.extend_from_slice(&ql);
        b.extend_from_slice(&qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        b
    }

    /// Encodes `x` (a multiple of the block size) in `dtype` with the quantizers above or random-field packers
    /// for the K-quants; returns the bytes and what they decode to per the layout (not via the decoder).
    pub fn encode(dtype: GgmlType, x: &[f32], seed: u64) -> Vec<u8> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        match dtype {
            GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlType::F16 => x.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
            GgmlType::BF16 => x.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            GgmlType::Q4_0 => quantize_q4_0(x),
            GgmlType::Q4_1 => quantize_q4_1(x),
            GgmlType::Q5_0 => quantize_q5_0(x),
            GgmlType::Q5_1 => quantize_q5_1(x),
            GgmlType::Q8_0 => quantize_q8_0(x),
            // K-quants: random fields (their reference quantizers are long searches; the matmul only needs
            // valid blocks, and the decoder's exactness is tested separately).
            GgmlType::Q4K => (0..x.len() / 256)
                .flat_map(|_| {
                    let sc: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
                    let m: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
                    let q: [u8; 256] = std::array::from_fn(|_| rng.random_range(0..16));
                    pack_q4_k(rng.random_range(0.0..0.01), rng.random_range(0.0..0.01), &sc, &m, &q)
                })
                .collect(),
            GgmlType::Q5K => (0..x.len() / 256)
                .flat_map(|_| {
                    let sc: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
                    let m: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
                    let q: [u8; 256] = std::array::from_fn(|_| rng.random_range(0..32));
                    pack_q5_k(rng.random_range(0.0..0.01), rng.random_range(0.0..0.01), &sc, &m, &q)
                })
                .collect(),
            GgmlType::Q6K => (0..x.len() / 256)
                .flat_map(|_| {
                    let sc: [i8; 16] = std::array::from_fn(|_| rng.random_range(-128..=127));
                    let q: [u8; 256] = std::array::from_fn(|_| rng.random_range(0..64));
                    pack_q6_k(rng.random_range(0.0..0.001), &sc, &q)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;
    use rand::{Rng, SeedableRng};

    use super::testing::*;
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    fn decode(dtype: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n];
        dequantize_row(dtype, bytes, &mut out);
        out
    }

    #[test]
    fn float_types_decode_exactly() {
        let x = [1.5f32, -0.25, 3.0e-3, 65504.0];
        let f32_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode(GgmlType::F32, &f32_bytes, 4), x);
        let f16_bytes: Vec<u8> = x.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        let want: Vec<f32> = x.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        assert_eq!(decode(GgmlType::F16, &f16_bytes, 4), want);
        // bf16 0x3FC0 = 1.5, 0xBE80 = -0.25.
        assert_eq!(decode(GgmlType::BF16, &[0xC0, 0x3F, 0x80, 0xBE], 2), [1.5, -0.25]);
    }

    #[test]
    fn q4_0_hand_block() {
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = decode(GgmlType::Q4_0, &b, 32);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn q4_1_hand_block() {
        let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let y = decode(GgmlType::Q4_1, &b, 32);
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.25 - 1.0);
            assert_eq!(y[j + 16], 3.0 * 0.25 - 1.0);
        }
    }

    #[test]
    fn q8_0_hand_block() {
        let mut b = f16::from_f32(0.125).to_le_bytes().to_vec();
        b.extend((0..32i32).map(|j| (j * 8 - 128) as i8 as u8));
        let y = decode(GgmlType::Q8_0, &b, 32);
        for j in 0..32 {
            assert_eq!(y[j], (j as f32 * 8.0 - 128.0) * 0.125);
        }
    }

    #[test]
    fn scale_min_packing_round_trips() {
        let sc = [1, 63, 17, 40, 5, 63, 32, 9];
        let m = [0, 2, 63, 31, 48, 16, 1, 63];
        let packed = pack_scales_k4(&sc, &m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &packed), (sc[j], m[j]), "sub-block {j}");
        }
    }

    #[test]
    fn q4_k_block_matches_layout() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let sc: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
        let m: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
        let q: [u8; 256] = std::array::from_fn(|_| rng.random_range(0..16));
        let (d, dmin) = (0.0625f32, 0.03125f32); // exact in f16
        let y = decode(GgmlType::Q4K, &pack_q4_k(d, dmin, &sc, &m, &q), 256);
        for e in 0..256 {
            let s = e / 32;
            let want = d * sc[s] as f32 * q[e] as f32 - dmin * m[s] as f32;
            assert!(
                (y[e] - want).abs() <= 1e-6 * want.abs().max(1.0),
                "weight {e}: {} vs {want}",
                y[e]
            );
        }
    }

    #[test]
    fn q5_0_and_q5_1_hand_blocks() {
        // Weight j's quant is j (bit 4 set from j = 16 on), so qh is 0xFFFF0000 and the nibbles run 0..16 twice.
        let qs: Vec<u8> = (0..16u8).map(|j| j | (j << 4)).collect();
        let qh = 0xFFFF_0000u32.to_le_bytes();
        let mut b0 = f16::from_f32(0.5).to_le_bytes().to_vec();
        b0.extend_from_slice(&qh);
        b0.extend_from_slice(&qs);
        let mut b1 = f16::from_f32(0.25).to_le_bytes().to_vec();
        b1.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b1.extend_from_slice(&qh);
        b1.extend_from_slice(&qs);
        let (y0, y1) = (decode(GgmlType::Q5_0, &b0, 32), decode(GgmlType::Q5_1, &b1, 32));
        for j in 0..32 {
            assert_eq!(y0[j], (j as f32 - 16.0) * 0.5, "q5_0 weight {j}");
            assert_eq!(y1[j], j as f32 * 0.25 - 1.0, "q5_1 weight {j}");
        }
    }

    #[test]
    fn q5_k_block_matches_layout() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let sc: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
        let m: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
        let q: [u8; 256] = std::array::from_fn(|_| rng.random_range(0..32));
        let (d, dmin) = (0.0625f32, 0.03125f32);
        let y = decode(GgmlType::Q5K, &pack_q5_k(d, dmin, &sc, &m, &q), 256);
        for e in 0..256 {
            let s = e / 32;
            let want = d * sc[s] as f32 * q[e] as f32 - dmin * m[s] as f32;
            assert!((y[e] - want).abs() <= 1e-6 * want.abs().max(1.0), "weight {e}: {} vs {want}", y[e]);
        }
    }

    #[test]
    fn q6_k_block_matches_layout() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let sc: [i8; 16] = std::array::from_fn(|_| rng.random_range(-128..=127));
        let q: [u8; 256] = std::array::from_fn(|_| rng.random_range(0..64));
        let d = 0.5f32;
        let y = decode(GgmlType::Q6K, &pack_q6_k(d, &sc, &q), 256);
        for e in 0..256 {
            let want = d * sc[e / 16] as f32 * (q[e] as f32 - 32.0);
            assert_eq!(y[e], want, "weight {e}");
        }
    }

    #[test]
    fn round_trip_through_reference_quantizers() {
        let x = random(32 * 8, 3);
        for (dtype, bytes) in [
            (GgmlType::Q8_0, quantize_q8_0(&x)),
            (GgmlType::Q4_0, quantize_q4_0(&x)),
            (GgmlType::Q4_1, quantize_q4_1(&x)),
            (GgmlType::Q5_0, quantize_q5_0(&x)),
            (GgmlType::Q5_1, quantize_q5_1(&x)),
        ] {
            assert_eq!(bytes.len(), dtype.row_bytes(x.len()));
            let y = decode(dtype, &bytes, x.len());
            for (blk, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let range = xb.iter().cloned().fold(f32::MIN, f32::max) - xb.iter().cloned().fold(f32::MAX, f32::min);
                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                // Half a quantization step (plus f16 rounding of the scale) bounds the error, except Q4_0's
                // asymmetric grid [-8d, 7d], which clips the largest value opposite the extreme by a full step.
                let bound = match dtype {
                    GgmlType::Q8_0 => 0.5 * amax / 127.0,
                    GgmlType::Q4_0 => amax / 8.0,
                    GgmlType::Q5_0 => amax / 16.0,
                    GgmlType::Q5_1 => 0.5 * range / 31.0,
                    _ => 0.5 * range / 15.0,
                };
                for (a, b) in xb.iter().zip(yb) {
                    assert!(
                        (a - b).abs() <= bound + 4e-3 * amax,
                        "{dtype:?} block {blk}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "byte length")]
    fn wrong_byte_length_is_caught() {
        decode(GgmlType::Q8_0, &[0u8; 33], 32);
    }
}
