//! GGUF K-quants that published Phi GGUFs use, converted to the nearest
//! runtime format: Q4_K becomes q4_1 (each 32-value sub-block already has a
//! scale and a min; only their rounding to f16 changes values) and Q6_K
//! becomes q8_0 (requantized). The converter reports the error it caused.

use half::f16;

use crate::error::{Error, Result};

const QK_K: usize = 256;
const Q4K_BYTES: usize = 144;
const Q6K_BYTES: usize = 210;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn check(bytes: &[u8], block: usize, what: &'static str) -> Result<()> {
    if !bytes.len().is_multiple_of(block) {
        return Err(Error::Quant {
            format: what,
            what: "GGUF tensor".into(),
            message: format!("{} bytes is not a whole number of {block}-byte blocks", bytes.len()),
        });
    }
    Ok(())
}

/// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K blocks to f32 (ggml's dequantize_row_q4_K).
pub fn dequantize_q4_k(bytes: &[u8]) -> Result<Vec<f32>> {
    check(bytes, Q4K_BYTES, "Q4_K")?;
    let mut out = Vec::with_capacity(bytes.len() / Q4K_BYTES * QK_K);
    for b in bytes.chunks_exact(Q4K_BYTES) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for (pair, q) in qs.chunks_exact(32).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * pair, scales);
            let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
            out.extend(q.iter().map(|v| d * sc1 as f32 * (v & 0xF) as f32 - dmin * m1 as f32));
            out.extend(q.iter().map(|v| d * sc2 as f32 * (v >> 4) as f32 - dmin * m2 as f32));
        }
    }
    Ok(out)
}

/// Q4_K blocks to GGUF q4_1 blocks (8 per Q4_K block): the same nibbles, with
/// each sub-block's scale d·sc and min −dmin·m rounded to f16.
pub fn q4_k_to_q4_1(bytes: &[u8]) -> Result<Vec<u8>> {
    check(bytes, Q4K_BYTES, "Q4_K")?;
    let mut out = Vec::with_capacity(bytes.len() / Q4K_BYTES * 8 * 20);
    for b in bytes.chunks_exact(Q4K_BYTES) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for (pair, q) in qs.chunks_exact(32).enumerate() {
            for (half, shift) in [(0, 0), (1, 4)] {
                let (sc, m) = scale_min_k4(2 * pair + half, scales);
                out.extend_from_slice(&f16::from_f32(d * sc as f32).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(-(dmin * m as f32)).to_le_bytes());
                // q4_1 byte j holds element j (low nibble) and element j + 16 (high).
                out.extend((0..16).map(|j| ((q[j] >> shift) & 0xF) | (((q[j + 16] >> shift) & 0xF) << 4)));
            }
        }
    }
    Ok(out)
}

/// Q6_K blocks to f32 (ggml's dequantize_row_q6_K).
pub fn dequantize_q6_k(bytes: &[u8]) -> Result<Vec<f32>> {
    check(bytes, Q6K_BYTES, "Q6_K")?;
    let mut out = vec![0f32; bytes.len() / Q6K_BYTES * QK_K];
    for (b, y) in bytes.chunks_exact(Q6K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        for n in 0..2 {
            let ql = &b[n * 64..n * 64 + 64];
            let qh = &b[128 + n * 32..128 + n * 32 + 32];
            let sc = &b[192 + n * 8..192 + n * 8 + 8];
            let y = &mut y[n * 128..n * 128 + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, WeightFormat};

    /// One Q4_K block with known scales: sub-block j has scale j + 1 and min j,
    /// and nibble value (l % 16) for both halves.
    fn q4_k_block() -> Vec<u8> {
        let mut b = vec![0u8; Q4K_BYTES];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        // Scales 1..=8 and mins 0..=7 all fit in 4 bits: j < 4 lives in the low
        // 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte j + 4.
        let s = &mut b[4..16];
        for j in 0..4 {
            s[j] = j as u8 + 1;
            s[j + 4] = j as u8;
        }
        for j in 4..8 {
            s[j + 4] = (j as u8 + 1) | ((j as u8) << 4);
        }
        for (l, q) in b[16..].iter_mut().enumerate() {
            *q = (l % 16) as u8 | (((l + 3) % 16) as u8) << 4;
        }
        b
    }

    #[test]
    fn q4_k_dequantizes_like_ggml() {
        let y = dequantize_q4_k(&q4_k_block()).unwrap();
        assert_eq!(y.len(), 256);
        // Element 0: sub-block 0 (scale 1, min 0), nibble 0 -> 0.
        assert_eq!(y[0], 0.0);
        // Element 37: sub-block 1 (high nibbles of bytes 0..32, scale 2, min 1), byte 5 -> (5 + 3) % 16 = 8.
        assert_eq!(y[37], 0.5 * 2.0 * 8.0 - 0.25 * 1.0);
        // Element 200: sub-block 6 (low nibbles of bytes 96..128, scale 7, min 6), byte 104 -> 104 % 16 = 8.
        assert_eq!(y[200], 0.5 * 7.0 * 8.0 - 0.25 * 6.0);
    }

    #[test]
    fn q4_k_to_q4_1_is_exact_when_scales_fit_f16() {
        let block = q4_k_block();
        let exact = dequantize_q4_k(&block).unwrap();
        let converted = dequantize(WeightFormat::Q4_1, &q4_k_to_q4_1(&block).unwrap()).unwrap();
        assert_eq!(exact, converted);
    }

    #[test]
    fn q6_k_dequantizes_like_ggml() {
        let mut b = vec![0u8; Q6K_BYTES];
        b[208..210].copy_from_slice(&f16::from_f32(0.125).to_le_bytes());
        for (i, s) in b[192..208].iter_mut().enumerate() {
            *s = (i as i8 - 8) as u8;
        }
        b[0] = 0x5; // ql: element 0 low nibble 5, element 64 low... high nibble 0
        b[128] = 0b10_01_11_10; // qh for l = 0: q1 hi 2, q2 hi 3, q3 hi 1, q4 hi 2
        let y = dequantize_q6_k(&b).unwrap();
        // q1 = 5 | 2 << 4 = 37 -> 5; scale sc[0] = -8.
        assert_eq!(y[0], 0.125 * -8.0 * 5.0);
        // q2 = 0 | 3 << 4 = 48 -> 16; scale sc[2] = -6.
        assert_eq!(y[32], 0.125 * -6.0 * 16.0);
        // q3 = 0 | 1 << 4 = 16 -> -16; scale sc[4] = -4.
        assert_eq!(y[64], 0.125 * -4.0 * -16.0);
        // Second half, l = 0: everything zero -> q = -32, scale sc[8] = 0.
        assert_eq!(y[128], 0.0);
        assert!(dequantize_q6_k(&b[..100]).is_err());
    }
}
