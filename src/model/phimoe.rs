//! PhimoeForCausalLM (Phi-3.5-MoE, Phi-mini-MoE, Phi-tiny-MoE), read like
//! `modeling_phimoe.py`: Phi-3's pre-norm decoder with LayerNorm (weight and
//! bias) everywhere, biased q/k/v/o and lm_head, LongRoPE scaled by the
//! config's mscales, and a sparse mixture of experts (`moe.rs`) in place of
//! the MLP. q, k and v are separate projections written side by side into
//! one row, like Llama's.

use std::future::Future;
use std::pin::Pin;

use super::blocks::{Attention, Fused, KvCache, LastRow, Linear, Mask, Norm, Rope};
use super::decoder::{CausalLm, DecoderIo, LoadPlan, Pass};
use super::expert_cache::{total_stats, ExpertSizes, ExpertStats};
use super::moe::{MoeScratch, SparseMoe};
use super::recorder::Recorder;
use crate::backend::{Backend, Buf};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::formats::package::ShardSource;
use crate::gpu::{Command, Gpu};

struct Layer {
    input_layernorm: Norm,
    qkv_proj: Fused, // q_proj | k_proj | v_proj: [(heads + 2 kv_heads) head_dim, H], biased
    o_proj: Linear,  // [H, heads head_dim], biased
    post_attention_layernorm: Norm,
    block_sparse_moe: SparseMoe,
}

/// Activations for up to `max_tokens` tokens per forward call.
struct Scratch {
    x: Buf,          // [T, H] residual stream
    h: Buf,          // [T, H] normed input, then the attention's output
    qkv: Buf,        // [T, qkv width]
    attn: Buf,       // [T, heads head_dim]
    moe: MoeScratch, // router logits, routes, expert activations
    last: LastRow,   // the last token's row, when generating
}

pub struct PhiMoe {
    config: ModelConfig,
    embed_tokens: Linear, // [vocab, H]
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear, // [vocab, H], biased with lm_head_bias
    rope: Rope,
    attention: Attention,
    scratch: Scratch,
}

impl PhiMoe {
    pub async fn load(b: &Backend, source: &impl ShardSource, plan: &LoadPlan) -> Result<PhiMoe> {
        let c = source.manifest().config.clone();
        let moe = c.moe.clone().ok_or_else(|| Error::Config { message: "a phimoe config without experts".into() })?;
        let (h, eps, norm) = (c.hidden_size, c.norm_eps, c.norm);
        let gpu = &b.gpu_only("Phi-3.5-MoE")?.gpu;
        let slots = ExpertSizes::of(source)?.slots(gpu, plan.gpu_memory)?;
        let biased = async |name: &str| Linear::load(b, source, name, c.attention_bias).await;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            layers.push(Layer {
                input_layernorm: Norm::load(b, source, &p("input_layernorm"), norm, h, eps).await?,
                qkv_proj: Fused::new(vec![
                    biased(&p("self_attn.q_proj")).await?,
                    biased(&p("self_attn.k_proj")).await?,
                    biased(&p("self_attn.v_proj")).await?,
                ]),
                o_proj: biased(&p("self_attn.o_proj")).await?,
                post_attention_layernorm: Norm::load(b, source, &p("post_attention_layernorm"), norm, h, eps).await?,
                block_sparse_moe: SparseMoe::load(
                    b,
                    source,
                    &p("block_sparse_moe"),
                    &moe,
                    [h, c.intermediate_size],
                    slots,
                )
                .await?,
            });
        }
        let t = plan.max_tokens;
        let floats = |label: &str, n: usize| b.storage(label, 4 * n as u64);
        let qkv_width = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
        let scratch = Scratch {
            x: floats("x", t * h)?,
            h: floats("h", t * h)?,
            qkv: floats("qkv", t * qkv_width)?,
            attn: floats("attn", t * c.num_heads * c.head_dim)?,
            moe: MoeScratch::new(gpu, &moe, t, h, c.intermediate_size)?,
            last: LastRow::new(b, h)?,
        };
        let mask = match c.sliding_window {
            Some(window) if window > 0 => Mask::SlidingWindow(window),
            _ => Mask::Causal,
        };
        Ok(PhiMoe {
            embed_tokens: Linear::load(b, source, "model.embed_tokens", false).await?,
            norm: Norm::load(b, source, "model.norm", norm, h, eps).await?,
            lm_head: Linear::load(b, source, "lm_head", c.lm_head_bias).await?,
            rope: Rope::new(b, &c)?,
            attention: Attention::new(b, &c, mask, t, plan.capacity)?,
            config: c,
            layers,
            scratch,
        })
    }

    /// hidden_states += self_attn(input_layernorm(hidden_states)), then
    /// hidden_states += block_sparse_moe(post_attention_layernorm(hidden_states)).
    fn layer(&self, r: &mut Recorder, layer: &Layer, cache: &KvCache, i: usize, long_rope: bool) -> Result<()> {
        let (s, h) = (&self.scratch, self.config.hidden_size);
        layer.input_layernorm.forward(r, &s.x, &s.h)?;
        layer.qkv_proj.forward(r, &s.h, &s.qkv)?;
        self.rope.forward(r, &s.qkv, long_rope)?;
        self.attention.forward(r, &s.qkv, cache, i, &s.attn)?;
        layer.o_proj.forward(r, &s.attn, &s.h)?;
        r.add(&s.x, &s.h, h)?;
        layer.post_attention_layernorm.forward(r, &s.x, &s.h)?;
        layer.block_sparse_moe.forward(r, i, &s.h, &s.moe, &s.x)
    }
}

impl CausalLm for PhiMoe {
    fn record(&self, r: &mut Recorder, io: &DecoderIo, cache: &KvCache, pass: Pass) -> Result<()> {
        let s = &self.scratch;
        self.embed_tokens.lookup(r, &io.ids, &s.x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            self.layer(r, layer, cache, i, pass.long_rope)?;
        }
        s.last.logits(r, &self.norm, &self.lm_head, &s.x, &s.h, &io.logits, pass.all_logits)
    }

    fn weight_gpu_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let norms = l.input_layernorm.gpu_bytes() + l.post_attention_layernorm.gpu_bytes();
                norms + l.qkv_proj.gpu_bytes() + l.o_proj.gpu_bytes() + l.block_sparse_moe.gpu_bytes()
            })
            .sum();
        layers + self.embed_tokens.gpu_bytes() + self.norm.gpu_bytes() + self.lm_head.gpu_bytes()
    }

    fn run_experts<'a>(
        &'a self,
        gpu: &'a Gpu,
        layer: usize,
        tokens: usize,
        commands: &'a [Command],
    ) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>> {
        Box::pin(async move {
            let layer = self
                .layers
                .get(layer)
                .ok_or_else(|| Error::Gpu { context: "expert cache".into(), message: format!("no layer {layer}") })?;
            layer.block_sparse_moe.run_cached(gpu, &self.scratch.moe, tokens, commands).await
        })
    }

    fn expert_stats(&self) -> Option<ExpertStats> {
        total_stats(self.layers.iter().map(|l| l.block_sparse_moe.cache_stats()))
    }

    /// The active bytes: attention, the router and two experts per layer.
    fn weight_read_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| l.qkv_proj.read_bytes() + l.o_proj.read_bytes() + l.block_sparse_moe.active_read_bytes())
            .sum();
        layers + self.lm_head.read_bytes()
    }
}
