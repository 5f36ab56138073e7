//! Matrix products and embedding lookups on the CPU over the package's
//! kernel layout (`quant::to_gpu_layout`: block payloads in `data`, their f16
//! scales in `scales`). Quantized weights meet activations quantized to 16
//! bits once per input row (blocks of 32 with an f32 scale, like llama.cpp's
//! q8_0/q8_1 at twice the bits: `simd.rs` says why): integer dot products per
//! block, f32 accumulation across blocks. f32 and f16 weights take f32
//! activations as they are.
//!
//! Work is split over the threads by rows of W; each task computes its rows
//! for every token (a weight row stays in L1 across the tokens of a prefill
//! chunk, and each weight block is unpacked once per group of
//! [`TOKEN_GROUP`] tokens) into its own slice, scattered into y afterwards;
//! with one token (decode) the slices are y's own.

use super::simd::{self, Blocks};
use super::team;
use crate::error::{Error, Result};
use crate::gpu::OutputSlice;
use crate::quant::{GpuLayout, WeightFormat, BLOCK};

/// W [rows, cols] in the kernel layout.
#[derive(Debug)]
pub struct Matrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
    scales: Vec<u8>,
}

/// Activations quantized to 16 bits: per token, blocks of 32 values with
/// their scale d and d · Σq (what q4_1's minimum multiplies). Tokens lie in
/// groups of [`TOKEN_GROUP`] (the rest singly, as decode's one token): inside
/// a group, block b of every token is side by side, so a weight block meets
/// the group's tokens at one address. See [`Quantized::at`].
struct Quantized {
    blocks: Vec<QuantizedBlock>, // [T · blocks per token]
    per_token: usize,
    tokens: usize,
}

/// 32 values q with their scale d and d · Σq, side by side (one bounds check
/// reaches all three).
#[derive(Clone, Copy, Default)]
struct QuantizedBlock {
    q: [i16; BLOCK],
    d: f32,
    d_sum: f32,
}

impl Quantized {
    /// Where block b of token t lies: its group (first token s, n tokens)
    /// starts at s · per_token, and holds block b of its tokens at b · n.
    fn at(&self, t: usize, b: usize) -> usize {
        let whole = self.tokens / TOKEN_GROUP * TOKEN_GROUP;
        let (s, n) = if t < whole { (t / TOKEN_GROUP * TOKEN_GROUP, TOKEN_GROUP) } else { (t, 1) };
        s * self.per_token + b * n + (t - s)
    }
}

/// Rows of y written together by `linear`'s scatter.
const SCATTER_ROWS: usize = 16;

/// Weights per task at least: smaller tasks cost more to hand out than they save.
const TASK_WEIGHTS: usize = 1 << 14;

impl Matrix {
    pub(super) fn new(format: WeightFormat, rows: usize, cols: usize, layout: GpuLayout) -> Result<Matrix> {
        let quantized = !matches!(format, WeightFormat::F32 | WeightFormat::F16);
        if rows == 0 || cols == 0 || (quantized && !cols.is_multiple_of(BLOCK)) {
            return Err(Error::Shape {
                op: "matrix",
                message: format!("{} [{rows}, {cols}] needs rows and whole {BLOCK}-column blocks", format.name()),
            });
        }
        // The loader splits one read into payload and scales, which leaves
        // the payload's allocation a scale array too long (11 % of q4_0):
        // give it back, the model is held once.
        let (mut data, mut scales) = (layout.data, layout.scales);
        data.shrink_to_fit();
        scales.shrink_to_fit();
        Ok(Matrix { format, rows, cols, data, scales })
    }

    /// Bytes held (payload and scales).
    pub fn bytes(&self) -> u64 {
        (self.data.len() + self.scales.len()) as u64
    }

