//! BERT-family sentence encoders (all-MiniLM-L6-v2 and kin): the forward pass
//! of transformers' `BertModel` followed by sentence-transformers' pooling and
//! normalisation. Sequences of a batch are packed back to back with no
//! padding; attention stays within each sequence (encoder_attention.wgsl).

use super::{entry, upload_vector};
use crate::config::{Architecture, ModelConfig, Pooling};
use crate::error::{Error, Result};
use crate::formats::package::ShardSource;
use crate::gpu::{Dispatch, GeluKind, Gpu, Kernels, Matrix, OutputSlice, ENCODER_MAX_KEYS};

/// A linear layer: y = x W^T + b.
struct Dense {
    weight: Matrix,     // [out, in]
    bias: wgpu::Buffer, // [out]
}

struct LayerNorm {
    weight: wgpu::Buffer, // [H]
    bias: wgpu::Buffer,   // [H]
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attention_output: Dense, // [H, H]
    attention_norm: LayerNorm,
    intermediate: Dense, // [I, H]
    output: Dense,       // [H, I]
    output_norm: LayerNorm,
}

/// A loaded encoder: `embed` turns token sequences into sentence vectors.
pub struct Encoder {
    pub config: ModelConfig,
    pub pooling: Pooling,
    word_embeddings: Matrix,       // [vocab, H]
    position_embeddings: Matrix,   // [max_positions, H]
    token_type_embeddings: Matrix, // [types, H]; every token is type 0
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    gelu: GeluKind,
    /// Tokens per forward pass; longer batches are split.
    max_batch_tokens: usize,
}

async fn upload_matrix(gpu: &Gpu, source: &impl ShardSource, name: &str) -> Result<Matrix> {
    let entry = entry(source, name)?;
    let [chunk] = entry.chunks.as_slice() else {
        return Err(Error::Unsupported { what: format!("{name} in row chunks"), supported: "one chunk".into() });
    };
    let (_, cols) = entry.rows_cols();
    let layout = source.chunk_layout(chunk).await?;
    Matrix::upload(gpu, name, entry.weight_format()?, chunk.rows, cols, &layout)
}

async fn dense(gpu: &Gpu, source: &impl ShardSource, prefix: &str) -> Result<Dense> {
    Ok(Dense {
        weight: upload_matrix(gpu, source, &format!("{prefix}.weight")).await?,
        bias: upload_vector(gpu, source, &format!("{prefix}.bias")).await?,
    })
}

async fn layer_norm(gpu: &Gpu, source: &impl ShardSource, prefix: &str) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: upload_vector(gpu, source, &format!("{prefix}.weight")).await?,
        bias: upload_vector(gpu, source, &format!("{prefix}.bias")).await?,
    })
}

/// Activations for one packed batch of T tokens.
struct Scratch {
    ids: wgpu::Buffer,       // [T] u32
    positions: wgpu::Buffer, // [T] u32
    types: wgpu::Buffer,     // [T] u32, zeros
    segments: wgpu::Buffer,  // [T] (start, end) u32 pairs
    h: wgpu::Buffer,         // [T, H] the hidden states
    tmp: wgpu::Buffer,       // [T, H]
    qkv: wgpu::Buffer,       // [T, 3H]
    context: wgpu::Buffer,   // [T, H] attention output
    inner: wgpu::Buffer,     // [T, I]
}

