//! BERT-family sentence encoders (all-MiniLM-L6-v2 and kin): the forward pass
//! of transformers' `BertModel` followed by sentence-transformers' pooling and
//! normalisation. Sequences of a batch are packed back to back with no
//! padding; attention stays within each sequence (encoder_attention.wgsl).

use super::blocks::{Linear, Norm};
use super::recorder::{Recorder, Segment};
use crate::backend::{Backend, Buf};
use crate::config::{Activation, Architecture, ModelConfig, NormKind, Pooling, PoolingMode};
use crate::error::{Error, Result};
use crate::formats::package::ShardSource;
use crate::gpu::{GeluKind, OutputSlice, ENCODER_MAX_KEYS};

struct Layer {
    query: Linear, // [H, H] each, with biases
    key: Linear,
    value: Linear,
    attention_output: Linear, // [H, H]
    attention_norm: Norm,
    intermediate: Linear, // [I, H]
    output: Linear,       // [H, I]
    output_norm: Norm,
}

/// A loaded encoder: `embed` turns token sequences into sentence vectors.
pub struct Encoder {
    pub config: ModelConfig,
    pub pooling: Pooling,
    word_embeddings: Linear,       // [vocab, H]
    position_embeddings: Linear,   // [max_positions, H]
    token_type_embeddings: Linear, // [types, H]; every token is type 0
    embedding_norm: Norm,
    layers: Vec<Layer>,
    gelu: GeluKind,
    /// Tokens per forward pass; longer batches are split.
    max_batch_tokens: usize,
}

/// Activations for one packed batch of T tokens.
struct Scratch {
    ids: Buf,       // [T] u32
    positions: Buf, // [T] u32
    types: Buf,     // [T] u32, zeros
    segments: Buf,  // [T] (start, end) u32 pairs
    h: Buf,         // [T, H] the hidden states
    tmp: Buf,       // [T, H]
    qkv: Buf,       // [T, 3H]
    context: Buf,   // [T, H] attention output
    inner: Buf,     // [T, I]
    step: Buf,      // Step (unused by encoders: no cache)
}

