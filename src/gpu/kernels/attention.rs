//! Attention and what feeds it: RoPE, appending to the KV cache, causal
//! attention over the cache (split pass + combine), and the encoders'
//! bidirectional attention within packed sequences.

use bytemuck::{Pod, Zeroable};

use super::{need, u32_of, Kernels, Variant};
use super::{ATTENTION, ATTENTION_COMBINE, ENCODER_ATTENTION, KV_APPEND_F16, KV_APPEND_F32, KV_APPEND_Q8, ROPE};
use crate::error::{ensure_shape, Result};
use crate::gpu::shapes::{AttentionScratch, AttentionShape, KvAppendShape, KvFormat, RopeShape};
use crate::gpu::Dispatch;

/// rope.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    rot_dim: u32,
    row_stride: u32,
    offset: u32,
    attn_factor: f32,
    _pad: u32,
}

/// kv_append_params.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KvAppendParams {
    tokens: u32,
    kv_dim: u32,
    src_stride: u32,
    src_offset: u32,
    slots: u32,
    _pad: [u32; 3],
}

/// attention.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    q_stride: u32,
    window: u32,
    splits: u32,
    scale: f32,
    slots: u32,
    block: u32,
    local_blocks: u32,
    vert_stride: u32,
    head_step: u32,
    _pad: [u32; 3],
}

/// attention_combine.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionCombineParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    splits: u32,
}

/// encoder_attention.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EncoderAttentionParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
}

impl Kernels {
    /// RoPE in place on `x`; token t is at position `step.pos + t`.
    pub fn rope(
        &self,
        step: &wgpu::Buffer,
        inv_freq: &wgpu::Buffer,
        x: &wgpu::Buffer,
        s: &RopeShape,
    ) -> Result<Dispatch> {
        ensure_shape(s.rot_dim.is_multiple_of(2) && s.rot_dim <= s.head_dim && s.rot_dim > 0, "rope", || {
            format!("rotary dim {} must be even, positive and <= head_dim {}", s.rot_dim, s.head_dim)
        })?;
        ensure_shape(s.offset + s.heads * s.head_dim <= s.row_stride, "rope", || {
            format!("{} heads of {} at offset {} overflow rows of {}", s.heads, s.head_dim, s.offset, s.row_stride)
        })?;
        need("rope", "inv_freq", inv_freq, s.rot_dim / 2 * 4)?;
        need("rope", "x", x, s.tokens * s.row_stride * 4)?;
        let params = RopeParams {
            tokens: u32_of("rope", "tokens", s.tokens)?,
            heads: u32_of("rope", "heads", s.heads)?,
            head_dim: u32_of("rope", "head_dim", s.head_dim)?,
            rot_dim: u32_of("rope", "rot_dim", s.rot_dim)?,
            row_stride: u32_of("rope", "row_stride", s.row_stride)?,
            offset: u32_of("rope", "offset", s.offset)?,
            attn_factor: s.attn_factor,
            _pad: 0,
        };
        let groups = self.grid_for(&ROPE, s.tokens * s.heads * s.rot_dim / 2);
        let buffers = [(1, step), (2, inv_freq), (3, x)];
        Ok(self.dispatch(&ROPE, Variant::default(), &params, &buffers, vec![], groups))
    }