impl Encoder {
    /// Loads an encoder package; `max_batch_tokens` bounds the activations.
    pub async fn load_from(gpu: &Gpu, source: &impl ShardSource, max_batch_tokens: usize) -> Result<Encoder> {
        let config = source.manifest().config.clone();
        if config.architecture != Architecture::Bert {
            return Err(Error::Unsupported {
                what: format!("{:?} as an embedding model", config.architecture),
                supported: "bert".into(),
            });
        }
        let pooling = config.pooling.clone().unwrap_or(Pooling {
            mode: "mean".into(),
            normalize: true,
            max_seq_length: config.max_position_embeddings.min(ENCODER_MAX_KEYS),
        });
        let gelu = match config.hidden_act.as_str() {
            "gelu" => GeluKind::Erf,
            "gelu_new" | "gelu_pytorch_tanh" => GeluKind::Tanh,
            other => return Err(Error::Unsupported { what: format!("activation {other}"), supported: "gelu".into() }),
        };
        // BertForMaskedLM checkpoints prefix every name with "bert.".
        let root = if source.tensor("bert.embeddings.word_embeddings.weight").is_some() { "bert." } else { "" };
        let e = |s: &str| format!("{root}embeddings.{s}");
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = |s: &str| format!("{root}encoder.layer.{i}.{s}");
            layers.push(Layer {
                query: dense(gpu, source, &p("attention.self.query")).await?,
                key: dense(gpu, source, &p("attention.self.key")).await?,
                value: dense(gpu, source, &p("attention.self.value")).await?,
                attention_output: dense(gpu, source, &p("attention.output.dense")).await?,
                attention_norm: layer_norm(gpu, source, &p("attention.output.LayerNorm")).await?,
                intermediate: dense(gpu, source, &p("intermediate.dense")).await?,
                output: dense(gpu, source, &p("output.dense")).await?,
                output_norm: layer_norm(gpu, source, &p("output.LayerNorm")).await?,
            });
        }
        let encoder = Encoder {
            word_embeddings: upload_matrix(gpu, source, &e("word_embeddings.weight")).await?,
            position_embeddings: upload_matrix(gpu, source, &e("position_embeddings.weight")).await?,
            token_type_embeddings: upload_matrix(gpu, source, &e("token_type_embeddings.weight")).await?,
            embedding_norm: layer_norm(gpu, source, &e("LayerNorm")).await?,
            layers,
            gelu,
            pooling,
            max_batch_tokens: max_batch_tokens.max(ENCODER_MAX_KEYS),
            config,
        };
        gpu.check()?;
        Ok(encoder)
    }

    /// The longest input in tokens ([CLS] and [SEP] included).
    pub fn max_seq_length(&self) -> usize {
        self.pooling.max_seq_length.min(self.config.max_position_embeddings).min(ENCODER_MAX_KEYS)
    }

    /// One sentence vector per token sequence (each already truncated to
    /// `max_seq_length`), computed in as few packed batches as fit.
    pub async fn embed(&self, gpu: &Gpu, k: &Kernels, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let max = self.max_seq_length();
        for (i, s) in sequences.iter().enumerate() {
            if s.is_empty() || s.len() > max {
                return Err(Error::Shape {
                    op: "embed",
                    message: format!("input {i} has {} tokens; 1 to {max} are allowed", s.len()),
                });
            }
        }
        let mut out = Vec::with_capacity(sequences.len());
        let mut start = 0;
        while start < sequences.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < sequences.len() && tokens + sequences[end].len() <= self.max_batch_tokens {
                tokens += sequences[end].len();
                end += 1;
            }
            out.extend(self.embed_batch(gpu, k, &sequences[start..end]).await?);
            start = end;
        }
        Ok(out)
    }

    async fn embed_batch(&self, gpu: &Gpu, k: &Kernels, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (h, inner) = (c.hidden_size, c.intermediate_size);
        let t: usize = batch.iter().map(Vec::len).sum();
        let (ids, mut positions, mut segments) = (batch.concat(), Vec::with_capacity(t), Vec::with_capacity(2 * t));
        let mut start = 0u32;
        for s in batch {
            let end = start + s.len() as u32;
            positions.extend(0..s.len() as u32);
            segments.extend((0..s.len()).flat_map(|_| [start, end]));
            start = end;
        }
        let s = Scratch {
            ids: gpu.storage_with("encoder ids", bytemuck::cast_slice(&ids))?,
            positions: gpu.storage_with("encoder positions", bytemuck::cast_slice(&positions))?,
            types: gpu.storage("encoder token types", 4 * t as u64)?,
            segments: gpu.storage_with("encoder segments", bytemuck::cast_slice(&segments))?,
            h: gpu.storage("encoder hidden", (4 * t * h) as u64)?,
            tmp: gpu.storage("encoder tmp", (4 * t * h) as u64)?,
            qkv: gpu.storage("encoder qkv", (4 * t * 3 * h) as u64)?,
            context: gpu.storage("encoder context", (4 * t * h) as u64)?,
            inner: gpu.storage("encoder intermediate", (4 * t * inner) as u64)?,
        };
        let dispatches = self.forward(k, &s, t)?;
        gpu.run(&dispatches.iter().collect::<Vec<_>>());
        let states = gpu.read_f32("encoder hidden states", &s.h, t * h).await?;
        Ok(self.pool(&states, batch))
    }

    /// The forward pass as one list of dispatches (`BertModel.forward`).
    fn forward(&self, k: &Kernels, s: &Scratch, t: usize) -> Result<Vec<Dispatch>> {
        let c = &self.config;
        let (h, inner, eps) = (c.hidden_size, c.intermediate_size, c.norm_eps);
        let mut d = vec![
            // embeddings = LayerNorm(word + position + token type)
            k.embedding(&self.word_embeddings, &s.ids, &s.tmp, t)?,
            k.embedding(&self.position_embeddings, &s.positions, &s.context, t)?,
            k.add(&s.tmp, &s.context, t * h)?,
            k.embedding(&self.token_type_embeddings, &s.types, &s.context, t)?,
            k.add(&s.tmp, &s.context, t * h)?,
            k.layer_norm(&s.tmp, &self.embedding_norm.weight, &self.embedding_norm.bias, &s.h, t, h, eps)?,
        ];
        let fused = |part: usize| OutputSlice { stride: 3 * h, offset: part * h };
        for layer in &self.layers {
            // Self-attention: q, k, v side by side in one row, then
            // LayerNorm(h + dense(attention)).
            for (part, dense) in [&layer.query, &layer.key, &layer.value].into_iter().enumerate() {
                d.push(k.linear(&dense.weight, &s.h, &s.qkv, t, fused(part))?);
                d.push(k.bias_add(&s.qkv, &dense.bias, t, fused(part), h)?);
            }
            d.push(k.encoder_attention(&s.qkv, &s.segments, &s.context, t, c.num_heads, c.head_dim)?);
            let out = &layer.attention_output;
            d.push(k.linear(&out.weight, &s.context, &s.tmp, t, OutputSlice::whole(h))?);
            d.push(k.bias_add(&s.tmp, &out.bias, t, OutputSlice::whole(h), h)?);
            d.push(k.add(&s.tmp, &s.h, t * h)?);
            let norm = &layer.attention_norm;
            d.push(k.layer_norm(&s.tmp, &norm.weight, &norm.bias, &s.h, t, h, eps)?);
            // Feed-forward: LayerNorm(h + dense(gelu(dense(h)))).
            let up = &layer.intermediate;
            d.push(k.linear(&up.weight, &s.h, &s.inner, t, OutputSlice::whole(inner))?);
            d.push(k.bias_add(&s.inner, &up.bias, t, OutputSlice::whole(inner), inner)?);
            d.push(k.gelu(&s.inner, t * inner, self.gelu)?);
            let down = &layer.output;
            d.push(k.linear(&down.weight, &s.inner, &s.tmp, t, OutputSlice::whole(h))?);
            d.push(k.bias_add(&s.tmp, &down.bias, t, OutputSlice::whole(h), h)?);
            d.push(k.add(&s.tmp, &s.h, t * h)?);
            let norm = &layer.output_norm;
            d.push(k.layer_norm(&s.tmp, &norm.weight, &norm.bias, &s.h, t, h, eps)?);
        }
        Ok(d)
    }

    /// Sentence-transformers' Pooling (+ Normalize) over each sequence's rows.
    fn pool(&self, states: &[f32], batch: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let h = self.config.hidden_size;
        let mut start = 0;
        batch
            .iter()
            .map(|seq| {
                let rows = &states[start * h..(start + seq.len()) * h];
                start += seq.len();
                let mut v = if self.pooling.mode == "cls" {
                    rows[..h].to_vec()
                } else {
                    let mut sum = vec![0.0f32; h];
                    for row in rows.chunks_exact(h) {
                        sum.iter_mut().zip(row).for_each(|(s, x)| *s += x);
                    }
                    sum.iter().map(|s| s / seq.len() as f32).collect()
                };
                if self.pooling.normalize {
                    // As torch.nn.functional.normalize: divide by max(‖v‖, 1e-12).
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect()
    }
}