impl Encoder {
    /// Loads an encoder package; `max_batch_tokens` bounds the activations.
    pub async fn load_from(b: &Backend, source: &impl ShardSource, max_batch_tokens: usize) -> Result<Encoder> {
        let config = source.manifest().config.clone();
        if config.architecture != Architecture::Bert {
            return Err(Error::Unsupported {
                what: format!("{:?} as an embedding model", config.architecture),
                supported: "bert".into(),
            });
        }
        let pooling = config.pooling.clone().unwrap_or(Pooling {
            mode: PoolingMode::Mean,
            normalize: true,
            max_seq_length: config.max_position_embeddings.min(ENCODER_MAX_KEYS),
        });
        let gelu = match config.activation {
            Activation::Gelu => GeluKind::Erf,
            Activation::GeluTanh => GeluKind::Tanh,
            other => {
                return Err(Error::Unsupported { what: format!("activation {other:?}"), supported: "gelu".into() })
            }
        };
        let (h, eps) = (config.hidden_size, config.norm_eps);
        let dense = async |name: &str| Linear::load(b, source, name, true).await;
        let table = async |name: &str| Linear::load(b, source, name, false).await;
        let layer_norm = async |name: &str| Norm::load(b, source, name, NormKind::Layer, h, eps).await;
        // BertForMaskedLM checkpoints prefix every name with "bert.".
        let root = if source.tensor("bert.embeddings.word_embeddings.weight").is_some() { "bert." } else { "" };
        let e = |s: &str| format!("{root}embeddings.{s}");
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = |s: &str| format!("{root}encoder.layer.{i}.{s}");
            layers.push(Layer {
                query: dense(&p("attention.self.query")).await?,
                key: dense(&p("attention.self.key")).await?,
                value: dense(&p("attention.self.value")).await?,
                attention_output: dense(&p("attention.output.dense")).await?,
                attention_norm: layer_norm(&p("attention.output.LayerNorm")).await?,
                intermediate: dense(&p("intermediate.dense")).await?,
                output: dense(&p("output.dense")).await?,
                output_norm: layer_norm(&p("output.LayerNorm")).await?,
            });
        }
        let encoder = Encoder {
            word_embeddings: table(&e("word_embeddings")).await?,
            position_embeddings: table(&e("position_embeddings")).await?,
            token_type_embeddings: table(&e("token_type_embeddings")).await?,
            embedding_norm: layer_norm(&e("LayerNorm")).await?,
            layers,
            gelu,
            pooling,
            max_batch_tokens: max_batch_tokens.max(ENCODER_MAX_KEYS),
            config,
        };
        b.check()?;
        Ok(encoder)
    }

    /// The longest input in tokens ([CLS] and [SEP] included).
    pub fn max_seq_length(&self) -> usize {
        self.pooling.max_seq_length.min(self.config.max_position_embeddings).min(ENCODER_MAX_KEYS)
    }

    /// One sentence vector per token sequence (each already truncated to
    /// `max_seq_length`), computed in as few packed batches as fit.
    pub async fn embed(&self, b: &Backend, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
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
            out.extend(self.embed_batch(b, &sequences[start..end]).await?);
            start = end;
        }
        Ok(out)
    }

    async fn embed_batch(&self, b: &Backend, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
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
            ids: b.storage_with("encoder ids", bytemuck::cast_slice(&ids))?,
            positions: b.storage_with("encoder positions", bytemuck::cast_slice(&positions))?,
            types: b.storage("encoder token types", 4 * t as u64)?,
            segments: b.storage_with("encoder segments", bytemuck::cast_slice(&segments))?,
            h: b.storage("encoder hidden", (4 * t * h) as u64)?,
            tmp: b.storage("encoder tmp", (4 * t * h) as u64)?,
            qkv: b.storage("encoder qkv", (4 * t * 3 * h) as u64)?,
            context: b.storage("encoder context", (4 * t * h) as u64)?,
            inner: b.storage("encoder intermediate", (4 * t * inner) as u64)?,
            step: b.step_buffer()?,
        };
        let mut r = Recorder::new(b, t, &s.step);
        self.forward(&mut r, &s)?;
        for segment in r.finish() {
            if let Segment::Run(ops) = segment {
                b.run(&ops)?;
            }
        }
        let states = b.read_f32("encoder hidden states", &s.h, t * h).await?;
        Ok(self.pool(&states, batch))
    }

    /// The forward pass (`BertModel.forward`).
    fn forward(&self, r: &mut Recorder, s: &Scratch) -> Result<()> {
        let c = &self.config;
        let (h, t) = (c.hidden_size, r.tokens);
        // embeddings = LayerNorm(word + position + token type)
        self.word_embeddings.lookup(r, &s.ids, &s.tmp)?;
        self.position_embeddings.lookup(r, &s.positions, &s.context)?;
        r.add(&s.tmp, &s.context, h)?;
        self.token_type_embeddings.lookup(r, &s.types, &s.context)?;
        r.add(&s.tmp, &s.context, h)?;
        self.embedding_norm.forward(r, &s.tmp, &s.h)?;
        let fused = |part: usize| OutputSlice { stride: 3 * h, offset: part * h };
        for layer in &self.layers {
            // Self-attention: q, k, v side by side in one row, then
            // LayerNorm(h + dense(attention)).
            layer.query.forward_into(r, &s.h, &s.qkv, fused(0))?;
            layer.key.forward_into(r, &s.h, &s.qkv, fused(1))?;
            layer.value.forward_into(r, &s.h, &s.qkv, fused(2))?;
            r.push(r.backend.encoder_attention(&s.qkv, &s.segments, &s.context, t, c.num_heads, c.head_dim)?);
            layer.attention_output.forward(r, &s.context, &s.tmp)?;
            r.add(&s.tmp, &s.h, h)?;
            layer.attention_norm.forward(r, &s.tmp, &s.h)?;
            // Feed-forward: LayerNorm(h + dense(gelu(dense(h)))).
            layer.intermediate.forward(r, &s.h, &s.inner)?;
            r.push(r.backend.gelu(&s.inner, t * c.intermediate_size, self.gelu)?);
            layer.output.forward(r, &s.inner, &s.tmp)?;
            r.add(&s.tmp, &s.h, h)?;
            layer.output_norm.forward(r, &s.tmp, &s.h)?;
        }
        Ok(())
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
                let mut v = if self.pooling.mode == PoolingMode::Cls {
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