    /// y[t, out.offset + r] = Σ_c x[t, c] W[r, c] (+ bias[r]) for T tokens.
    pub fn linear(
        &self,
        x: &[f32],
        y: &mut [f32],
        tokens: usize,
        out: OutputSlice,
        bias: Option<&[f32]>,
    ) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        let quantized = match self.format {
            WeightFormat::F32 | WeightFormat::F16 => None,
            _ => Some(quantize_rows(&x[..tokens * cols], cols)),
        };
        let rows_per_task = (TASK_WEIGHTS / cols).clamp(1, rows);
        let add_bias = |first: usize, values: &mut [f32]| {
            if let Some(bias) = bias {
                values.iter_mut().zip(&bias[first..]).for_each(|(y, b)| *y += b);
            }
        };
        if tokens == 1 {
            // One token: the tasks' rows are stretches of y itself.
            let len = y.len();
            let y = y.get_mut(out.offset..out.offset + rows).ok_or_else(|| Error::Shape {
                op: "linear",
                message: format!("{rows} outputs at column {} do not fit y of {len}", out.offset),
            })?;
            team::for_each_chunk(y, rows_per_task, |task, chunk| {
                let first = task * rows_per_task;
                compute_rows(self, first, chunk, x, quantized.as_ref(), 1);
                add_bias(first, chunk);
            });
            return Ok(());
        }
        let mut results = vec![0f32; rows * tokens]; // [rows, T]
        team::for_each_chunk(&mut results, rows_per_task * tokens, |task, chunk| {
            let first = task * rows_per_task;
            compute_rows(self, first, chunk, x, quantized.as_ref(), tokens);
        });
        // [rows, T] into y's rows, SCATTER_ROWS at a time: each token's
        // stretch of y is written whole while the rows' streams are read.
        for first in (0..rows).step_by(SCATTER_ROWS) {
            let n = SCATTER_ROWS.min(rows - first);
            for t in 0..tokens {
                let at = t * out.stride + out.offset + first;
                for (i, y) in y[at..at + n].iter_mut().enumerate() {
                    let r = first + i;
                    *y = results[r * tokens + t] + bias.map_or(0.0, |b| b[r]);
                }
            }
        }
        Ok(())
    }

    /// out[t] = row ids[t] - first (ids outside this chunk's rows are another chunk's).
    pub fn embedding(&self, ids: &[u32], first: usize, out: &mut [f32]) -> Result<()> {
        let cols = self.cols;
        for (t, &id) in ids.iter().enumerate() {
            let Some(row) = (id as usize).checked_sub(first).filter(|&r| r < self.rows) else { continue };
            self.dequantize_row(row, &mut out[t * cols..(t + 1) * cols]);
        }
        Ok(())
    }

    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols;
        match self.format {
            WeightFormat::F32 => {
                let row = &self.data[r * cols * 4..(r + 1) * cols * 4];
                out.iter_mut()
                    .zip(row.chunks_exact(4))
                    .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
            WeightFormat::F16 => {
                let row = &self.data[r * cols * 2..(r + 1) * cols * 2];
                out.iter_mut().zip(row.chunks_exact(2)).for_each(|(o, b)| *o = half_at(b, 0));
            }
            WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
                for (b, block) in out.chunks_exact_mut(BLOCK).enumerate() {
                    let i = r * (cols / BLOCK) + b;
                    let (d, m) = self.q4_scale(i);
                    let nibbles = &self.data[i * 16..i * 16 + 16];
                    for j in 0..16 {
                        block[j] = ((nibbles[j] & 15) as f32 - 8.0) * d + m;
                        block[j + 16] = ((nibbles[j] >> 4) as f32 - 8.0) * d + m;
                    }
                }
            }
            WeightFormat::Q8_0 => {
                for (b, block) in out.chunks_exact_mut(BLOCK).enumerate() {
                    let i = r * (cols / BLOCK) + b;
                    let d = half_at(&self.scales, 2 * i);
                    for (o, &q) in block.iter_mut().zip(&self.data[i * 32..i * 32 + 32]) {
                        *o = q as i8 as f32 * d;
                    }
                }
            }
        }
    }

    /// Blocks first.. (as many as `d` holds): their scales d, and for q4_1
    /// the m of [`Matrix::q4_scale`] (q4_0 and q8_0 leave `m` alone).
    #[inline(always)]
    fn block_scales(&self, first: usize, d: &mut [f32], m: &mut [f32]) {
        let n = d.len();
        match self.format {
            WeightFormat::Q4_1 => {
                let pairs = self.scales.get(4 * first..4 * (first + n)).unwrap_or(&[]);
                for ((d, m), dm) in d.iter_mut().zip(m.iter_mut()).zip(pairs.chunks_exact(4)) {
                    let dm = u32::from_le_bytes([dm[0], dm[1], dm[2], dm[3]]);
                    *d = simd::f16_to_f32(dm as u16);
                    *m = simd::f16_to_f32((dm >> 16) as u16) + 8.0 * *d;
                }
            }
            _ => {
                let halves = self.scales.get(2 * first..2 * (first + n)).unwrap_or(&[]);
                for (d, h) in d.iter_mut().zip(halves.chunks_exact(2)) {
                    *d = simd::f16_to_f32(u16::from_le_bytes([h[0], h[1]]));
                }
            }
        }
    }

    /// Block i's (d, m) with values (nibble - 8) d + m: q4_0 has m = 0; q4_1's
    /// nibble d + min is (nibble - 8) d + (min + 8 d).
    #[inline(always)]
    fn q4_scale(&self, i: usize) -> (f32, f32) {
        match self.format {
            WeightFormat::Q4_1 => {
                let dm: [u8; 4] = self.scales.get(4 * i..4 * i + 4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]);
                let d = half_at(&dm, 0);
                (d, half_at(&dm, 2) + 8.0 * d)
            }
            _ => (half_at(&self.scales, 2 * i), 0.0),
        }
    }
}

