//! The decoder-only transformer of the Phi-3 family (Phi3ForCausalLM) and of
//! Llama (LlamaForCausalLM, SmolLM2): one forward pass that reads like
//! `modeling_phi3.py`. Config, weights, scratch and KV cache are separate and
//! allocated once for a chosen context length.

use super::{entry, upload_vector};
use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::formats::package::ShardSource;
use crate::gpu::{
    AttentionScratch, AttentionShape, Command, Gpu, Kernels, KvAppendShape, KvFormat, Matrix, OutputSlice, RopeShape,
};

/// A weight matrix, possibly stored as row chunks (each a GPU matrix).
struct Linear {
    rows: usize,
    /// (matrix, first row)
    chunks: Vec<(Matrix, usize)>,
}

/// Projections written side by side into one activation row: Phi-3's fused
/// qkv_proj / gate_up_proj (one part), or Llama's separate q, k, v / gate, up.
struct Fused {
    parts: Vec<Linear>,
    width: usize,
}

struct Layer {
    input_norm: wgpu::Buffer,     // [H]
    post_attn_norm: wgpu::Buffer, // [H]
    qkv: Fused,                   // [(heads + 2 kv_heads) * head_dim, H]
    o_proj: Linear,               // [H, heads * head_dim]
    gate_up: Fused,               // [2 I, H], gate first
    down: Linear,                 // [H, I]
}

struct Weights {
    embed: Linear, // [vocab, H]
    layers: Vec<Layer>,
    norm: wgpu::Buffer,      // [H]
    lm_head: Option<Linear>, // [vocab, H]; None = tied to the embedding
}

/// Activations for up to `max_tokens` tokens per forward call.
struct Scratch {
    ids: wgpu::Buffer,       // [T] u32
    x: wgpu::Buffer,         // [T, H] residual stream
    h: wgpu::Buffer,         // [T, H] normed input, then the block's output
    qkv: wgpu::Buffer,       // [T, qkv_width]
    attn: wgpu::Buffer,      // [T, heads * head_dim]
    gate_up: wgpu::Buffer,   // [T, 2 I]
    act: wgpu::Buffer,       // [T, I]
    last: wgpu::Buffer,      // [H] the last token's residual
    last_norm: wgpu::Buffer, // [H]
    logits: wgpu::Buffer,    // [T, vocab]
    readback: wgpu::Buffer,  // [vocab] mappable copy of the last token's logits
    attention: AttentionScratch,
    step: wgpu::Buffer,
    inv_freq_short: wgpu::Buffer, // [rotary_dim / 2]
    inv_freq_long: wgpu::Buffer,  // [rotary_dim / 2] (LongRoPE; = short otherwise)
}

struct KvCache {
    k: Vec<wgpu::Buffer>, // per layer [slots, kv_heads * head_dim] in `format`
    v: Vec<wgpu::Buffer>,
    format: KvFormat,
    /// Positions the buffers hold; position p lives in slot p % slots. With a
    /// sliding window shorter than the context only window + max_tokens
    /// positions can ever be seen again, so the cache is a ring that size.
    slots: usize,
}

/// GPU memory of a loaded decoder, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct DecoderMemory {
    pub weights: u64,
    pub kv_cache: u64,
}

/// Which logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// The last token's row only (generation).
    Last,
    /// One row per token (`phi-web logits`, parity tests).
    All,
}

pub struct Decoder {
    pub config: ModelConfig,
    /// Positions the KV cache holds.
    pub capacity: usize,
    /// Tokens one forward call may carry (longer prompts are chunked by the caller).
    pub max_tokens: usize,
    weights: Weights,
    scratch: Scratch,
    cache: KvCache,
    decode_splits: usize,
    /// Command lists already recorded, by shape: a decode step replays one
    /// instead of creating bind groups and uniform buffers for every token.
    recorded: std::sync::Mutex<Vec<(RecordKey, Vec<Command>)>>,
}

/// What a recorded command list depends on (positions live in the Step buffer).
#[derive(Clone, Copy, PartialEq, Eq)]
struct RecordKey {
    tokens: usize,
    long_rope: bool,
    which: Logits,
}

/// Recorded lists kept at most: decode, full prefill chunks and a few tails.
const RECORDED_MAX: usize = 8;