    /// Appends T tokens' keys and values from a fused [Q | K | V] src to a
    /// layer's K and V caches, in one dispatch.
    pub fn kv_append(
        &self,
        step: &wgpu::Buffer,
        src: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        s: &KvAppendShape,
    ) -> Result<Dispatch> {
        ensure_shape(s.format.supports(s.kv_dim), "kv_append", || {
            format!("a {} KV cache cannot hold rows of {} values", s.format.name(), s.kv_dim)
        })?;
        ensure_shape(s.src_offset + 2 * s.kv_dim <= s.src_stride, "kv_append", || {
            format!("K and V of {} values at offset {} must fit rows of {}", s.kv_dim, s.src_offset, s.src_stride)
        })?;
        need("kv_append", "src", src, s.tokens * s.src_stride * 4)?;
        ensure_shape(s.tokens <= s.slots, "kv_append", || {
            format!("{} tokens would overwrite each other in a cache of {} slots", s.tokens, s.slots)
        })?;
        need("kv_append", "k_cache", k_cache, s.slots * s.format.row_bytes(s.kv_dim))?;
        need("kv_append", "v_cache", v_cache, s.slots * s.format.row_bytes(s.kv_dim))?;
        let params = KvAppendParams {
            tokens: u32_of("kv_append", "tokens", s.tokens)?,
            kv_dim: u32_of("kv_append", "kv_dim", s.kv_dim)?,
            src_stride: u32_of("kv_append", "src_stride", s.src_stride)?,
            src_offset: u32_of("kv_append", "src_offset", s.src_offset)?,
            slots: u32_of("kv_append", "slots", s.slots)?,
            _pad: [0; 3],
        };
        // One invocation per f16 pair, per block of 32 values, or per value;
        // z = 0 appends K, z = 1 V.
        let (shader, threads) = match s.format {
            KvFormat::F16 => (&KV_APPEND_F16, s.tokens * s.kv_dim / 2),
            KvFormat::Q8 => (&KV_APPEND_Q8, s.tokens * s.kv_dim / KvFormat::Q8_BLOCK),
            KvFormat::F32 => (&KV_APPEND_F32, s.tokens * s.kv_dim),
        };
        let [x, y, _] = self.grid_for(shader, threads);
        let buffers = [(1, step), (2, src), (3, k_cache), (4, v_cache)];
        Ok(self.dispatch(shader, Variant::default(), &params, &buffers, vec![], [x, y, 2]))
    }