#[inline(always)]
fn half_at(bytes: &[u8], at: usize) -> f32 {
    // One 16-bit load (and one bounds check); out of range reads as 0.
    let pair: [u8; 2] = bytes.get(at..at + 2).and_then(|b| b.try_into().ok()).unwrap_or([0; 2]);
    simd::f16_to_f32(u16::from_le_bytes(pair))
}

/// Tokens whose accumulators a row carries at once while prefilling: each
/// weight block is unpacked once for all of them.
const TOKEN_GROUP: usize = 8;

/// Row r of a quantized W against every token's activations, into `out` [T]:
/// groups of [`TOKEN_GROUP`] tokens, then the rest one by one.
#[inline(always)]
fn quantized_row<B: Blocks>(w: &Matrix, r: usize, xq: &Quantized, scales: &mut BlockScales, out: &mut [f32]) {
    let whole = out.len() / TOKEN_GROUP * TOKEN_GROUP;
    let q4_1 = w.format == WeightFormat::Q4_1;
    for first in (0..whole).step_by(TOKEN_GROUP) {
        let out = &mut out[first..first + TOKEN_GROUP];
        match q4_1 {
            true => quantized_tokens::<B, TOKEN_GROUP, true>(w, r, xq, first, scales, out),
            false => quantized_tokens::<B, TOKEN_GROUP, false>(w, r, xq, first, scales, out),
        }
    }
    for t in whole..out.len() {
        match q4_1 {
            true => quantized_tokens::<B, 1, true>(w, r, xq, t, scales, &mut out[t..t + 1]),
            false => quantized_tokens::<B, 1, false>(w, r, xq, t, scales, &mut out[t..t + 1]),
        }
    }
}

/// Blocks whose scales are converted to f32 at a time, before their dot
/// products: the f16 conversions run as one loop LLVM vectorises instead of
/// scalar work inside every block.
const SCALE_CHUNK: usize = 64;