async fn upload_linear(gpu: &Gpu, source: &impl ShardSource, name: &str) -> Result<Linear> {
    let entry = entry(source, name)?;
    let format = entry.weight_format()?;
    let (rows, cols) = entry.rows_cols();
    let mut chunks = Vec::with_capacity(entry.chunks.len());
    let mut first = 0;
    for chunk in &entry.chunks {
        let layout = source.chunk_layout(chunk).await?;
        chunks.push((Matrix::upload(gpu, &entry.name, format, chunk.rows, cols, &layout)?, first));
        first += chunk.rows;
    }
    Ok(Linear { rows, chunks })
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

impl Decoder {
    /// Uploads the package's weights and allocates scratch and a KV cache
    /// for `capacity` positions stored as `kv`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(
        gpu: &Gpu,
        package: &crate::formats::package::Package,
        capacity: usize,
        max_tokens: usize,
        kv: KvFormat,
    ) -> Result<Decoder> {
        pollster::block_on(Decoder::load_from(gpu, package, capacity, max_tokens, kv))
    }

    /// `load` from any shard source (the browser's cache in wasm), tensor by
    /// tensor in the order of the shards.
    pub async fn load_from(
        gpu: &Gpu,
        source: &impl ShardSource,
        capacity: usize,
        max_tokens: usize,
        kv: KvFormat,
    ) -> Result<Decoder> {
        let config = source.manifest().config.clone();
        if !matches!(config.architecture, Architecture::Phi3 | Architecture::Llama) {
            return Err(Error::Unsupported {
                what: format!("{:?} as a generating model", config.architecture),
                supported: "phi3, llama".into(),
            });
        }
        let kv_dim = config.num_kv_heads * config.head_dim;
        if !kv.supports(kv_dim) {
            return Err(Error::Unsupported {
                what: format!("a {} KV cache for rows of {kv_dim} values", kv.name()),
                supported: format!("f16 for a multiple of 4, q8 for a multiple of {}", KvFormat::Q8_BLOCK),
            });
        }
        let fused = async |names: &[&str]| -> Result<Fused> {
            let mut parts = Vec::with_capacity(names.len());
            for name in names {
                parts.push(upload_linear(gpu, source, name).await?);
            }
            let width = parts.iter().map(|p| p.rows).sum();
            Ok(Fused { parts, width })
        };

        let embed = upload_linear(gpu, source, "model.embed_tokens.weight").await?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let has = |s: &str| source.tensor(&p(s)).is_some();
            let qkv = if has("self_attn.qkv_proj.weight") {
                fused(&[&p("self_attn.qkv_proj.weight")]).await?
            } else {
                fused(&[&p("self_attn.q_proj.weight"), &p("self_attn.k_proj.weight"), &p("self_attn.v_proj.weight")])
                    .await?
            };
            let gate_up = if has("mlp.gate_up_proj.weight") {
                fused(&[&p("mlp.gate_up_proj.weight")]).await?
            } else {
                fused(&[&p("mlp.gate_proj.weight"), &p("mlp.up_proj.weight")]).await?
            };
            layers.push(Layer {
                input_norm: upload_vector(gpu, source, &p("input_layernorm.weight")).await?,
                post_attn_norm: upload_vector(gpu, source, &p("post_attention_layernorm.weight")).await?,
                qkv,
                o_proj: upload_linear(gpu, source, &p("self_attn.o_proj.weight")).await?,
                gate_up,
                down: upload_linear(gpu, source, &p("mlp.down_proj.weight")).await?,
            });
        }
        let weights = Weights {
            embed,
            norm: upload_vector(gpu, source, "model.norm.weight").await?,
            lm_head: match source.tensor("lm_head.weight") {
                Some(_) => Some(upload_linear(gpu, source, "lm_head.weight").await?),
                None => None,
            },
            layers,
        };

        let c = &config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let qkv_width = (c.num_heads + 2 * c.num_kv_heads) * d;
        let t = max_tokens.max(1);
        let floats = |label: &str, n: usize| gpu.storage(label, 4 * n as u64);
        let decode_splits = AttentionShape::default_splits(1, capacity, c.num_kv_heads, gpu.tuning);
        let slots = match c.sliding_window {
            Some(window) if window > 0 => capacity.min(window + t),
            _ => capacity,
        };
        let attention_shape = AttentionShape {
            tokens: t,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: d,
            q_stride: qkv_width,
            slots,
            window: 0,
            scale: 1.0,
            splits: 1,
            kv_format: kv,
        };
        let short = inv_freq(c, c.longrope.as_ref().map(|l| l.short_factor.as_slice()));
        let long = inv_freq(c, c.longrope.as_ref().map(|l| l.long_factor.as_slice()));
        let scratch = Scratch {
            ids: gpu.storage("ids", 4 * t as u64)?,
            x: floats("x", t * h)?,
            h: floats("h", t * h)?,
            qkv: floats("qkv", t * qkv_width)?,
            attn: floats("attn", t * c.num_heads * d)?,
            gate_up: floats("gate_up", t * 2 * c.intermediate_size)?,
            act: floats("act", t * c.intermediate_size)?,
            last: floats("last", h)?,
            last_norm: floats("last_norm", h)?,
            logits: floats("logits", t * c.vocab_size)?,
            readback: gpu.readback_buffer("logits readback", 4 * c.vocab_size as u64)?,
            // Prefill runs one split of T queries, decode many splits of one:
            // room for whichever is more.
            attention: AttentionScratch::new(
                gpu,
                &AttentionShape { tokens: 1, splits: t.max(decode_splits), ..attention_shape },
            )?,
            step: gpu.step_buffer(0),
            inv_freq_short: gpu.storage_with("inv_freq", bytemuck::cast_slice(&short))?,
            inv_freq_long: gpu.storage_with("inv_freq long", bytemuck::cast_slice(&long))?,
        };
        let cache_bytes = (slots * kv.row_bytes(kv_dim)) as u64;
        let mut cache = KvCache { k: Vec::new(), v: Vec::new(), format: kv, slots };
        for i in 0..c.num_layers {
            cache.k.push(gpu.storage(&format!("k cache {i}"), cache_bytes)?);
            cache.v.push(gpu.storage(&format!("v cache {i}"), cache_bytes)?);
        }
        gpu.check()?;
        Ok(Decoder {
            config,
            capacity,
            max_tokens: t,
            weights,
            scratch,
            cache,
            decode_splits,
            recorded: Default::default(),
        })
    }

    /// Runs `ids` at positions pos.. (the cache must hold 0..pos) and returns
    /// logits: [vocab] for `Logits::Last`, [T, vocab] for `Logits::All`.
    pub async fn forward(&self, gpu: &Gpu, k: &Kernels, ids: &[u32], pos: usize, which: Logits) -> Result<Vec<f32>> {
        self.forward_in_sequence(gpu, k, ids, pos, pos + ids.len(), which).await
    }

    /// `forward` for one chunk of a sequence of `sequence_len` tokens: like
    /// transformers, LongRoPE uses the long factors at every position once the
    /// whole sequence exceeds the original context, so a chunked prefill must
    /// know the total.
    pub async fn forward_in_sequence(
        &self,
        gpu: &Gpu,
        k: &Kernels,
        ids: &[u32],
        pos: usize,
        sequence_len: usize,
        which: Logits,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let t = ids.len();
        if t == 0 || t > self.max_tokens {
            return Err(Error::Shape {
                op: "forward",
                message: format!("{t} tokens; one call takes 1 to {}", self.max_tokens),
            });
        }
        if pos + t > self.capacity {
            return Err(Error::Shape {
                op: "forward",
                message: format!("positions {pos}..{} exceed the context of {} tokens", pos + t, self.capacity),
            });
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::Shape {
                op: "forward",
                message: format!("token id {bad} is outside the vocabulary of {}", c.vocab_size),
            });
        }
        gpu.queue.write_buffer(&self.scratch.ids, 0, bytemuck::cast_slice(ids));
        gpu.set_step(&self.scratch.step, pos as u32);
        let key = RecordKey { tokens: t, long_rope: c.uses_long_rope(sequence_len.max(pos + t)), which };
        self.submit_recorded(gpu, k, key)?;
        match which {
            Logits::Last => gpu.read_mapped_f32("logits", &self.scratch.readback, c.vocab_size).await,
            Logits::All => gpu.read_f32("logits", &self.scratch.logits, t * c.vocab_size).await,
        }
    }

    /// Submits the command list for `key`, recorded on first use.
    fn submit_recorded(&self, gpu: &Gpu, k: &Kernels, key: RecordKey) -> Result<()> {
        let mut recorded = self.recorded.lock().map_err(|_| Error::Gpu {
            context: "forward".into(),
            message: "an earlier forward call panicked".into(),
        })?;
        match recorded.iter().position(|(k, _)| *k == key) {
            Some(i) => recorded[..=i].rotate_right(1), // most recent first
            None => {
                let list = self.record(k, key.tokens, key.long_rope, key.which)?;
                recorded.truncate(RECORDED_MAX - 1);
                recorded.insert(0, (key, list));
            }
        }
        gpu.submit(&recorded[0].1);
        Ok(())
    }

    /// The command list of one forward call: embed → N × block → norm → lm_head.
    fn record(&self, k: &Kernels, t: usize, long: bool, which: Logits) -> Result<Vec<Command>> {
        let (c, w, s) = (&self.config, &self.weights, &self.scratch);
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q_width, kv_width) = (c.num_heads * d, c.num_kv_heads * d);
        let qkv_width = q_width + 2 * kv_width;
        let mut out: Vec<Command> = Vec::new();
        let linear = |out: &mut Vec<Command>,
                      lin: &Linear,
                      x: &wgpu::Buffer,
                      y: &wgpu::Buffer,
                      stride: usize,
                      offset: usize|
         -> Result<()> {
            for (matrix, first) in &lin.chunks {
                out.push(k.linear(matrix, x, y, t, OutputSlice { stride, offset: offset + first })?.into());
            }
            Ok(())
        };
        let fused = |out: &mut Vec<Command>, f: &Fused, x: &wgpu::Buffer, y: &wgpu::Buffer| -> Result<()> {
            let mut offset = 0;
            for part in &f.parts {
                linear(out, part, x, y, f.width, offset)?;
                offset += part.rows;
            }
            Ok(())
        };
        let inv_freq = if long { &s.inv_freq_long } else { &s.inv_freq_short };
        let attn_factor = c.longrope.as_ref().map_or(1.0, |l| l.attention_factor);
        let rope = |heads: usize, offset: usize| RopeShape {
            tokens: t,
            heads,
            head_dim: d,
            rot_dim: c.rotary_dim,
            row_stride: qkv_width,
            offset,
            attn_factor,
        };
        let kv = |offset: usize| KvAppendShape {
            tokens: t,
            kv_dim: kv_width,
            src_stride: qkv_width,
            src_offset: offset,
            slots: self.cache.slots,
            format: self.cache.format,
        };
        let attention = AttentionShape {
            tokens: t,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: d,
            q_stride: qkv_width,
            slots: self.cache.slots,
            window: c.sliding_window.unwrap_or(0),
            scale: 1.0 / (d as f32).sqrt(),
            splits: if t == 1 { self.decode_splits } else { 1 },
            kv_format: self.cache.format,
        };

        for (table, first) in &w.embed.chunks {
            out.push(k.embedding_chunk(table, *first, &s.ids, &s.x, t)?.into());
        }
        for (i, layer) in w.layers.iter().enumerate() {
            // x = x + o_proj(attention(rope(qkv_proj(norm(x)))))
            out.push(k.rms_norm(&s.x, &layer.input_norm, &s.h, t, h, c.norm_eps)?.into());
            fused(&mut out, &layer.qkv, &s.h, &s.qkv)?;
            out.push(k.rope(&s.step, inv_freq, &s.qkv, &rope(c.num_heads, 0))?.into());
            out.push(k.rope(&s.step, inv_freq, &s.qkv, &rope(c.num_kv_heads, q_width))?.into());
            out.push(k.kv_append(&s.step, &s.qkv, &self.cache.k[i], &kv(q_width))?.into());
            out.push(k.kv_append(&s.step, &s.qkv, &self.cache.v[i], &kv(q_width + kv_width))?.into());
            let [split, combine] =
                k.attention(&s.step, &s.qkv, &self.cache.k[i], &self.cache.v[i], &s.attention, &s.attn, &attention)?;
            out.push(split.into());
            out.push(combine.into());
            linear(&mut out, &layer.o_proj, &s.attn, &s.h, h, 0)?;
            out.push(k.add(&s.x, &s.h, t * h)?.into());
            // x = x + down(silu(gate) * up), gate_up = gate_up_proj(norm(x))
            out.push(k.rms_norm(&s.x, &layer.post_attn_norm, &s.h, t, h, c.norm_eps)?.into());
            fused(&mut out, &layer.gate_up, &s.h, &s.gate_up)?;
            out.push(k.silu_mul(&s.gate_up, &s.act, t, c.intermediate_size)?.into());
            linear(&mut out, &layer.down, &s.act, &s.h, h, 0)?;
            out.push(k.add(&s.x, &s.h, t * h)?.into());
        }
        let lm_head = w.lm_head.as_ref().unwrap_or(&w.embed);
        let vocab = c.vocab_size;
        match which {
            Logits::All => {
                out.push(k.rms_norm(&s.x, &w.norm, &s.h, t, h, c.norm_eps)?.into());
                linear(&mut out, lm_head, &s.h, &s.logits, vocab, 0)?;
            }
            Logits::Last => {
                let row = (h * 4) as u64;
                out.push(Command::Copy {
                    src: s.x.clone(),
                    src_offset: (t as u64 - 1) * row,
                    dst: s.last.clone(),
                    dst_offset: 0,
                    size: row,
                });
                out.push(k.rms_norm(&s.last, &w.norm, &s.last_norm, 1, h, c.norm_eps)?.into());
                for (matrix, first) in &lm_head.chunks {
                    out.push(
                        k.linear(matrix, &s.last_norm, &s.logits, 1, OutputSlice { stride: vocab, offset: *first })?
                            .into(),
                    );
                }
            }
        }
        if which == Logits::Last {
            let size = (vocab * 4) as u64;
            out.push(Command::Copy {
                src: s.logits.clone(),
                src_offset: 0,
                dst: s.readback.clone(),
                dst_offset: 0,
                size,
            });
        }
        Ok(out)
    }

    /// GPU memory of the weights and of the KV cache (buffer sizes).
    pub fn memory(&self) -> DecoderMemory {
        let lin = |l: &Linear| l.chunks.iter().map(|(m, _)| m.gpu_bytes()).sum::<u64>();
        let fused = |f: &Fused| f.parts.iter().map(lin).sum::<u64>();
        let w = &self.weights;
        let layers: u64 = w
            .layers
            .iter()
            .map(|l| {
                let norms = l.input_norm.size() + l.post_attn_norm.size();
                norms + fused(&l.qkv) + lin(&l.o_proj) + fused(&l.gate_up) + lin(&l.down)
            })
            .sum();
        let weights = layers + lin(&w.embed) + w.norm.size() + w.lm_head.as_ref().map_or(0, lin);
        let kv_cache = self.cache.k.iter().chain(&self.cache.v).map(|b| b.size()).sum();
        DecoderMemory { weights, kv_cache }
    }

    /// Whether, after positions [0, written) went through the cache, a new
    /// prefill may start at `from` (reusing the keys before it): a ring cache
    /// has overwritten the oldest positions, and the queries from `from` on
    /// must still find every key their window reaches.
    pub fn can_resume(&self, written: usize, from: usize) -> bool {
        let window = self.config.sliding_window.unwrap_or(0);
        self.cache.slots >= self.capacity || from + self.cache.slots + 1 >= written + window
    }

    /// KV-cache bytes one position takes over all layers (K and V).
    pub fn kv_bytes_per_position(&self) -> u64 {
        let c = &self.config;
        (c.num_layers * 2 * self.cache.format.row_bytes(c.num_kv_heads * c.head_dim)) as u64
    }

    /// How the KV cache stores keys and values.
    pub fn kv_format(&self) -> KvFormat {
        self.cache.format
    }

    /// Bytes of weights a decode step reads (for bandwidth figures).
    pub fn weight_bytes(&self) -> u64 {
        let lin = |l: &Linear| l.chunks.iter().map(|(m, _)| m.read_bytes()).sum::<u64>();
        let fused = |f: &Fused| f.parts.iter().map(lin).sum::<u64>();
        let w = &self.weights;
        let layers: u64 =
            w.layers.iter().map(|l| fused(&l.qkv) + lin(&l.o_proj) + fused(&l.gate_up) + lin(&l.down)).sum();
        layers + w.lm_head.as_ref().map_or_else(|| lin(&w.embed), lin)
    }
}
