//! The blocks every architecture is written in: `Linear` (row chunks,
//! optional bias in the kernel's epilogue), `Norm` (RMS or Layer), `Rope`
//! (plain, partial, LongRoPE), `Attention` over the KV cache (causal or
//! sliding window; block-sparse comes with Phi-3-small), the SwiGLU `Mlp` and
//! `LastRow` (the final norm and lm_head, at every position or the last).
//! Each knows its shapes and records itself with `forward(r, input, output)`
//! over the recorder's tokens.

use super::recorder::Recorder;
use super::{entry, upload_vector};
use crate::backend::{Backend, Buf, Matrix};
use crate::config::{BlockSparse, ModelConfig, NormKind};
use crate::error::Result;
use crate::formats::package::ShardSource;
use crate::gpu::{AttentionScratch, AttentionShape, KvAppendShape, KvFormat, OutputSlice, RopeShape};

/// y = x W^T (+ b) with W [rows, cols], stored as row chunks when one
/// storage binding cannot hold it (a 200k-row vocabulary).
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    /// (matrix, its first row)
    chunks: Vec<(Matrix, usize)>,
    bias: Option<Buf>, // [rows]
}

impl Linear {
    /// `{name}.weight`, and `{name}.bias` when `bias`.
    pub async fn load(b: &Backend, source: &impl ShardSource, name: &str, bias: bool) -> Result<Linear> {
        let entry = entry(source, &format!("{name}.weight"))?;
        let format = entry.weight_format()?;
        let (rows, cols) = entry.rows_cols();
        let mut chunks = Vec::with_capacity(entry.chunks.len());
        let mut first = 0;
        for chunk in &entry.chunks {
            let layout = source.chunk_layout(chunk).await?;
            chunks.push((b.matrix(&entry.name, format, chunk.rows, cols, layout)?, first));
            first += chunk.rows;
        }
        let bias = match bias {
            true => Some(upload_vector(b, source, &format!("{name}.bias")).await?),
            false => None,
        };
        Ok(Linear { rows, cols, chunks, bias })
    }

    /// The same matrices with `bias` [rows] (Phi-3-small's tied lm_head and
    /// its dummy-token bias): the GPU buffers are shared, not copied.
    pub fn with_bias(&self, bias: Buf) -> Linear {
        Linear { rows: self.rows, cols: self.cols, chunks: self.chunks.clone(), bias: Some(bias) }
    }

    /// y [T, rows] = x [T, cols] W^T (+ b).
    pub fn forward(&self, r: &mut Recorder, x: &Buf, y: &Buf) -> Result<()> {
        self.forward_into(r, x, y, OutputSlice::whole(self.rows))
    }

    /// The outputs written into the slice `out` of each row of y.
    pub fn forward_into(&self, r: &mut Recorder, x: &Buf, y: &Buf, out: OutputSlice) -> Result<()> {
        for (matrix, first) in &self.chunks {
            let bias = self.bias.as_ref().map(|buffer| (buffer, *first));
            let slice = OutputSlice { stride: out.stride, offset: out.offset + first };
            let op = r.backend.linear(matrix, bias, x, y, r.tokens, slice)?;
            r.push(op);
        }
        Ok(())
    }

    /// y [1, rows] = (silu(gate) * up) W^T for one token of gate_up [2 cols]
    /// (gate first), where the backend fuses the two (no bias).
    pub fn forward_after_silu_mul(&self, r: &mut Recorder, gate_up: &Buf, y: &Buf) -> Result<()> {
        for (matrix, first) in &self.chunks {
            let slice = OutputSlice { stride: self.rows, offset: *first };
            let op = r.backend.linear_after_silu_mul(matrix, gate_up, y, slice)?;
            r.push(op);
        }
        Ok(())
    }

    /// out [T, cols] = rows ids [T] of W (an embedding table).
    pub fn lookup(&self, r: &mut Recorder, ids: &Buf, out: &Buf) -> Result<()> {
        for (table, first) in &self.chunks {
            let op = r.backend.embedding_chunk(table, *first, ids, out, r.tokens)?;
            r.push(op);
        }
        Ok(())
    }