/// A chunk's block scales d and q4_1 minimums m, as f32 (one per task: zeroing
/// them per row cost more than a small row's dot products in wasm).
type BlockScales = ([f32; SCALE_CHUNK], [f32; SCALE_CHUNK]);

/// Row r against the G tokens of the group that starts at `first`: out [G].
/// `Q4_1`: the format has minimums (a constant, so the other formats' loop
/// has no branch for them).
#[inline(always)]
fn quantized_tokens<B: Blocks, const G: usize, const Q4_1: bool>(
    w: &Matrix,
    r: usize,
    xq: &Quantized,
    first: usize,
    (d, m): &mut BlockScales,
    out: &mut [f32],
) {
    let blocks = w.cols / BLOCK;
    let group = first * blocks; // the group's block b lies at group + b · G
    let mut acc = [B::zero(); G];
    let mut minimum = [0f32; G];
    for chunk in (0..blocks).step_by(SCALE_CHUNK) {
        let n = SCALE_CHUNK.min(blocks - chunk);
        let first_block = r * blocks + chunk;
        w.block_scales(first_block, &mut d[..n], &mut m[..n]);
        for k in 0..n {
            let (b, i) = (chunk + k, first_block + k);
            let weights = match w.format {
                WeightFormat::Q8_0 => B::unpack_q8(w.data[i * 32..i * 32 + 32].try_into().unwrap_or(&[0; 32])),
                _ => B::unpack_q4(w.data[i * 16..i * 16 + 16].try_into().unwrap_or(&[8; 16])),
            };
            let at = group + b * G;
            let Some(x) = xq.blocks.get(at..at + G).and_then(|x| <&[QuantizedBlock; G]>::try_from(x).ok()) else {
                continue; // never: `linear` quantized every token's blocks
            };
            for t in 0..G {
                // As llama.cpp: d_w d_x Σ w q, plus q4_1's minimum m meeting Σx (d_x Σq).
                acc[t] = B::dot_scaled(acc[t], &weights, &x[t].q, d[k] * x[t].d);
                if Q4_1 {
                    minimum[t] += m[k] * x[t].d_sum;
                }
            }
        }
    }
    for t in 0..G.min(out.len()) {
        out[t] = B::total(acc[t]) + minimum[t];
    }
}

/// x [T, cols] as 16-bit blocks: q = round(x / d), d = max |x| / 32767, in
/// the grouped layout of [`Quantized`].
fn quantize_rows(x: &[f32], cols: usize) -> Quantized {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the feature this copy was compiled for.
        return unsafe { quantize_rows_avx2(x, cols) };
    }
    quantize_rows_inline(x, cols)
}

/// Compiled with AVX2 (and so SSE4.1's `roundps`, not a call to `truncf`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_rows_avx2(x: &[f32], cols: usize) -> Quantized {
    quantize_rows_inline(x, cols)
}

#[inline(always)]
fn quantize_rows_inline(x: &[f32], cols: usize) -> Quantized {
    debug_assert!(cols.is_multiple_of(BLOCK));
    let blocks = vec![QuantizedBlock::default(); x.len() / BLOCK];
    let mut out = Quantized { blocks, per_token: cols / BLOCK, tokens: x.len() / cols };
    for (t, row) in x.chunks_exact(cols).enumerate() {
        for (b, values) in row.chunks_exact(BLOCK).enumerate() {
            let max = max_abs(values.try_into().unwrap_or(&[0.0; BLOCK]));
            let d = max / 32767.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let at = out.at(t, b);
            let block = &mut out.blocks[at];
            for (q, v) in block.q.iter_mut().zip(values) {
                *q = round_half_away(v * inv) as i16;
            }
            let sum: i32 = block.q.iter().map(|&q| q as i32).sum();
            block.d = d;
            block.d_sum = d * sum as f32;
        }
    }
    out
}

