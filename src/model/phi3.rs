//! Phi3ForCausalLM (Phi-3, Phi-3.5-mini, Phi-4, Phi-4-mini) and
//! LlamaForCausalLM (SmolLM2): the same decoder layer, read like
//! `modeling_phi3.py`. Phi-3 checkpoints fuse qkv_proj and gate_up_proj;
//! Llama's keep q/k/v and gate/up apart, and are written side by side into
//! the same activation rows.

use super::blocks::{Attention, DecoderScratch, Fused, Gate, KvCache, Linear, Mask, Mlp, Norm, Rope};
use super::decoder::{CausalLm, DecoderIo, LoadPlan, Pass};
use super::recorder::Recorder;
use crate::backend::Backend;
use crate::config::{Architecture, ModelConfig};
use crate::error::Result;
use crate::formats::package::ShardSource;

struct Layer {
    input_layernorm: Norm,
    qkv_proj: Fused, // [(heads + 2 kv_heads) head_dim, H]
    o_proj: Linear,  // [H, heads head_dim]
    post_attention_layernorm: Norm,
    mlp: Mlp,
}

pub struct Phi3 {
    config: ModelConfig,
    embed_tokens: Linear, // [vocab, H]
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Option<Linear>, // [vocab, H]; None = tied to the embedding
    rope: Rope,
    attention: Attention,
    scratch: DecoderScratch,
}

impl Phi3 {
    pub async fn load(b: &Backend, source: &impl ShardSource, plan: &LoadPlan) -> Result<Phi3> {
        let c = source.manifest().config.clone();
        let (h, eps) = (c.hidden_size, c.norm_eps);
        let linear = async |name: &str| Linear::load(b, source, name, false).await;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let (qkv_proj, gate_up) = match c.architecture {
                Architecture::Llama => (
                    Fused::new(vec![
                        linear(&p("self_attn.q_proj")).await?,
                        linear(&p("self_attn.k_proj")).await?,
                        linear(&p("self_attn.v_proj")).await?,
                    ]),
                    Fused::new(vec![linear(&p("mlp.gate_proj")).await?, linear(&p("mlp.up_proj")).await?]),
                ),
                _ => (
                    Fused::new(vec![linear(&p("self_attn.qkv_proj")).await?]),
                    Fused::new(vec![linear(&p("mlp.gate_up_proj")).await?]),
                ),
            };
            layers.push(Layer {
                input_layernorm: Norm::load(b, source, &p("input_layernorm"), c.norm, h, eps).await?,
                qkv_proj,
                o_proj: linear(&p("self_attn.o_proj")).await?,
                post_attention_layernorm: Norm::load(b, source, &p("post_attention_layernorm"), c.norm, h, eps).await?,
                mlp: Mlp { gate_up, down: linear(&p("mlp.down_proj")).await?, gate: Gate::Silu },
            });
        }
        let embed_tokens = linear("model.embed_tokens").await?;
        let lm_head = match source.tensor("lm_head.weight") {
            Some(_) => Some(linear("lm_head").await?),
            None => None,
        };
        let norm = Norm::load(b, source, "model.norm", c.norm, h, eps).await?;
        let t = plan.max_tokens;
        let scratch = DecoderScratch::new(b, &c, t)?;
        let mask = match c.sliding_window {
            Some(window) if window > 0 => Mask::SlidingWindow(window),
            _ => Mask::Causal,
        };
        Ok(Phi3 {
            rope: Rope::new(b, &c)?,
            attention: Attention::new(b, &c, mask, t, plan.capacity)?,
            config: c,
            embed_tokens,
            layers,
            norm,
            lm_head,
            scratch,
        })
    }

    /// hidden_states += self_attn(input_layernorm(hidden_states)), then
    /// hidden_states += mlp(post_attention_layernorm(hidden_states)).
    /// Each residual add is folded into the norm after it (add_rms_norm):
    /// the layer leaves its MLP output in `h`, and the next layer's input
    /// norm (or, after the last layer, `record`) adds it.
    fn layer(&self, r: &mut Recorder, layer: &Layer, cache: &KvCache, i: usize, long_rope: bool) -> Result<()> {
        let s = &self.scratch;
        match i {
            0 => layer.input_layernorm.forward(r, &s.x, &s.h)?,
            _ => layer.input_layernorm.forward_after_add(r, &s.x, &s.h)?,
        }
        layer.qkv_proj.forward(r, &s.h, &s.qkv)?;
        self.rope.forward(r, &s.qkv, long_rope)?;
        self.attention.forward(r, &s.qkv, cache, i, &s.attn)?;
        layer.o_proj.forward(r, &s.attn, &s.h)?;
        layer.post_attention_layernorm.forward_after_add(r, &s.x, &s.h)?;
        layer.mlp.forward(r, &s.h, &s.mlp, &s.h)
    }
}

impl CausalLm for Phi3 {
    fn record(&self, r: &mut Recorder, io: &DecoderIo, cache: &KvCache, pass: Pass) -> Result<()> {
        let s = &self.scratch;
        self.embed_tokens.lookup(r, &io.ids, &s.x)?;
        if let Some(images) = &io.images {
            // Phi-3-vision: image rows replace the embeddings of their positions.
            r.push(r.backend.splice_rows(&images.flags, &images.rows, &s.x, r.tokens, self.config.hidden_size)?);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            self.layer(r, layer, cache, i, pass.long_rope)?;
        }
        if !self.layers.is_empty() {
            r.add(&s.x, &s.h, self.config.hidden_size)?; // the last MLP's residual
        }
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        s.last.logits(r, &self.norm, lm_head, &s.x, &s.h, &io.logits, pass.all_logits)
    }

    fn weight_gpu_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let norms = l.input_layernorm.gpu_bytes() + l.post_attention_layernorm.gpu_bytes();
                norms + l.qkv_proj.gpu_bytes() + l.o_proj.gpu_bytes() + l.mlp.gpu_bytes()
            })
            .sum();
        layers
            + self.embed_tokens.gpu_bytes()
            + self.norm.gpu_bytes()
            + self.lm_head.as_ref().map_or(0, Linear::gpu_bytes)
    }

    fn weight_read_bytes(&self) -> u64 {
        let layers: u64 =
            self.layers.iter().map(|l| l.qkv_proj.read_bytes() + l.o_proj.read_bytes() + l.mlp.read_bytes()).sum();
        layers + self.lm_head.as_ref().unwrap_or(&self.embed_tokens).read_bytes()
    }
}