    /// Bytes on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        let bias = self.bias.as_ref().map_or(0, |b| b.size());
        self.chunks.iter().map(|(m, _)| m.bytes()).sum::<u64>() + bias
    }

    /// Bytes one token's product reads.
    pub fn read_bytes(&self) -> u64 {
        self.chunks.iter().map(|(m, _)| m.read_bytes()).sum()
    }
}

/// Projections written side by side into one row: Phi-3's fused qkv_proj /
/// gate_up_proj (one part), or Llama's separate q, k, v / gate, up.
pub struct Fused {
    parts: Vec<Linear>,
    pub width: usize,
}

impl Fused {
    pub fn new(parts: Vec<Linear>) -> Fused {
        let width = parts.iter().map(|p| p.rows).sum();
        Fused { parts, width }
    }

    /// y [T, width] = the parts' outputs side by side.
    pub fn forward(&self, r: &mut Recorder, x: &Buf, y: &Buf) -> Result<()> {
        let mut offset = 0;
        for part in &self.parts {
            part.forward_into(r, x, y, OutputSlice { stride: self.width, offset })?;
            offset += part.rows;
        }
        Ok(())
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.parts.iter().map(Linear::gpu_bytes).sum()
    }

    pub fn read_bytes(&self) -> u64 {
        self.parts.iter().map(Linear::read_bytes).sum()
    }
}

/// RMSNorm (weight) or LayerNorm (weight and bias) over rows of `cols`.
pub struct Norm {
    weight: Buf,       // [cols]
    bias: Option<Buf>, // [cols], LayerNorm only
    cols: usize,
    eps: f32,
}

impl Norm {
    /// `{name}.weight` (and `{name}.bias` for LayerNorm).
    pub async fn load(
        b: &Backend,
        source: &impl ShardSource,
        name: &str,
        kind: NormKind,
        cols: usize,
        eps: f32,
    ) -> Result<Norm> {
        Norm::load_scaled(b, source, name, kind, cols, eps, 1.0).await
    }

    /// `load` with weight and bias multiplied by `scale`: the norm's output
    /// times `scale` (Phi-3-small's logits ÷ mup_width_multiplier, folded in).
    pub async fn load_scaled(
        b: &Backend,
        source: &impl ShardSource,
        name: &str,
        kind: NormKind,
        cols: usize,
        eps: f32,
        scale: f32,
    ) -> Result<Norm> {
        let vector = async |name: String| -> Result<Buf> {
            let mut values = source.tensor_f32(entry(source, &name)?).await?;
            values.iter_mut().for_each(|v| *v *= scale);
            b.storage_with(&name, bytemuck::cast_slice(&values))
        };
        let weight = vector(format!("{name}.weight")).await?;
        let bias = match kind {
            NormKind::Rms => None,
            NormKind::Layer => Some(vector(format!("{name}.bias")).await?),
        };
        Ok(Norm { weight, bias, cols, eps })
    }

    /// y [T, cols] = norm(x).
    pub fn forward(&self, r: &mut Recorder, x: &Buf, y: &Buf) -> Result<()> {
        let (k, t) = (r.backend, r.tokens);
        let d = match &self.bias {
            None => k.rms_norm(x, &self.weight, y, t, self.cols, self.eps)?,
            Some(bias) => k.layer_norm(x, &self.weight, bias, y, t, self.cols, self.eps)?,
        };
        r.push(d);
        Ok(())
    }

    /// x += h (the previous block's output), then h [T, cols] = norm(x):
    /// one dispatch for RMSNorm (add_rms_norm), two for LayerNorm.
    pub fn forward_after_add(&self, r: &mut Recorder, x: &Buf, h: &Buf) -> Result<()> {
        match &self.bias {
            None => {
                let d = r.backend.add_rms_norm(x, h, &self.weight, r.tokens, self.cols, self.eps)?;
                r.push(d);
                Ok(())
            }
            Some(_) => {
                r.add(x, h, self.cols)?;
                self.forward(r, x, h)
            }
        }
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.weight.size() + self.bias.as_ref().map_or(0, |b| b.size())
    }
}

