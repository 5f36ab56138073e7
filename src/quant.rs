//! Weight formats: GGUF-compatible quantize / dequantize on the CPU (the
//! converter and the reference for kernel tests), and the packing of GGUF
//! blocks into the GPU layout the kernels read.
//!
//! GGUF stores a q4_0 block as `{ d: f16, qs: [u8; 16] }` (18 bytes), which
//! leaves the nibbles misaligned for u32 loads. On the GPU a quantized matrix
//! is two arrays instead: the block payloads back to back (16 or 32 bytes, so
//! a block is one or two `vec4<u32>` loads) and the scales back to back. The
//! repacking is lossless: [`from_gpu_layout`] gives the GGUF bytes back.

use half::f16;

use crate::error::{Error, Result};

/// Elements per block of the quantized formats (GGUF's QK4_0 = QK4_1 = QK8_0).
pub const BLOCK: usize = 32;

/// A weight storage format the kernels read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    /// 4-bit, blocks of 32, f16 scale: value = (q - 8) * d.
    Q4_0,
    /// 4-bit, blocks of 32, f16 scale and min: value = q * d + m.
    Q4_1,
    /// 8-bit, blocks of 32, f16 scale: value = q * d.
    Q8_0,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 5] = [Self::F32, Self::F16, Self::Q4_0, Self::Q4_1, Self::Q8_0];

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q8_0 => "q8_0",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// (elements, bytes) of one GGUF block; f32 and f16 have blocks of one.
    pub fn gguf_block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 => (1, 2),
            Self::Q4_0 => (BLOCK, 18),
            Self::Q4_1 => (BLOCK, 20),
            Self::Q8_0 => (BLOCK, 34),
        }
    }

    /// Bytes of `n` elements in GGUF layout (n a multiple of the block).
    pub fn gguf_size(self, n: usize) -> usize {
        let (elems, bytes) = self.gguf_block();
        n / elems * bytes
    }

    /// Bytes per 32 elements in the GPU layout: (payload, scales).
    fn gpu_block(self) -> (usize, usize) {
        match self {
            Self::F32 => (128, 0),
            Self::F16 => (64, 0),
            Self::Q4_0 => (16, 2),
            Self::Q4_1 => (16, 4),
            Self::Q8_0 => (32, 2),
        }
    }

    /// Average bits per weight, for memory estimates.
    pub fn bits_per_weight(self) -> f64 {
        let (payload, scales) = self.gpu_block();
        (payload + scales) as f64 * 8.0 / BLOCK as f64
    }
}

fn check_blocks(format: WeightFormat, what: &str, n: usize) -> Result<()> {
    if !n.is_multiple_of(BLOCK) {
        return Err(Error::Quant {
            format: format.name(),
            what: what.into(),
            message: format!("{n} values is not a multiple of the block size {BLOCK}"),
        });
    }
    Ok(())
}

