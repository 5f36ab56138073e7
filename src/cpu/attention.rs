//! RoPE, the KV-cache append and attention on the CPU, over the same cache
//! layouts as the WGSL kernels (`kv_f16.wgsl`: f16 pairs in words;
//! `kv_q8.wgsl`: kv_dim snorm8 bytes then one f32 scale per 32 values;
//! f32 words), so that sizes and accounting are the backend's only
//! difference. Attention runs one (token, head) per task.

use super::team;
use half::f16;

use super::simd;
use crate::error::Result;
use crate::gpu::{AttentionShape, KvAppendShape, KvFormat, RopeShape};

/// NeoX-style rotation in place of the first rot_dim dims of each head, the
/// angle (pos + t) · inv_freq rounded to f32 as in HF (rope.wgsl).
pub fn rope(pos: usize, inv_freq: &[f32], x: &mut [f32], s: &RopeShape) {
    let half = s.rot_dim / 2;
    for t in 0..s.tokens {
        let position = (pos + t) as f32;
        for k in 0..half {
            let (sin, cos) = (position * inv_freq[k]).sin_cos();
            let (sin, cos) = (sin * s.attn_factor, cos * s.attn_factor);
            for h in 0..s.heads {
                let base = t * s.row_stride + s.offset + h * s.head_dim;
                let (x1, x2) = (x[base + k], x[base + k + half]);
                x[base + k] = x1 * cos - x2 * sin;
                x[base + k + half] = x2 * cos + x1 * sin;
            }
        }
    }
}

/// Bytes of one cache row (a position's K or V), and where its scales start.
fn row_layout(format: KvFormat, kv_dim: usize) -> usize {
    format.row_bytes(kv_dim)
}

/// Writes tokens' values at `s.src_offset` of src's rows into slots
/// (pos + t) % slots of `cache` (the K, or with the offset moved, the V of kv_append).
pub fn kv_append(pos: usize, src: &[f32], cache: &mut [u32], s: &KvAppendShape) {
    let row_bytes = row_layout(s.format, s.kv_dim);
    for t in 0..s.tokens {
        let values = &src[t * s.src_stride + s.src_offset..][..s.kv_dim];
        let slot = (pos + t) % s.slots;
        match s.format {
            KvFormat::F32 => {
                let cache: &mut [f32] = bytemuck::cast_slice_mut(cache);
                cache[slot * s.kv_dim..(slot + 1) * s.kv_dim].copy_from_slice(values);
            }
            KvFormat::F16 => {
                let cache: &mut [u16] = bytemuck::cast_slice_mut(cache);
                for (c, v) in cache[slot * s.kv_dim..(slot + 1) * s.kv_dim].iter_mut().zip(values) {
                    *c = f16::from_f32(*v).to_bits();
                }
            }
            KvFormat::Q8 => {
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(cache);
                let row = &mut bytes[slot * row_bytes..(slot + 1) * row_bytes];
                let (q, scales) = row.split_at_mut(s.kv_dim);
                for (b, block) in values.chunks_exact(KvFormat::Q8_BLOCK).enumerate() {
                    let scale = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    for (j, v) in block.iter().enumerate() {
                        // pack4x8snorm: floor(0.5 + 127 clamp(v, -1, 1)).
                        q[b * KvFormat::Q8_BLOCK + j] = (0.5 + 127.0 * (v * inv).clamp(-1.0, 1.0)).floor() as i8 as u8;
                    }
                    scales[4 * b..4 * b + 4].copy_from_slice(&scale.to_le_bytes());
                }
            }
        }
    }
}

/// One head's values of one cache row, as f32, into `out` [head_dim].
fn load_head(cache: &[u32], format: KvFormat, kv_dim: usize, slot: usize, first: usize, out: &mut [f32]) {
    let d = out.len();
    match format {
        KvFormat::F32 => {
            let cache: &[f32] = bytemuck::cast_slice(cache);
            out.copy_from_slice(&cache[slot * kv_dim + first..][..d]);
        }
        KvFormat::F16 => {
            let cache: &[u16] = bytemuck::cast_slice(cache);
            for (o, &h) in out.iter_mut().zip(&cache[slot * kv_dim + first..][..d]) {
                *o = simd::f16_to_f32(h);
            }
        }
        KvFormat::Q8 => {
            let bytes: &[u8] = bytemuck::cast_slice(cache);
            let row = &bytes[slot * row_layout(format, kv_dim)..];
            for (block, chunk) in out.chunks_mut(KvFormat::Q8_BLOCK).enumerate() {
                let at = kv_dim + 4 * ((first / KvFormat::Q8_BLOCK) + block);
                let scale = f32::from_le_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
                let q = &row[first + block * KvFormat::Q8_BLOCK..];
                for (o, &b) in chunk.iter_mut().zip(q) {
                    // unpack4x8snorm: max(q / 127, -1).
                    *o = (b as i8 as f32 / 127.0).max(-1.0) * scale;
                }
            }
        }
    }
}

/// The largest f32 copy of a cache a prefill chunk makes (floats, K and V).
const DEQUANTIZED_FLOATS: usize = 8 << 20;

/// A cache read as f32 rows: the cache itself (f32), a copy made once per
/// prefill chunk (f16 and q8: otherwise each of T × heads tasks would convert
/// the keys it sees again, a fifth of a long prefill), or row by row (decode,
/// and caches too large to copy).
enum Rows<'a> {
    Cache(&'a [u32]),
    Copied(Vec<f32>),
}