/// inv_freq[i] = 1 / (factor[i] · θ^(2i / rot)), in f32 as HF computes it.
fn inv_freq(config: &ModelConfig, factors: Option<&[f32]>) -> Vec<f32> {
    let rot = config.rotary_dim;
    (0..rot / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / rot as f32;
            1.0 / (factors.map_or(1.0, |f| f[i]) * config.rope_theta.powf(exponent))
        })
        .collect()
}

/// A dense decoder's activations for up to `t` tokens per forward call
/// (Phi-3 and Llama, Phi-3-small).
pub struct DecoderScratch {
    pub x: Buf,          // [T, H] residual stream
    pub h: Buf,          // [T, H] normed input, then the block's output
    pub qkv: Buf,        // [T, (heads + 2 kv_heads) head_dim]
    pub attn: Buf,       // [T, heads head_dim]
    pub mlp: MlpScratch, // [T, 2 I], [T, I]
    pub last: LastRow,   // the last token's row, when generating
}

impl DecoderScratch {
    pub fn new(b: &Backend, c: &ModelConfig, t: usize) -> Result<DecoderScratch> {
        let floats = |label: &str, n: usize| b.storage(label, 4 * n as u64);
        let h = c.hidden_size;
        Ok(DecoderScratch {
            x: floats("x", t * h)?,
            h: floats("h", t * h)?,
            qkv: floats("qkv", t * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim)?,
            attn: floats("attn", t * c.num_heads * c.head_dim)?,
            mlp: MlpScratch::new(b, t, c.intermediate_size)?,
            last: LastRow::new(b, h)?,
        })
    }
}

/// Scratch for the logits of the last position only (generating): its
/// residual row and that row normed, [H] each.
pub struct LastRow {
    residual: Buf, // [H]
    normed: Buf,   // [H]
    hidden: usize,
}

impl LastRow {
    pub fn new(b: &Backend, hidden: usize) -> Result<LastRow> {
        let floats = |label: &str| b.storage(label, 4 * hidden as u64);
        Ok(LastRow { residual: floats("last")?, normed: floats("last_norm")?, hidden })
    }

    /// logits = lm_head(norm(x)) for x [T, H]: at every position (`all`, with
    /// h [T, H] as scratch), else at the last one only.
    #[allow(clippy::too_many_arguments)]
    pub fn logits(
        &self,
        r: &mut Recorder,
        norm: &Norm,
        lm_head: &Linear,
        x: &Buf,
        h: &Buf,
        logits: &Buf,
        all: bool,
    ) -> Result<()> {
        if all {
            norm.forward(r, x, h)?;
            return lm_head.forward(r, h, logits);
        }
        r.copy_last_row(x, &self.residual, self.hidden)?;
        r.tokens = 1;
        norm.forward(r, &self.residual, &self.normed)?;
        lm_head.forward(r, &self.normed, logits)
    }
}

/// Rotary embedding of the query and key heads of fused QKV rows (NeoX
/// style, partial when rotary_dim < head_dim; LongRoPE's two factor sets).
pub struct Rope {
    inv_freq_short: Buf, // [rotary_dim / 2]
    inv_freq_long: Buf,  // [rotary_dim / 2] (LongRoPE; = short otherwise)
    shape: RopeShape,    // the query heads; tokens and attn_factor set per call
    kv_heads: usize,
    /// What multiplies cos and sin with the short and the long factors.
    attn_factor: [f32; 2],
}