/// Quantizes `x` into GGUF block bytes, bit-identical to ggml's reference
/// quantizers (`quantize_row_q4_0_ref` and friends).
pub fn quantize(format: WeightFormat, x: &[f32]) -> Result<Vec<u8>> {
    if matches!(format, WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q8_0) {
        check_blocks(format, "quantize", x.len())?;
    }
    let mut out = Vec::with_capacity(format.gguf_size(x.len()));
    match format {
        WeightFormat::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        WeightFormat::F16 => x.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        WeightFormat::Q4_0 => {
            for block in x.chunks_exact(BLOCK) {
                // The value of largest magnitude maps to -8, keeping its sign.
                let mut max = 0.0f32;
                for &v in block {
                    if v.abs() > max.abs() {
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                for j in 0..BLOCK / 2 {
                    let lo = ((block[j] * id + 8.5) as i8).min(15) as u8;
                    let hi = ((block[j + BLOCK / 2] * id + 8.5) as i8).min(15) as u8;
                    out.push(lo | (hi << 4));
                }
            }
        }
        WeightFormat::Q4_1 => {
            for block in x.chunks_exact(BLOCK) {
                let min = block.iter().copied().fold(f32::MAX, f32::min);
                let max = block.iter().copied().fold(-f32::MAX, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                for j in 0..BLOCK / 2 {
                    let lo = (((block[j] - min) * id + 0.5) as i8).min(15) as u8;
                    let hi = (((block[j + BLOCK / 2] - min) * id + 0.5) as i8).min(15) as u8;
                    out.push(lo | (hi << 4));
                }
            }
        }
        WeightFormat::Q8_0 => {
            for block in x.chunks_exact(BLOCK) {
                let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
    }
    Ok(out)
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dequantizes GGUF block bytes back to f32 (the CPU reference of the kernels).
pub fn dequantize(format: WeightFormat, bytes: &[u8]) -> Result<Vec<f32>> {
    let (elems, block_bytes) = format.gguf_block();
    if !bytes.len().is_multiple_of(block_bytes) {
        return Err(Error::Quant {
            format: format.name(),
            what: "dequantize".into(),
            message: format!("{} bytes is not a whole number of {block_bytes}-byte blocks", bytes.len()),
        });
    }
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * elems);
    for b in bytes.chunks_exact(block_bytes) {
        match format {
            WeightFormat::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            WeightFormat::F16 => out.push(f16_at(b, 0)),
            WeightFormat::Q4_0 => {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| ((q & 15) as f32 - 8.0) * d));
                out.extend(qs.iter().map(|q| ((q >> 4) as f32 - 8.0) * d));
            }
            WeightFormat::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| (q & 15) as f32 * d + m));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
            }
            WeightFormat::Q8_0 => {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
    }
    Ok(out)
}

/// A matrix in the layout the kernels read: block payloads, then scales
/// (empty for f32 and f16).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuLayout {
    pub data: Vec<u8>,
    pub scales: Vec<u8>,
}

/// Splits GGUF blocks into the GPU layout. Rows are consecutive, so a row
/// of `cols` values (a multiple of 32) is `cols / 32` consecutive blocks.
pub fn to_gpu_layout(format: WeightFormat, gguf: &[u8]) -> Result<GpuLayout> {
    let (elems, block_bytes) = format.gguf_block();
    if !gguf.len().is_multiple_of(block_bytes) {
        return Err(Error::Quant {
            format: format.name(),
            what: "GPU packing".into(),
            message: format!("{} bytes is not a whole number of {block_bytes}-byte blocks", gguf.len()),
        });
    }
    let header = match format {
        // f32 and f16 are stored as they are (any length).
        WeightFormat::F32 | WeightFormat::F16 => return Ok(GpuLayout { data: gguf.to_vec(), scales: Vec::new() }),
        WeightFormat::Q4_0 | WeightFormat::Q8_0 => 2,
        WeightFormat::Q4_1 => 4,
    };
    let blocks = gguf.len() / block_bytes;
    debug_assert_eq!(elems, BLOCK);
    let mut out = GpuLayout { data: Vec::with_capacity(gguf.len()), scales: Vec::with_capacity(blocks * header + 2) };
    for block in gguf.chunks_exact(block_bytes) {
        out.scales.extend_from_slice(&block[..header]);
        out.data.extend_from_slice(&block[header..]);
    }
    out.scales.resize(out.scales.len().next_multiple_of(4), 0);
    Ok(out)
}

/// The inverse of [`to_gpu_layout`]: GGUF blocks from the GPU layout of `n` values.
pub fn from_gpu_layout(format: WeightFormat, layout: &GpuLayout, n: usize) -> Result<Vec<u8>> {
    let (payload, scales) = gpu_size(format, 1, n);
    if layout.data.len() != payload || layout.scales.len() < scales {
        return Err(Error::Quant {
            format: format.name(),
            what: "GPU unpacking".into(),
            message: format!(
                "layout of {} + {} bytes does not hold {n} values",
                layout.data.len(),
                layout.scales.len()
            ),
        });
    }
    let (block_payload, block_scale) = format.gpu_block();
    if block_scale == 0 {
        return Ok(layout.data.clone());
    }
    check_blocks(format, "GPU unpacking", n)?;
    let mut out = Vec::with_capacity(format.gguf_size(n));
    for b in 0..n / BLOCK {
        out.extend_from_slice(&layout.scales[b * block_scale..(b + 1) * block_scale]);
        out.extend_from_slice(&layout.data[b * block_payload..(b + 1) * block_payload]);
    }
    Ok(out)
}

/// Bytes of a `rows x cols` matrix in the GPU layout: (payload, scales
/// padded to 4). Quantized formats need `rows * cols` to be whole blocks
/// (callers check `cols % 32`); a partial block is rounded up here so that a
/// malformed size never looks valid.
pub fn gpu_size(format: WeightFormat, rows: usize, cols: usize) -> (usize, usize) {
    let n = rows * cols;
    match format {
        WeightFormat::F32 => (n * 4, 0),
        WeightFormat::F16 => (n * 2, 0),
        _ => {
            let (payload, scale) = format.gpu_block();
            let blocks = n.div_ceil(BLOCK);
            (blocks * payload, (blocks * scale).next_multiple_of(4))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn q4_0_matches_ggml_hand_computed_block() {
        // max |x| is -4 (element 0): d = -4 / -8 = 0.5, so q = round-ish(x / 0.5 + 8).
        let mut x = [0.0f32; 32];
        x[0] = -4.0;
        x[1] = 1.0;
        x[16] = 3.75;
        x[17] = -0.26;
        let bytes = quantize(WeightFormat::Q4_0, &x).unwrap();
        assert_eq!(bytes.len(), 18);
        assert_eq!(f16_at(&bytes, 0), 0.5);
        // x0 = -4 / 0.5 = -8 -> 0; x16 = 3.75 / 0.5 = 7.5 -> trunc(16.0) = 16 -> clamped 15.
        assert_eq!(bytes[2], 15 << 4); // low nibble 0, high nibble 15
                                       // x1 = 2 -> 10; x17 = -0.52 -> trunc(7.98) = 7.
        assert_eq!(bytes[3], 10 | (7 << 4));
    }

    #[test]
    fn roundtrip_error_is_within_the_quantizer_bound() {
        let x = pseudo_random(32 * 64, 7);
        for format in WeightFormat::ALL {
            let q = quantize(format, &x).unwrap();
            assert_eq!(q.len(), format.gguf_size(x.len()));
            let y = dequantize(format, &q).unwrap();
            for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                // Worst case of each quantizer, plus f16 rounding of its scale and min.
                let bound = match format {
                    WeightFormat::F32 => 0.0,
                    WeightFormat::F16 => amax / 2048.0,
                    WeightFormat::Q4_0 => amax / 8.0 * 1.01,
                    WeightFormat::Q4_1 => amax / 15.0 * 1.01 + amax / 512.0,
                    WeightFormat::Q8_0 => amax / 254.0 * 1.01 + amax / 1024.0,
                };
                for (i, (a, b2)) in xb.iter().zip(yb).enumerate() {
                    assert!((a - b2).abs() <= bound + 1e-7, "{} block {b} [{i}]: {a} -> {b2}", format.name());
                }
            }
        }
    }

    #[test]
    fn gpu_layout_roundtrip_is_lossless() {
        let x = pseudo_random(32 * 33, 11);
        for format in WeightFormat::ALL {
            let gguf = quantize(format, &x).unwrap();
            let layout = to_gpu_layout(format, &gguf).unwrap();
            assert_eq!((layout.data.len(), layout.scales.len()), gpu_size(format, 33, 32));
            assert_eq!(from_gpu_layout(format, &layout, x.len()).unwrap(), gguf, "{}", format.name());
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(quantize(WeightFormat::Q4_0, &[0.0; 31]).is_err());
        assert!(dequantize(WeightFormat::Q8_0, &[0; 33]).is_err());
        assert!(to_gpu_layout(WeightFormat::Q4_1, &[0; 19]).is_err());
    }
}