/// `f32::round` (halves away from zero) from `trunc`, one instruction
/// (f32.trunc, roundps) where `round` is a libm call: x - trunc(x) is exact.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let whole = x.trunc();
    let step: f32 = if (x - whole).abs() >= 0.5 { 1.0 } else { 0.0 };
    whole + step.copysign(x) // -0.0 stays -0.0
}

/// max |v| over a block, in eight lanes (f32::max's NaN rule keeps a
/// plain fold from vectorising).
#[inline(always)]
fn max_abs(values: &[f32; BLOCK]) -> f32 {
    let mut lanes = [0f32; 8];
    for chunk in values.chunks_exact(8) {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            let v = v.abs();
            *lane = if v > *lane { v } else { *lane };
        }
    }
    lanes.into_iter().fold(0.0, |m, v| if v > m { v } else { m })
}

/// Rows first.. of W for every token into `out` [rows of this task, T].
fn compute_rows(w: &Matrix, first: usize, out: &mut [f32], x: &[f32], xq: Option<&Quantized>, tokens: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features this copy was compiled for.
        return unsafe { compute_rows_avx2(w, first, out, x, xq, tokens) };
    }
    compute_rows_inline::<simd::Portable>(w, first, out, x, xq, tokens)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn compute_rows_avx2(
    w: &Matrix,
    first: usize,
    out: &mut [f32],
    x: &[f32],
    xq: Option<&Quantized>,
    tokens: usize,
) {
    compute_rows_inline::<simd::Avx2>(w, first, out, x, xq, tokens)
}

#[inline(always)]
fn compute_rows_inline<B: Blocks>(
    w: &Matrix,
    first: usize,
    out: &mut [f32],
    x: &[f32],
    xq: Option<&Quantized>,
    tokens: usize,
) {
    let cols = w.cols;
    let mut row_f32 = match w.format {
        WeightFormat::F32 | WeightFormat::F16 => vec![0f32; cols],
        _ => Vec::new(),
    };
    let mut scales: BlockScales = ([0.0; SCALE_CHUNK], [0.0; SCALE_CHUNK]);
    for (i, per_token) in out.chunks_exact_mut(tokens).enumerate() {
        let r = first + i;
        match (w.format, xq) {
            (WeightFormat::F32, _) => {
                // The payload is read in place when aligned (it is, from the allocator).
                let bytes = &w.data[r * cols * 4..(r + 1) * cols * 4];
                let row: &[f32] = match bytemuck::try_cast_slice(bytes) {
                    Ok(row) => row,
                    Err(_) => {
                        w.dequantize_row(r, &mut row_f32);
                        &row_f32
                    }
                };
                for (t, y) in per_token.iter_mut().enumerate() {
                    *y = simd::dot_f32(row, &x[t * cols..(t + 1) * cols]);
                }
            }
            (WeightFormat::F16, _) => {
                w.dequantize_row(r, &mut row_f32);
                for (t, y) in per_token.iter_mut().enumerate() {
                    *y = simd::dot_f32(&row_f32, &x[t * cols..(t + 1) * cols]);
                }
            }
            (WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q8_0, Some(xq)) => {
                quantized_row::<B>(w, r, xq, &mut scales, per_token);
            }
            // Quantized formats always come with quantized activations (`linear`).
            (_, None) => per_token.fill(f32::NAN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantizer's rounding is `f32::round` exactly: halves, their
    /// neighbours, signs, and the largest activations a block holds.
    #[test]
    fn round_half_away_is_f32_round() {
        let mut values =
            vec![0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 32766.5, -32767.0, 32767.0, 0.49999997, -0.49999997];
        for i in 0..200_000 {
            let x = (i as f32 - 100_000.0) * 0.3276;
            values.extend([x, f32::from_bits(x.to_bits() + 1), (x * 2.0).round() / 2.0]);
        }
        for x in values {
            assert_eq!(round_half_away(x).to_bits(), x.round().to_bits(), "{x}");
        }
    }
}