impl Rope {
    pub fn new(b: &Backend, c: &ModelConfig) -> Result<Rope> {
        let short = inv_freq(c, c.longrope.as_ref().map(|l| l.short_factor.as_slice()));
        let long = inv_freq(c, c.longrope.as_ref().map(|l| l.long_factor.as_slice()));
        Ok(Rope {
            inv_freq_short: b.storage_with("inv_freq", bytemuck::cast_slice(&short))?,
            inv_freq_long: b.storage_with("inv_freq long", bytemuck::cast_slice(&long))?,
            shape: RopeShape {
                tokens: 0,
                heads: c.num_heads,
                head_dim: c.head_dim,
                rot_dim: c.rotary_dim,
                row_stride: (c.num_heads + 2 * c.num_kv_heads) * c.head_dim,
                offset: 0,
                attn_factor: 1.0,
            },
            kv_heads: c.num_kv_heads,
            attn_factor: [false, true].map(|long| c.longrope.as_ref().map_or(1.0, |l| l.attention_factor(long))),
        })
    }

    /// Rotates q and k in place in qkv [T, (heads + 2 kv_heads) head_dim];
    /// `long`: LongRoPE's long factors. The k heads follow the q heads in a
    /// row, and both turn by the same angles: one dispatch rotates them all.
    pub fn forward(&self, r: &mut Recorder, qkv: &Buf, long: bool) -> Result<()> {
        let inv_freq = if long { &self.inv_freq_long } else { &self.inv_freq_short };
        let shape = RopeShape {
            tokens: r.tokens,
            heads: self.shape.heads + self.kv_heads,
            attn_factor: self.attn_factor[long as usize],
            ..self.shape
        };
        let op = r.backend.rope(r.step, inv_freq, qkv, &shape)?;
        r.push(op);
        Ok(())
    }
}

/// One layer's keys and values: [slots, kv_heads * head_dim] each.
pub struct LayerCache {
    pub k: Buf,
    pub v: Buf,
}

/// The KV cache of every layer.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub format: KvFormat,
    /// Positions the buffers hold; position p lives in slot p % slots. With a
    /// sliding window shorter than the context only window + max_tokens
    /// positions can ever be seen again, so the cache is a ring that size.
    pub slots: usize,
}

impl KvCache {
    pub fn new(b: &Backend, c: &ModelConfig, slots: usize, format: KvFormat) -> Result<KvCache> {
        let bytes = (slots * format.row_bytes(c.num_kv_heads * c.head_dim)) as u64;
        let layers = (0..c.num_layers)
            .map(|i| {
                Ok(LayerCache {
                    k: b.storage(&format!("k cache {i}"), bytes)?,
                    v: b.storage(&format!("v cache {i}"), bytes)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { layers, format, slots })
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.k.size() + l.v.size()).sum()
    }
}

/// Which keys a query sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    /// Every earlier position.
    Causal,
    /// The last `n` positions (Phi-3-mini-4k: 2047).
    SlidingWindow(usize),
    /// Phi-3-small's local blocks and per-head vertical stripes.
    BlockSparse(BlockSparse),
}

/// Scaled dot-product attention of fused QKV rows over the KV cache: appends
/// this call's keys and values, then attends (flash-decoding splits when
/// decoding one token).
pub struct Attention {
    shape: AttentionShape, // tokens, splits and cache set per call
    decode_splits: usize,
    scratch: Option<AttentionScratch>, // the GPU's split partials
}

impl Attention {
    /// For up to `max_tokens` queries per call over a cache of `capacity` positions.
    pub fn new(b: &Backend, c: &ModelConfig, mask: Mask, max_tokens: usize, capacity: usize) -> Result<Attention> {
        let d = c.head_dim;
        let decode_splits = AttentionShape::default_splits(1, capacity, c.num_kv_heads, b.tuning());
        let shape = AttentionShape {
            tokens: 1,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: d,
            q_stride: (c.num_heads + 2 * c.num_kv_heads) * d,
            slots: 0,
            window: match mask {
                Mask::SlidingWindow(n) => n,
                Mask::Causal | Mask::BlockSparse(_) => 0,
            },
            scale: c.attention_scale.unwrap_or(1.0 / (d as f32).sqrt()),
            // Prefill runs one split of T queries, decode many splits of one:
            // scratch for whichever is more.
            splits: max_tokens.max(decode_splits),
            kv_format: KvFormat::F16,
            sparse: match mask {
                Mask::BlockSparse(pattern) => Some(pattern),
                _ => None,
            },
        };
        let scratch = b.attention_scratch(&shape)?;
        Ok(Attention { shape, decode_splits, scratch })
    }

