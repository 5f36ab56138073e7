//! Phi3SmallForCausalLM (Phi-3-small-8k and -128k), read like the hub's
//! `modeling_phi3_small.py`: LayerNorm with bias, biased linears, GQA
//! attention that alternates between dense and block-sparse layers, the
//! gegelu MLP, and muP — embeddings × mup_embedding_multiplier, softmax
//! scale mup_attn_multiplier / head_dim, logits ÷ mup_width_multiplier —
//! with tied embeddings and the unused `dummy_token_indices` held at the f32
//! minimum. The converter regroups query_key_value into Q | K | V and
//! de-interleaves up_proj (gate half, linear half), so the blocks stay the
//! ones every architecture uses.

use super::blocks::{Attention, DecoderScratch, Fused, Gate, KvCache, Linear, Mask, Mlp, Norm, Rope};
use super::decoder::{CausalLm, DecoderIo, LoadPlan, Pass};
use super::recorder::Recorder;
use crate::backend::Backend;
use crate::config::{ModelConfig, Phi3SmallExtras};
use crate::error::{Error, Result};
use crate::formats::package::ShardSource;

struct Layer {
    input_layernorm: Norm,
    query_key_value: Linear, // [(heads + 2 kv_heads) head_dim, H] + bias, regrouped to Q | K | V
    dense: Linear,           // [H, heads head_dim] + bias
    post_attention_layernorm: Norm,
    mlp: Mlp, // up_proj [2 I, H] + bias (gate half first), down_proj [H, I] + bias
    /// Dense layers ((i + 1) % dense_attention_every_n_layers == 0) or block-sparse.
    sparse: bool,
}

pub struct Phi3Small {
    config: ModelConfig,
    extras: Phi3SmallExtras,
    embed_tokens: Linear, // [vocab, H]
    layers: Vec<Layer>,
    /// final_layernorm with weight and bias ÷ mup_width_multiplier: the
    /// logits' division folded into the norm.
    final_layernorm: Norm,
    /// The embedding's matrices as lm_head, with a bias that is 0 except the
    /// f32 minimum at the dummy tokens.
    lm_head: Linear,
    rope: Rope,
    dense_attention: Attention,
    sparse_attention: Attention,
    scratch: DecoderScratch,
}

impl Phi3Small {
    pub async fn load(b: &Backend, source: &impl ShardSource, plan: &LoadPlan) -> Result<Phi3Small> {
        let c = source.manifest().config.clone();
        let extras = c.phi3small.clone().ok_or_else(|| Error::Config {
            message: "a phi3small package without its muP and block-sparse settings; convert it again".into(),
        })?;
        if !c.tie_word_embeddings {
            return Err(Error::Unsupported {
                what: "Phi-3-small with an untied lm_head".into(),
                supported: "tied embeddings (every published Phi-3-small)".into(),
            });
        }
        let (h, eps) = (c.hidden_size, c.norm_eps);
        let biased = async |name: &str| Linear::load(b, source, name, true).await;
        let norm = async |name: &str| Norm::load(b, source, name, c.norm, h, eps).await;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            layers.push(Layer {
                input_layernorm: norm(&p("input_layernorm")).await?,
                query_key_value: biased(&p("self_attn.qkv_proj")).await?,
                dense: biased(&p("self_attn.o_proj")).await?,
                post_attention_layernorm: norm(&p("post_attention_layernorm")).await?,
                mlp: Mlp {
                    gate_up: Fused::new(vec![biased(&p("mlp.gate_up_proj")).await?]),
                    down: biased(&p("mlp.down_proj")).await?,
                    gate: Gate::Gegelu { limit: extras.gegelu_limit },
                },
                sparse: !extras.dense_layer(i),
            });
        }
        let embed_tokens = Linear::load(b, source, "model.embed_tokens", false).await?;
        let width = 1.0 / extras.width_multiplier;
        let final_layernorm = Norm::load_scaled(b, source, "model.norm", c.norm, h, eps, width).await?;
        let mut dummy = vec![0.0f32; c.vocab_size];
        for &id in &extras.dummy_token_ids {
            *dummy.get_mut(id as usize).ok_or_else(|| Error::Config {
                message: format!("dummy token {id} is outside the vocabulary of {}", c.vocab_size),
            })? = f32::MIN;
        }
        let lm_head = embed_tokens.with_bias(b.storage_with("dummy tokens", bytemuck::cast_slice(&dummy))?);
        let t = plan.max_tokens;
        let scratch = DecoderScratch::new(b, &c, t)?;
        Ok(Phi3Small {
            rope: Rope::new(b, &c)?,
            dense_attention: Attention::new(b, &c, Mask::Causal, t, plan.capacity)?,
            sparse_attention: Attention::new(b, &c, Mask::BlockSparse(extras.blocksparse), t, plan.capacity)?,
            config: c,
            extras,
            embed_tokens,
            layers,
            final_layernorm,
            lm_head,
            scratch,
        })
    }

    /// hidden_states += dense(self_attn(input_layernorm(hidden_states))), then
    /// hidden_states += mlp(post_attention_layernorm(hidden_states)).
    fn layer(&self, r: &mut Recorder, layer: &Layer, cache: &KvCache, i: usize, long_rope: bool) -> Result<()> {
        let (s, h) = (&self.scratch, self.config.hidden_size);
        layer.input_layernorm.forward(r, &s.x, &s.h)?;
        layer.query_key_value.forward(r, &s.h, &s.qkv)?;
        self.rope.forward(r, &s.qkv, long_rope)?;
        let attention = if layer.sparse { &self.sparse_attention } else { &self.dense_attention };
        attention.forward(r, &s.qkv, cache, i, &s.attn)?;
        layer.dense.forward(r, &s.attn, &s.h)?;
        r.add(&s.x, &s.h, h)?;
        layer.post_attention_layernorm.forward(r, &s.x, &s.h)?;
        layer.mlp.forward(r, &s.h, &s.mlp, &s.h)?;
        r.add(&s.x, &s.h, h)
    }
}

impl CausalLm for Phi3Small {
    fn record(&self, r: &mut Recorder, io: &DecoderIo, cache: &KvCache, pass: Pass) -> Result<()> {
        let s = &self.scratch;
        self.embed_tokens.lookup(r, &io.ids, &s.x)?;
        r.scale(&s.x, self.config.hidden_size, self.extras.embedding_multiplier)?;
        for (i, layer) in self.layers.iter().enumerate() {
            self.layer(r, layer, cache, i, pass.long_rope)?;
        }
        s.last.logits(r, &self.final_layernorm, &self.lm_head, &s.x, &s.h, &io.logits, pass.all_logits)
    }

    fn weight_gpu_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let norms = l.input_layernorm.gpu_bytes() + l.post_attention_layernorm.gpu_bytes();
                norms + l.query_key_value.gpu_bytes() + l.dense.gpu_bytes() + l.mlp.gpu_bytes()
            })
            .sum();
        // lm_head shares the embedding's matrices: only its bias is its own.
        let head_bias = self.lm_head.gpu_bytes() - self.embed_tokens.gpu_bytes();
        layers + self.embed_tokens.gpu_bytes() + self.final_layernorm.gpu_bytes() + head_bias
    }

    fn weight_read_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| l.query_key_value.read_bytes() + l.dense.read_bytes() + l.mlp.read_bytes())
            .sum();
        layers + self.lm_head.read_bytes()
    }
}