    /// out [T, heads * head_dim] = causal softmax(q k^T * scale) v over the
    /// caches, as two dispatches: the split pass and the combine pass.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        step: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        scratch: &AttentionScratch,
        out: &wgpu::Buffer,
        s: &AttentionShape,
    ) -> Result<[Dispatch; 2]> {
        let wg = ATTENTION.wg; // threads per workgroup, 4 dims each
        ensure_shape(s.head_dim.is_multiple_of(4) && s.head_dim > 0 && s.head_dim <= 4 * wg, "attention", || {
            format!("head_dim {} must be a multiple of 4 and <= {}", s.head_dim, 4 * wg)
        })?;
        ensure_shape(s.kv_format.supports(s.kv_heads * s.head_dim), "attention", || {
            format!("a {} KV cache cannot hold rows of {} values", s.kv_format.name(), s.kv_heads * s.head_dim)
        })?;
        // kv_q8.wgsl reads each head's keys in whole blocks.
        ensure_shape(
            s.kv_format != KvFormat::Q8 || s.head_dim.is_multiple_of(KvFormat::Q8_BLOCK),
            "attention",
            || format!("a q8 KV cache needs head_dim a multiple of {} (got {})", KvFormat::Q8_BLOCK, s.head_dim),
        )?;
        ensure_shape(s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads), "attention", || {
            format!("{} query heads cannot share {} KV heads", s.heads, s.kv_heads)
        })?;
        // attention.wgsl: MAX_GROUP query heads per KV head, their queries in MAX_Q_QUADS vec4s.
        let group = s.heads / s.kv_heads;
        ensure_shape(group <= 8 && group * s.head_dim <= 1024, "attention", || {
            format!("{group} query heads of {} per KV head (at most 8, and 1024 values)", s.head_dim)
        })?;
        ensure_shape(s.heads * s.head_dim <= s.q_stride, "attention", || {
            format!("{} heads of {} overflow query rows of {}", s.heads, s.head_dim, s.q_stride)
        })?;
        ensure_shape(
            s.splits >= 1 && s.splits as u32 <= self.max_groups && s.tokens as u32 <= self.max_groups,
            "attention",
            || format!("{} splits x {} tokens exceed the dispatch limit", s.splits, s.tokens),
        )?;
        need("attention", "q", q, s.tokens * s.q_stride * 4)?;
        ensure_shape(s.slots > 0, "attention", || "a KV cache of 0 slots".into())?;
        let cache_bytes = s.slots * s.kv_format.row_bytes(s.kv_heads * s.head_dim);
        need("attention", "k_cache", k_cache, cache_bytes)?;
        need("attention", "v_cache", v_cache, cache_bytes)?;
        let slots = s.tokens * s.heads * s.splits;
        need("attention", "scratch partials", &scratch.acc, slots * s.head_dim * 4)?;
        need("attention", "scratch stats", &scratch.ml, slots * 8)?;
        need("attention", "out", out, s.tokens * s.heads * s.head_dim * 4)?;
        if let Some(b) = &s.sparse {
            ensure_shape(b.block > 0 && b.local_blocks > 0 && b.vert_stride > 0 && s.window == 0, "attention", || {
                format!(
                    "block-sparse attention needs positive block ({}), local blocks ({}) and vertical stride ({}), \
                     and no window",
                    b.block, b.local_blocks, b.vert_stride
                )
            })?;
        }
        // The shader adds h * head_step + 1 for every query head h.
        u32_of("attention", "heads x head_step", s.heads * s.sparse.map_or(0, |b| b.head_step) + 1)?;
        let sparse =
            s.sparse.unwrap_or(crate::config::BlockSparse { block: 1, local_blocks: 1, vert_stride: 1, head_step: 0 });
        let params = AttentionParams {
            tokens: u32_of("attention", "tokens", s.tokens)?,
            heads: u32_of("attention", "heads", s.heads)?,
            kv_heads: u32_of("attention", "kv_heads", s.kv_heads)?,
            head_dim: u32_of("attention", "head_dim", s.head_dim)?,
            q_stride: u32_of("attention", "q_stride", s.q_stride)?,
            window: u32_of("attention", "window", s.window)?,
            splits: u32_of("attention", "splits", s.splits)?,
            scale: s.scale,
            slots: u32_of("attention", "slots", s.slots)?,
            block: u32_of("attention", "block", sparse.block)?,
            local_blocks: u32_of("attention", "local_blocks", sparse.local_blocks)?,
            vert_stride: u32_of("attention", "vert_stride", sparse.vert_stride)?,
            head_step: u32_of("attention", "head_step", sparse.head_step)?,
            _pad: [0; 3],
        };
        // Multi-head attention gets a pipeline specialised for groups of one
        // (its loops over the group compile away: 25 % faster on lavapipe).
        let variant = Variant {
            kv: Some(s.kv_format),
            group: (group == 1) as u32,
            sparse: s.sparse.is_some(),
            ..Default::default()
        };
        let split_pass = self.dispatch(
            &ATTENTION,
            variant,
            &params,
            &[(1, step), (2, q), (3, k_cache), (4, v_cache), (5, &scratch.acc), (6, &scratch.ml)],
            vec![],
            [s.splits as u32, s.kv_heads as u32, s.tokens as u32],
        );
        let combine_params = AttentionCombineParams {
            tokens: params.tokens,
            heads: params.heads,
            head_dim: params.head_dim,
            splits: params.splits,
        };
        let combine = self.dispatch(
            &ATTENTION_COMBINE,
            Variant::default(),
            &combine_params,
            &[(1, &scratch.acc), (2, &scratch.ml), (3, out)],
            vec![],
            [s.heads as u32, s.tokens as u32, 1],
        );
        Ok([split_pass, combine])
    }

    /// out [T, heads * head_dim] = softmax(q k^T * scale) v within each
    /// token's sequence, for sequences packed back to back in qkv [T, 3 *
    /// heads * head_dim]; segments [T] holds each token's (start, end).
    pub fn encoder_attention(
        &self,
        qkv: &wgpu::Buffer,
        segments: &wgpu::Buffer,
        out: &wgpu::Buffer,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Dispatch> {
        let width = heads * head_dim;
        need("encoder_attention", "qkv", qkv, tokens * 3 * width * 4)?;
        need("encoder_attention", "segments", segments, tokens * 8)?;
        need("encoder_attention", "out", out, tokens * width * 4)?;
        ensure_shape(tokens as u32 <= self.max_groups && heads as u32 <= self.max_groups, "encoder_attention", || {
            format!("{tokens} tokens x {heads} heads exceed the dispatch limit")
        })?;
        let params = EncoderAttentionParams {
            tokens: u32_of("encoder_attention", "tokens", tokens)?,
            heads: u32_of("encoder_attention", "heads", heads)?,
            head_dim: u32_of("encoder_attention", "head_dim", head_dim)?,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        Ok(self.dispatch(
            &ENCODER_ATTENTION,
            Variant::default(),
            &params,
            &[(1, qkv), (2, segments), (3, out)],
            vec![],
            [heads as u32, tokens as u32, 1],
        ))
    }
}