    /// out [T, heads * head_dim] = attention of the queries in qkv over
    /// layer `layer`'s cache, after appending qkv's keys and values to it.
    pub fn forward(&self, r: &mut Recorder, qkv: &Buf, cache: &KvCache, layer: usize, out: &Buf) -> Result<()> {
        let (s, layer) = (&self.shape, &cache.layers[layer]);
        let kv_dim = s.kv_heads * s.head_dim;
        let append = KvAppendShape {
            tokens: r.tokens,
            kv_dim,
            src_stride: s.q_stride,
            src_offset: s.heads * s.head_dim,
            slots: cache.slots,
            format: cache.format,
        };
        let kv = r.backend.kv_append(r.step, qkv, &layer.k, &layer.v, &append)?;
        let shape = AttentionShape {
            tokens: r.tokens,
            slots: cache.slots,
            splits: if r.tokens == 1 { self.decode_splits } else { 1 },
            kv_format: cache.format,
            ..*s
        };
        let attend = r.backend.attention(r.step, qkv, &layer.k, &layer.v, self.scratch.as_ref(), out, &shape)?;
        r.push(kv);
        attend.into_iter().for_each(|op| r.push(op));
        Ok(())
    }
}

/// The gated MLP: down(act(gate(x), up(x))), gate and up side by side.
pub struct Mlp {
    pub gate_up: Fused, // [2 I, H], gate first
    pub down: Linear,   // [H, I]
    pub gate: Gate,
}

/// How a gated MLP joins its halves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Gate {
    /// silu(gate) · up (Phi-3, Llama).
    Silu,
    /// Phi-3-small's gegelu: quick_gelu(min(a, limit)) · (clamp(b, ±limit) + 1).
    Gegelu { limit: Option<f32> },
}

/// The MLP's activations for T tokens.
pub struct MlpScratch {
    pub gate_up: Buf, // [T, 2 I]
    pub act: Buf,     // [T, I]
}

impl MlpScratch {
    /// For up to `max_tokens` tokens of an MLP `intermediate` wide.
    pub fn new(b: &Backend, max_tokens: usize, intermediate: usize) -> Result<MlpScratch> {
        Ok(MlpScratch {
            gate_up: b.storage("gate_up", (4 * max_tokens * 2 * intermediate) as u64)?,
            act: b.storage("act", (4 * max_tokens * intermediate) as u64)?,
        })
    }
}

impl Mlp {
    /// y [T, H] = down(act(gate, up)) of x [T, H].
    pub fn forward(&self, r: &mut Recorder, x: &Buf, s: &MlpScratch, y: &Buf) -> Result<()> {
        self.gate_up.forward(r, x, &s.gate_up)?;
        let silu = matches!(self.gate, Gate::Silu);
        if silu && self.down.bias.is_none() && r.backend.fuses_silu_into_matvec(r.tokens, self.down.cols) {
            // Decode on the GPU tiles: down_proj computes silu(gate) * up as it reads it.
            return self.down.forward_after_silu_mul(r, &s.gate_up, y);
        }
        let d = match self.gate {
            Gate::Silu => r.backend.silu_mul(&s.gate_up, &s.act, r.tokens, self.down.cols)?,
            Gate::Gegelu { limit } => r.backend.gegelu(&s.gate_up, &s.act, r.tokens, self.down.cols, limit)?,
        };
        r.push(d);
        self.down.forward(r, &s.act, y)
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.gate_up.gpu_bytes() + self.down.gpu_bytes()
    }

    pub fn read_bytes(&self) -> u64 {
        self.gate_up.read_bytes() + self.down.read_bytes()
    }
}
