//! The problem shapes the kernels take (where outputs go, what RoPE rotates,
//! which cache slice an append fills, the attention problem) and attention's
//! scratch: the public vocabulary of [`super::Kernels`].

use super::{Gpu, KernelTuning};
use crate::error::Result;

/// Where a linear layer's outputs go in each token's row of y: features
/// [offset, offset + N) of rows of `stride` floats (Q, K and V of separate
/// projections written side by side into one fused buffer, or the row chunks
/// of a large matrix).
#[derive(Clone, Copy, Debug)]
pub struct OutputSlice {
    pub stride: usize,
    pub offset: usize,
}

impl OutputSlice {
    /// Rows of exactly `n` outputs.
    pub fn whole(n: usize) -> OutputSlice {
        OutputSlice { stride: n, offset: 0 }
    }
}

/// Where RoPE applies inside a (possibly fused QKV) activation buffer.
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Rotated dims per head (even, <= head_dim); the rest pass through.
    pub rot_dim: usize,
    /// Floats per token in the buffer.
    pub row_stride: usize,
    /// Float offset of the first rotated head within a token's row.
    pub offset: usize,
    /// LongRoPE attention factor multiplying cos and sin (1 otherwise).
    pub attn_factor: f32,
}

/// How a KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvFormat {
    /// f16 pairs packed in u32: exact to f16 (the default).
    #[default]
    F16,
    /// Blocks of 32 values as snorm8 (1/127 steps of the block's largest
    /// magnitude) plus an f32 scale: 0.5625× the bytes of f16. Needs kv_dim
    /// (kv_heads * head_dim) to be a multiple of 32.
    Q8,
    /// f32 words: exact (2x the bytes of f16), for parity checks and
    /// memory-rich devices.
    F32,
}

impl KvFormat {
    pub const ALL: [KvFormat; 3] = [KvFormat::F16, KvFormat::Q8, KvFormat::F32];
    /// Values per Q8 scale.
    pub const Q8_BLOCK: usize = 32;

    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F16 => "f16",
            KvFormat::Q8 => "q8",
            KvFormat::F32 => "f32",
        }
    }

    pub fn parse(name: &str) -> Option<KvFormat> {
        KvFormat::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Bytes one position of `kv_dim` values takes in one cache (K or V).
    pub fn row_bytes(self, kv_dim: usize) -> usize {
        match self {
            KvFormat::F16 => kv_dim * 2,
            KvFormat::Q8 => kv_dim + kv_dim / KvFormat::Q8_BLOCK * 4,
            KvFormat::F32 => kv_dim * 4,
        }
    }

    /// Whether rows of `kv_dim` values can be stored this way.
    pub fn supports(self, kv_dim: usize) -> bool {
        match self {
            KvFormat::F16 | KvFormat::F32 => kv_dim.is_multiple_of(4),
            KvFormat::Q8 => kv_dim.is_multiple_of(KvFormat::Q8_BLOCK),
        }
    }
}

/// Which slices of an activation buffer go into a layer's K and V caches:
/// K at `src_offset` of each row, V right after it (a fused [Q | K | V] row).
#[derive(Clone, Copy, Debug)]
pub struct KvAppendShape {
    pub tokens: usize,
    /// kv_heads * head_dim.
    pub kv_dim: usize,
    pub src_stride: usize,
    /// Where K starts in a row of src; V starts at src_offset + kv_dim.
    pub src_offset: usize,
    /// Positions the cache buffer holds; position p goes to slot p % slots
    /// (a ring when a sliding window leaves older keys unreachable).
    pub slots: usize,
    pub format: KvFormat,
}

/// Attention problem size; the query heads start at float 0 of each row.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Floats per token in the query buffer (a fused QKV row works).
    pub q_stride: usize,
    /// Positions the KV cache buffers hold; key j is in slot j % slots. A
    /// ring (slots < positions) needs a window and slots >= window + tokens.
    pub slots: usize,
    /// Sliding window: a query at p sees keys j with p - j < window; 0 = none.
    pub window: usize,
    pub scale: f32,
    /// Workgroups along the key sequence (flash-decoding splits).
    pub splits: usize,
    pub kv_format: KvFormat,
    /// Phi-3-small's block-sparse pattern (no window with it); None: dense.
    pub sparse: Option<crate::config::BlockSparse>,
}

impl AttentionShape {
    /// Splits for `tokens` queries over caches up to `capacity` positions,
    /// `kv_heads` workgroups each: few when the queries themselves give
    /// parallelism; when decoding, enough to fill a GPU, or a CPU's few
    /// threads (more only add fixed costs there: SmolLM2 at 2k on lavapipe,
    /// 2 splits 8 ms, 16 splits 11 ms). attention.wgsl gives a split at least
    /// 512 keys.
    pub fn default_splits(tokens: usize, capacity: usize, kv_heads: usize, tuning: KernelTuning) -> usize {
        let most = capacity.div_ceil(512).clamp(1, 32);
        match tuning {
            _ if tokens >= 16 => 1,
            KernelTuning::Cpu => (8 / kv_heads.max(1)).clamp(1, most),
            KernelTuning::Software | KernelTuning::Gpu => most,
        }
    }
}

/// Scratch for attention's per-split partial results.
pub struct AttentionScratch {
    pub(super) acc: wgpu::Buffer, // [tokens, heads, splits, head_dim] f32
    pub(super) ml: wgpu::Buffer,  // [tokens, heads, splits] (max, sum) f32 pairs
}

impl AttentionScratch {
    pub fn new(gpu: &Gpu, shape: &AttentionShape) -> Result<AttentionScratch> {
        let slots = (shape.tokens * shape.heads * shape.splits) as u64;
        Ok(AttentionScratch {
            acc: gpu.storage("attention partials", slots * shape.head_dim as u64 * 4)?,
            ml: gpu.storage("attention stats", slots * 8)?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluKind {
    /// Exact GELU with erf (BERT, `nn.GELU()`).
    Erf,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    Tanh,
    /// x·sigmoid(1.702 x) (CLIP's `quick_gelu`).
    Quick,
}