impl<'a> Rows<'a> {
    /// `filled`: the slots written so far (the copy skips the rest).
    fn new(cache: &'a [u32], format: KvFormat, kv_dim: usize, filled: usize, tokens: usize) -> Rows<'a> {
        if tokens == 1 || format == KvFormat::F32 || 2 * filled * kv_dim > DEQUANTIZED_FLOATS {
            return Rows::Cache(cache);
        }
        let mut copy = vec![0f32; filled * kv_dim];
        team::for_each_chunk(&mut copy, kv_dim, |slot, row| load_head(cache, format, kv_dim, slot, 0, row));
        Rows::Copied(copy)
    }

    /// Head values `first..first + out.len()` of `slot`: borrowed when they
    /// are f32 already, else converted into `out`.
    fn head<'b>(&'b self, format: KvFormat, kv_dim: usize, slot: usize, first: usize, out: &'b mut [f32]) -> &'b [f32] {
        let d = out.len();
        match self {
            Rows::Copied(copy) => &copy[slot * kv_dim + first..][..d],
            Rows::Cache(cache) if format == KvFormat::F32 => {
                &bytemuck::cast_slice::<u32, f32>(cache)[slot * kv_dim + first..][..d]
            }
            Rows::Cache(cache) => {
                load_head(cache, format, kv_dim, slot, first, out);
                out
            }
        }
    }
}

/// out [T, heads head_dim] = softmax(q k^T · scale) v for each query token
/// at pos + t over the keys its mask lets it see (causal, the last `window`,
/// or Phi-3-small's block-sparse pattern), key j in slot j % slots; query
/// head h reads KV head h / group.
pub fn attention(pos: usize, q: &[f32], k: &[u32], v: &[u32], out: &mut [f32], s: &AttentionShape) -> Result<()> {
    let (d, kv_dim) = (s.head_dim, s.kv_heads * s.head_dim);
    let width = s.heads * d;
    let filled = (pos + s.tokens).min(s.slots);
    let (keys, values) =
        (Rows::new(k, s.kv_format, kv_dim, filled, s.tokens), Rows::new(v, s.kv_format, kv_dim, filled, s.tokens));
    team::for_each_chunk(&mut out[..s.tokens * width], d, |i, out| {
        let task = Task { pos, q, keys: &keys, values: &values, s };
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature this copy was compiled for.
            return unsafe { attend_avx2(&task, i, out) };
        }
        attend(&task, i, out);
    });
    Ok(())
}

/// What every (token, head) task of `attention` reads.
struct Task<'a> {
    pos: usize,
    q: &'a [f32],
    keys: &'a Rows<'a>,
    values: &'a Rows<'a>,
    s: &'a AttentionShape,
}

/// The same task compiled with AVX2 (the f32 operations are the same).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(task: &Task, i: usize, out: &mut [f32]) {
    attend(task, i, out)
}

/// Task i = (token t, head h): out [head_dim].
#[inline(always)]
fn attend(&Task { pos, q, keys, values, s }: &Task, i: usize, out: &mut [f32]) {
    let (d, kv_dim) = (s.head_dim, s.kv_heads * s.head_dim);
    let group = s.heads / s.kv_heads.max(1);
    let (t, h) = (i / s.heads, i % s.heads);
    let p = pos + t;
    let first_key = if s.window > 0 { (p + 1).saturating_sub(s.window) } else { 0 };
    let query = &q[t * s.q_stride + h * d..][..d];
    let head_at = (h / group) * d;
    // Block-sparse (Phi-3-small): the keys of this head's stripes and local blocks only.
    let seen = (first_key..=p).filter(|&j| s.sparse.as_ref().is_none_or(|b| b.sees(h, p, j)));
    let mut buffer = vec![0f32; d];
    let mut scores: Vec<f32> = seen
        .clone()
        .map(|j| simd::dot_f32(query, keys.head(s.kv_format, kv_dim, j % s.slots, head_at, &mut buffer)) * s.scale)
        .collect();
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f32;
    scores.iter_mut().for_each(|x| {
        *x = (*x - max).exp();
        sum += *x;
    });
    out.fill(0.0);
    for (j, w) in seen.zip(&scores) {
        let value = values.head(s.kv_format, kv_dim, j % s.slots, head_at, &mut buffer);
        out.iter_mut().zip(value.iter()).for_each(|(o, v)| *o += w * v);
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

/// Bidirectional attention of each token over its sequence [start, end)
/// (`segments` holds (start, end) word pairs), q, k and v side by side in
/// qkv [T, 3 heads head_dim] (encoder_attention.wgsl).
pub fn encoder_attention(qkv: &[f32], segments: &[u32], out: &mut [f32], tokens: usize, heads: usize, d: usize) {
    let width = heads * d;
    let stride = 3 * width;
    let scale = 1.0 / (d as f32).sqrt();
    team::for_each_chunk(&mut out[..tokens * width], d, |i, out| {
        let (t, h) = (i / heads, i % heads);
        let (start, end) = (segments[2 * t] as usize, segments[2 * t + 1] as usize);
        let query = &qkv[t * stride + h * d..][..d];
        let mut scores: Vec<f32> =
            (start..end).map(|j| simd::dot_f32(query, &qkv[j * stride + width + h * d..][..d]) * scale).collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        scores.iter_mut().for_each(|x| {
            *x = (*x - max).exp();
            sum += *x;
        });
        out.fill(0.0);
        for (j, w) in (start..end).zip(&scores) {
            let value = &qkv[j * stride + 2 * width + h * d..][..d];
            out.iter_mut().zip(value).for_each(|(o, v)| *o += w * v);
        }
        out.iter_mut().for_each(|o| *o /= sum.max(f32::MIN_POSITIVE));
    });
}
