//! `ModelConfig`: the architecture facts every later stage needs, read from a
//! Hugging Face config.json (the published key style and the transformers-5
//! `rope_parameters` style) or from GGUF metadata.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::formats::gguf::Gguf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Phi3ForCausalLM: Phi-3, Phi-3.5-mini, Phi-4, Phi-4-mini.
    Phi3,
    /// LlamaForCausalLM (SmolLM2, the real model the tests run).
    Llama,
    /// PhimoeForCausalLM: Phi-3.5-MoE, Phi-mini-MoE, Phi-tiny-MoE.
    PhiMoe,
    /// Phi3SmallForCausalLM (remote code): Phi-3-small-8k and -128k.
    Phi3Small,
    /// BERT-family sentence encoders (retrieval).
    Bert,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "phi3 (Phi3ForCausalLM), phimoe (PhimoeForCausalLM), phi3small \
        (Phi3SmallForCausalLM), llama (LlamaForCausalLM), bert (BertModel)";

    /// The normalisation this architecture's blocks use.
    pub fn norm(self) -> NormKind {
        match self {
            Architecture::Phi3 | Architecture::Llama => NormKind::Rms,
            Architecture::Bert | Architecture::PhiMoe | Architecture::Phi3Small => NormKind::Layer,
        }
    }

    pub fn parse(name: &str) -> Result<Architecture> {
        match name {
            "phi3" | "Phi3ForCausalLM" | "phi3_v" | "Phi3VForCausalLM" => Ok(Self::Phi3),
            "llama" | "LlamaForCausalLM" => Ok(Self::Llama),
            "phimoe" | "PhimoeForCausalLM" | "PhiMoEForCausalLM" => Ok(Self::PhiMoe),
            "phi3small" | "Phi3SmallForCausalLM" => Ok(Self::Phi3Small),
            "bert" | "BertModel" | "BertForMaskedLM" => Ok(Self::Bert),
            other => {
                Err(Error::Unsupported { what: format!("architecture {other}"), supported: Self::SUPPORTED.into() })
            }
        }
    }
}

/// The MLP's activation, read once from `hidden_act`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU (swish): the gated MLPs of Phi-3 and Llama.
    Silu,
    /// Exact GELU with erf (BERT, `nn.GELU()`).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// Phi-3-small's gated quick-GELU: a·sigmoid(1.702·a)·(b + 1) of the
    /// clamped halves (the converter de-interleaves them).
    Gegelu,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Activation> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_tanh" => Ok(Activation::GeluTanh),
            "gegelu" => Ok(Activation::Gegelu),
            other => Err(Error::Unsupported {
                what: format!("activation `{other}`"),
                supported: "silu, gelu, gelu_new / gelu_pytorch_tanh, gegelu".into(),
            }),
        }
    }
}

/// How the blocks normalise their input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// RMSNorm with a weight (Phi-3, Llama).
    Rms,
    /// LayerNorm with weight and bias (BERT, Phi-3.5-MoE).
    Layer,
}

/// LongRoPE (Phi-3-128k, Phi-3.5-mini, Phi-4-mini): per-frequency factors,
/// switched from short to long past `original_max_position_embeddings`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LongRope {
    pub short_factor: Vec<f32>,
    pub long_factor: Vec<f32>,
    pub original_max_position_embeddings: usize,
    /// Multiplies cos and sin at every length (with the short factors when
    /// `long_attention_factor` is set).
    pub attention_factor: f32,
    /// PhiMoE's `long_mscale`: multiplies cos and sin with the long factors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_attention_factor: Option<f32>,
}

impl LongRope {
    /// What multiplies cos and sin with the short or the long factors.
    pub fn attention_factor(&self, long: bool) -> f32 {
        match long {
            true => self.long_attention_factor.unwrap_or(self.attention_factor),
            false => self.attention_factor,
        }
    }
}

/// A sparse mixture of experts in place of the MLP (PhiMoE).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Moe {
    /// Experts per layer (`num_local_experts`).
    pub experts: usize,
    /// Experts each token runs (`num_experts_per_tok`; sparsemixer needs 2).
    pub experts_per_token: usize,
    /// Sparsemixer's `router_jitter_noise`: an expert is a candidate while
    /// (max − score) / max(|score|, max) ≤ 2 · jitter.
    pub router_jitter: f32,
}

/// Phi-3-small's block-sparse attention pattern (`blocksparse_*`): query
/// block q of head h sees key block k <= q when q − k < `local_blocks` or
/// (k + h·head_step + 1) % `vert_stride` == 0, within the token-level causal mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSparse {
    /// Positions per block.
    pub block: usize,
    pub local_blocks: usize,
    pub vert_stride: usize,
    /// How far each query head's stripes shift (0: every head alike,
    /// `blocksparse_homo_head_pattern`; else max(1, vert_stride / heads)).
    pub head_step: usize,
}

impl BlockSparse {
    /// Whether query head `head` at position `query` sees the key at `key`.
    pub fn sees(&self, head: usize, query: usize, key: usize) -> bool {
        let (q, k) = (query / self.block, key / self.block);
        key <= query && (q - k < self.local_blocks || (k + head * self.head_step + 1).is_multiple_of(self.vert_stride))
    }

    /// Keys the attention kernel reads for the query at `query` for the
    /// `group` query heads from `first_head` (one KV head): those some head of
    /// the group sees, counted as attention.wgsl's `sparse_keys` counts them.
    pub fn keys_read(&self, first_head: usize, group: usize, query: usize) -> usize {
        let local_first = (query / self.block + 1).saturating_sub(self.local_blocks);
        let residue = |h: usize| (self.vert_stride - (1 + h * self.head_step) % self.vert_stride) % self.vert_stride;
        let mut residues: Vec<usize> = (first_head..first_head + group).map(residue).collect();
        residues.sort_unstable();
        residues.dedup();
        let partial = residues.iter().filter(|&&r| r < local_first % self.vert_stride).count();
        let remote_blocks = local_first / self.vert_stride * residues.len() + partial;
        remote_blocks * self.block + query + 1 - local_first * self.block
    }

    /// Keys one block-sparse layer reads for the query at `query`, summed
    /// over its `kv_heads` KV heads, each serving `heads / kv_heads` query heads.
    pub fn layer_keys_read(&self, heads: usize, kv_heads: usize, query: usize) -> usize {
        let group = heads / kv_heads;
        (0..kv_heads).map(|g| self.keys_read(g * group, group, query)).sum()
    }
}

/// Phi-3-small's muP multipliers, activation limit, sparse layers and unused ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phi3SmallExtras {
    /// Multiplies the embeddings (`mup_embedding_multiplier`).
    pub embedding_multiplier: f32,
    /// Divides the logits (`mup_width_multiplier`).
    pub width_multiplier: f32,
    /// gegelu clamps its gate to ≤ limit and its linear half to ±limit.
    pub gegelu_limit: Option<f32>,
    pub blocksparse: BlockSparse,
    /// Layer i is dense when (i + 1) % n == 0 (0: every layer block-sparse).
    pub dense_every_n_layers: usize,
    /// Ids whose logits are the f32 minimum (`dummy_token_indices`).
    pub dummy_token_ids: Vec<u32>,
}

impl Phi3SmallExtras {
    /// Whether layer `layer` attends densely.
    pub fn dense_layer(&self, layer: usize) -> bool {
        self.dense_every_n_layers > 0 && (layer + 1).is_multiple_of(self.dense_every_n_layers)
    }
}

/// PhiMoE's `router_jitter_noise` (every published model; GGUF has no key for it).
pub const DEFAULT_ROUTER_JITTER: f32 = 0.01;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Rotated dims per head (head_dim × partial_rotary_factor).
    pub rotary_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub longrope: Option<LongRope>,
    /// Attend to the last `sliding_window` positions only (Phi-3-mini-4k: 2047).
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    pub activation: Activation,
    pub norm: NormKind,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// q/k/v/o projections have biases (PhiMoE's `attention_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    /// lm_head has a bias (PhiMoE's `lm_head_bias`).
    #[serde(default)]
    pub lm_head_bias: bool,
    /// The sparse MoE block's shape (PhiMoE only); `intermediate_size` is one expert's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<Moe>,
    /// How an encoder's token states become one sentence vector (encoders only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// The softmax scale when it is not 1/sqrt(head_dim) (Phi-3-small's muP:
    /// mup_attn_multiplier / head_dim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_scale: Option<f32>,
    /// Phi-3-small only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phi3small: Option<Phi3SmallExtras>,
    /// The image tower of Phi-3-vision and Phi-3.5-vision (a Phi3 decoder that takes images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<VisionConfig>,
}

/// Phi-3(.5)-vision's CLIP tower and its HD transform (config.json's
/// `img_processor`, preprocessor_config.json's `num_crops`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// CLIP's width (1024 in CLIP-L/14-336); a merged 2×2 patch row is 4× this.
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    /// Layers that run: the features are `hidden_states[layer_idx]`, so the
    /// layers after it never do (23 of CLIP-L's 24).
    pub num_layers: usize,
    /// Square crops of `image_size` pixels in `patch_size` patches (336, 14).
    pub image_size: usize,
    pub patch_size: usize,
    pub norm_eps: f32,
    /// Most crops the HD transform cuts an image into (besides the global view).
    pub num_crops: usize,
}

impl VisionConfig {
    /// The tower's CLIP-L/14-336 shape, which config.json only names.
    const CLIP_L_336: &'static str = "openai/clip-vit-large-patch14-336";
    /// Phi-3.5-vision's published processor config (Phi-3-vision's says 16).
    pub const DEFAULT_NUM_CROPS: usize = 4;

    /// Patches per side of a crop (24).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// From config.json's `img_processor`; `num_crops` from preprocessor_config.json.
    pub fn from_hf(json: &Json, num_crops: usize) -> Result<VisionConfig> {
        let img = key(json, "img_processor")
            .ok_or_else(|| Error::Config { message: "a Phi-3-vision config.json needs `img_processor`".into() })?;
        let embd = key(json, "embd_layer");
        let embd_str = |name: &str| embd.and_then(|e| key(e, name)).and_then(Json::as_str);
        if embd_str("hd_transform_order").is_some_and(|o| o != "sub_glb")
            || embd_str("projection_cls").is_some_and(|p| p != "mlp")
        {
            return Err(Error::Unsupported {
                what: format!("embd_layer {}", embd.map(Json::to_string).unwrap_or_default()),
                supported: "the HD transform in sub_glb order with the mlp projection (Phi-3-vision, Phi-3.5-vision)"
                    .into(),
            });
        }
        let model = key(img, "model_name").and_then(Json::as_str).unwrap_or(Self::CLIP_L_336);
        let clip = match (key(img, "clip_config"), model) {
            (Some(clip), _) => clip.clone(),
            (None, Self::CLIP_L_336) => serde_json::json!({
                "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
            }),
            (None, other) => {
                return Err(Error::Unsupported {
                    what: format!("image tower {other}"),
                    supported: format!("{} (or `img_processor.clip_config`)", Self::CLIP_L_336),
                })
            }
        };
        if key(&clip, "hidden_act").and_then(Json::as_str).unwrap_or("quick_gelu") != "quick_gelu" {
            return Err(Error::Unsupported {
                what: "a CLIP activation other than quick_gelu".into(),
                supported: "quick_gelu".into(),
            });
        }
        let layers = required_usize(&clip, "num_hidden_layers")?;
        // hidden_states[i]: 0 is the embeddings, k the output of layer k.
        let layer_idx = key(img, "layer_idx").and_then(Json::as_i64).unwrap_or(-2);
        let num_layers = if layer_idx < 0 { layers as i64 + 1 + layer_idx } else { layer_idx };
        if num_layers < 0 || num_layers > layers as i64 {
            return Err(Error::Config {
                message: format!("img_processor.layer_idx {layer_idx} for {layers} CLIP layers"),
            });
        }
        if key(img, "type_feature").and_then(Json::as_str).is_some_and(|t| t != "patch") {
            return Err(Error::Unsupported {
                what: "img_processor.type_feature other than patch".into(),
                supported: "patch".into(),
            });
        }
        let vision = VisionConfig {
            hidden_size: required_usize(&clip, "hidden_size")?,
            intermediate_size: required_usize(&clip, "intermediate_size")?,
            num_heads: required_usize(&clip, "num_attention_heads")?,
            num_layers: num_layers as usize,
            image_size: required_usize(&clip, "image_size")?,
            patch_size: required_usize(&clip, "patch_size")?,
            norm_eps: key(&clip, "layer_norm_eps").and_then(Json::as_f64).unwrap_or(1e-5) as f32,
            num_crops: num_crops.max(1),
        };
        // The HD transform cuts 336-pixel crops, and the merge pairs patches.
        if vision.image_size != crate::image::CROP
            || vision.patch_size == 0
            || !vision.grid().is_multiple_of(2)
            || !vision.hidden_size.is_multiple_of(vision.num_heads.max(1))
            || vision.num_heads == 0
        {
            return Err(Error::Config {
                message: format!(
                    "a CLIP tower of {}-pixel crops in {}-pixel patches, width {} in {} heads; the HD transform needs 336-pixel crops of an even patch grid",
                    vision.image_size, vision.patch_size, vision.hidden_size, vision.num_heads
                ),
            });
        }
        Ok(vision)
    }
}

/// How an encoder's token states become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingMode {
    /// The mean over the sequence's tokens.
    Mean,
    /// The first token's state.
    Cls,
}

/// Sentence-transformers' pooling recipe for an embedding model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pooling {
    pub mode: PoolingMode,
    /// L2-normalise the pooled vector.
    pub normalize: bool,
    /// Longer inputs are truncated to this many tokens ([CLS] and [SEP] included).
    pub max_seq_length: usize,
}

/// Most experts per layer the routing kernel takes (moe_route.wgsl).
pub const MAX_EXPERTS: usize = 256;

fn key<'a>(json: &'a Json, name: &str) -> Option<&'a Json> {
    json.get(name).filter(|v| !v.is_null())
}

fn required_usize(json: &Json, name: &str) -> Result<usize> {
    key(json, name)
        .and_then(Json::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| Error::Config { message: format!("config.json has no integer `{name}`") })
}

fn factors(json: &Json, name: &str) -> Result<Vec<f32>> {
    let list = key(json, name)
        .and_then(Json::as_array)
        .ok_or_else(|| Error::Config { message: format!("longrope needs a `{name}` list") })?;
    list.iter()
        .map(|v| v.as_f64().map(|f| f as f32))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::Config { message: format!("`{name}` must hold numbers") })
}

/// HF's default LongRoPE attention factor: sqrt(1 + ln(s) / ln(original)), s = max / original.
fn default_attention_factor(max: usize, original: usize) -> f32 {
    let scale = max as f64 / original as f64;
    if scale <= 1.0 {
        1.0
    } else {
        (1.0 + scale.ln() / (original as f64).ln()).sqrt() as f32
    }
}

fn token_ids(json: Option<&Json>) -> Vec<u32> {
    match json {
        Some(Json::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Json::Array(items)) => items.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect(),
        _ => Vec::new(),
    }
}

/// Phi3SmallConfig.intermediate_size: `ff_intermediate_size`, else
/// ff_dim_multiplier · (hidden / 3) · 2, rounded up to 256 with `gegelu_pad_to_256`.
fn phi3small_intermediate_size(json: &Json, hidden: usize) -> Result<usize> {
    if let Some(size) = key(json, "ff_intermediate_size").and_then(Json::as_u64) {
        return Ok(size as usize);
    }
    let multiplier = key(json, "ff_dim_multiplier").and_then(Json::as_u64).ok_or_else(|| Error::Config {
        message: "a phi3small config needs ff_intermediate_size or ff_dim_multiplier".into(),
    })? as usize;
    let size = multiplier * (hidden / 3) * 2;
    Ok(match key(json, "gegelu_pad_to_256").and_then(Json::as_bool).unwrap_or(true) {
        true => size.next_multiple_of(256),
        false => size,
    })
}

/// Phi-3-small's muP, gegelu and block-sparse settings (Phi3SmallConfig's defaults where absent).
fn phi3small_extras(json: &Json, heads: usize) -> Result<Phi3SmallExtras> {
    let number = |name: &str, default: f64| key(json, name).and_then(Json::as_f64).unwrap_or(default);
    let count = |name: &str, default: u64| key(json, name).and_then(Json::as_u64).unwrap_or(default) as usize;
    if (number("rope_position_scale", 1.0) - 1.0).abs() > f64::EPSILON {
        return Err(Error::Unsupported {
            what: format!("rope_position_scale {}", number("rope_position_scale", 1.0)),
            supported: "1.0 (every published Phi-3-small)".into(),
        });
    }
    let (block, vert_stride) = (count("blocksparse_block_size", 64), count("blocksparse_vert_stride", 8));
    let kernel_block = count("blocksparse_triton_kernel_block_size", block as u64);
    if block == 0 || vert_stride == 0 || kernel_block != block {
        return Err(Error::Config {
            message: format!(
                "blocksparse block {block}, kernel block {kernel_block} and vertical stride {vert_stride} must be \
                 positive and the blocks equal"
            ),
        });
    }
    let homo = key(json, "blocksparse_homo_head_pattern").and_then(Json::as_bool).unwrap_or(false);
    // multiplied, not used alone: a mup multiplier of 0 means "off" in the reference.
    let multiplier = |name: &str, default: f64| match number(name, default) {
        m if m > 0.0 => m as f32,
        _ => 1.0,
    };
    Ok(Phi3SmallExtras {
        embedding_multiplier: multiplier("mup_embedding_multiplier", 10.0),
        width_multiplier: multiplier("mup_width_multiplier", 8.0),
        gegelu_limit: key(json, "gegelu_limit").and_then(Json::as_f64).map(|v| v as f32),
        blocksparse: BlockSparse {
            block,
            local_blocks: count("blocksparse_num_local_blocks", 16),
            vert_stride,
            head_step: if homo { 0 } else { (vert_stride / heads).max(1) },
        },
        dense_every_n_layers: count("dense_attention_every_n_layers", 0),
        dummy_token_ids: token_ids(key(json, "dummy_token_indices")),
    })
}

impl ModelConfig {
    /// Whether a sequence of `len` tokens uses LongRoPE's long factors (at
    /// every position, as transformers does once it exceeds the original context).
    pub fn uses_long_rope(&self, len: usize) -> bool {
        self.longrope.as_ref().is_some_and(|l| len > l.original_max_position_embeddings)
    }

    /// From a Hugging Face config.json.
    pub fn from_hf(json: &Json) -> Result<ModelConfig> {
        let arch_name = key(json, "model_type")
            .and_then(Json::as_str)
            .or_else(|| key(json, "architectures").and_then(|a| a.get(0)).and_then(Json::as_str))
            .ok_or_else(|| Error::Config {
                message: "config.json has neither `model_type` nor `architectures`".into(),
            })?;
        let architecture = Architecture::parse(arch_name)?;
        let hidden_size = required_usize(json, "hidden_size")?;
        let num_heads = required_usize(json, "num_attention_heads")?;
        if num_heads == 0 || hidden_size == 0 {
            return Err(Error::Config { message: "hidden_size and num_attention_heads must be positive".into() });
        }
        let num_kv_heads = key(json, "num_key_value_heads").and_then(Json::as_u64).map_or(num_heads, |v| v as usize);
        let head_dim = key(json, "head_dim").and_then(Json::as_u64).map_or(hidden_size / num_heads, |v| v as usize);
        // transformers 5 moves rope settings into `rope_parameters`; published configs keep them at the top.
        let rope = key(json, "rope_parameters").or_else(|| key(json, "rope_scaling"));
        let rope_key = |name: &str| rope.and_then(|r| key(r, name)).or_else(|| key(json, name));
        let partial = rope_key("partial_rotary_factor").and_then(Json::as_f64).unwrap_or(1.0);
        let rotary_dim = ((head_dim as f64 * partial) as usize) & !1;
        let max_position_embeddings =
            key(json, "max_position_embeddings").and_then(Json::as_u64).unwrap_or(4096) as usize;
        let rope_type = rope.and_then(|r| key(r, "rope_type").or_else(|| key(r, "type"))).and_then(Json::as_str);
        let longrope = match rope_type {
            Some("longrope") | Some("su") => {
                let r = rope.ok_or_else(|| Error::Config { message: "longrope without parameters".into() })?;
                let original = rope_key("original_max_position_embeddings").and_then(Json::as_u64).ok_or_else(|| {
                    Error::Config { message: "longrope needs original_max_position_embeddings".into() }
                })? as usize;
                let (short_factor, long_factor) = (factors(r, "short_factor")?, factors(r, "long_factor")?);
                if short_factor.len() != rotary_dim / 2 || long_factor.len() != rotary_dim / 2 {
                    return Err(Error::Config {
                        message: format!(
                            "longrope factor lists have {} and {} entries; rotary dim {rotary_dim} needs {}",
                            short_factor.len(),
                            long_factor.len(),
                            rotary_dim / 2
                        ),
                    });
                }
                let number = |name: &str| key(r, name).and_then(Json::as_f64).map(|f| f as f32);
                let computed = number("attention_factor")
                    .unwrap_or_else(|| default_attention_factor(max_position_embeddings, original));
                // PhiMoE and Phi-3-small scale by their configured mscales instead of the computed factor.
                let (attention_factor, long_attention_factor) = match architecture {
                    Architecture::PhiMoe | Architecture::Phi3Small => {
                        (number("short_mscale").unwrap_or(computed), Some(number("long_mscale").unwrap_or(computed)))
                    }
                    _ => (computed, None),
                };
                Some(LongRope {
                    short_factor,
                    long_factor,
                    original_max_position_embeddings: original,
                    attention_factor,
                    long_attention_factor,
                })
            }
            None | Some("default") => None,
            Some(other) => {
                return Err(Error::Unsupported {
                    what: format!("rope scaling `{other}`"),
                    supported: "none, longrope (su)".into(),
                })
            }
        };
        let phi3small = match architecture {
            Architecture::Phi3Small => Some(phi3small_extras(json, num_heads)?),
            _ => None,
        };
        let small = phi3small.is_some();
        let intermediate_size = match small {
            true => phi3small_intermediate_size(json, hidden_size)?,
            false => required_usize(json, "intermediate_size")?,
        };
        let attention_scale = match small && key(json, "mup_use_scaling").and_then(Json::as_bool).unwrap_or(true) {
            true => {
                Some(key(json, "mup_attn_multiplier").and_then(Json::as_f64).unwrap_or(1.0) as f32 / head_dim as f32)
            }
            false => None,
        };
        let config = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size,
            num_layers: required_usize(json, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
            vocab_size: required_usize(json, "vocab_size")?,
            max_position_embeddings,
            norm_eps: key(json, "rms_norm_eps")
                .or_else(|| key(json, "layer_norm_eps"))
                .or_else(|| key(json, "layer_norm_epsilon"))
                .and_then(Json::as_f64)
                .unwrap_or(1e-5) as f32,
            rope_theta: rope_key("rope_theta")
                .or_else(|| key(json, "rope_embedding_base"))
                .and_then(Json::as_f64)
                .unwrap_or(10_000.0) as f32,
            longrope,
            sliding_window: key(json, "sliding_window").and_then(Json::as_u64).map(|v| v as usize),
            // PretrainedConfig's default is tied; Phi-3-small's config relies on it.
            tie_word_embeddings: key(json, "tie_word_embeddings").and_then(Json::as_bool).unwrap_or(small),
            activation: Activation::parse(key(json, "hidden_act").and_then(Json::as_str).unwrap_or("silu"))?,
            norm: architecture.norm(),
            bos_token_id: key(json, "bos_token_id").and_then(Json::as_u64).map(|v| v as u32),
            eos_token_ids: token_ids(key(json, "eos_token_id")),
            attention_bias: key(json, "attention_bias").and_then(Json::as_bool).unwrap_or(false),
            lm_head_bias: key(json, "lm_head_bias").and_then(Json::as_bool).unwrap_or(false),
            moe: match architecture {
                Architecture::PhiMoe => Some(Moe {
                    experts: required_usize(json, "num_local_experts")?,
                    experts_per_token: required_usize(json, "num_experts_per_tok")?,
                    router_jitter: key(json, "router_jitter_noise")
                        .and_then(Json::as_f64)
                        .map_or(DEFAULT_ROUTER_JITTER, |v| v as f32),
                }),
                _ => None,
            },
            pooling: None,
            attention_scale,
            phi3small,
            // num_crops is the processor's (preprocessor_config.json): the importer sets it.
            vision: match key(json, "img_processor") {
                Some(_) => Some(VisionConfig::from_hf(json, VisionConfig::DEFAULT_NUM_CROPS)?),
                None => None,
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// From GGUF metadata (`{arch}.*` keys). LongRoPE factors live in GGUF
    /// tensors; the converter adds them with [`ModelConfig::set_longrope_factors`].
    pub fn from_gguf(g: &Gguf) -> Result<ModelConfig> {
        let arch_name = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Config { message: "GGUF has no general.architecture".into() })?;
        let architecture = match Architecture::parse(arch_name)? {
            Architecture::Bert => {
                return Err(Error::Unsupported {
                    what: "BERT from GGUF".into(),
                    supported: "phi3 and llama GGUF files".into(),
                })
            }
            a => a,
        };
        let get = |name: &str| g.get(&format!("{arch_name}.{name}"));
        let required = |name: &str| {
            get(name)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| Error::Config { message: format!("GGUF has no integer {arch_name}.{name}") })
        };
        let hidden_size = required("embedding_length")?;
        let num_heads = required("attention.head_count")?;
        if num_heads == 0 {
            return Err(Error::Config { message: "attention.head_count is 0".into() });
        }
        let head_dim = hidden_size / num_heads;
        // Metadata may omit the vocabulary size: then the embedding's rows say it
        // (when both exist and disagree, the converter's shape check reports it).
        let vocab_size = match (get("vocab_size").and_then(|v| v.as_u64()), g.tensor("token_embd.weight")) {
            (Some(v), _) => v as usize,
            (None, Some(embed)) if embed.dims.len() == 2 => embed.dims[1] as usize,
            _ => g.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()).map_or(0, |t| t.len()),
        };
        let max_position_embeddings = required("context_length")?;
        let mut eos_token_ids: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| g.get(k)?.as_u64().map(|v| v as u32))
            .collect();
        eos_token_ids.dedup();
        let config = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: required("feed_forward_length")?,
            num_layers: required("block_count")?,
            num_heads,
            num_kv_heads: get("attention.head_count_kv").and_then(|v| v.as_u64()).map_or(num_heads, |v| v as usize),
            head_dim,
            rotary_dim: get("rope.dimension_count").and_then(|v| v.as_u64()).map_or(head_dim, |v| v as usize),
            vocab_size,
            max_position_embeddings,
            norm_eps: get("attention.layer_norm_rms_epsilon").and_then(|v| v.as_f64()).unwrap_or(1e-5) as f32,
            rope_theta: get("rope.freq_base").and_then(|v| v.as_f64()).unwrap_or(10_000.0) as f32,
            longrope: None,
            sliding_window: get("attention.sliding_window").and_then(|v| v.as_u64()).map(|v| v as usize),
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            activation: Activation::Silu,
            norm: architecture.norm(),
            bos_token_id: g.get("tokenizer.ggml.bos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32),
            eos_token_ids,
            attention_bias: g.tensor("blk.0.attn_q.bias").is_some() || g.tensor("blk.0.attn_qkv.bias").is_some(),
            lm_head_bias: g.tensor("output.bias").is_some(),
            moe: match architecture {
                Architecture::PhiMoe => Some(Moe {
                    experts: required("expert_count")?,
                    experts_per_token: required("expert_used_count")?,
                    router_jitter: DEFAULT_ROUTER_JITTER,
                }),
                _ => None,
            },
            pooling: None,
            attention_scale: None,
            phi3small: None,
            vision: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// Adds LongRoPE factors read from GGUF's rope_factors_{short,long} tensors.
    pub fn set_longrope_factors(&mut self, g: &Gguf, short_factor: Vec<f32>, long_factor: Vec<f32>) -> Result<()> {
        let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("phi3");
        let original = g
            .get(&format!("{arch}.rope.scaling.original_context_length"))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| Error::Config {
                message: format!("GGUF rope factors without {arch}.rope.scaling.original_context_length"),
            })? as usize;
        let attention_factor = g
            .get(&format!("{arch}.rope.scaling.attn_factor"))
            .and_then(|v| v.as_f64())
            .map(|f| f as f32)
            .unwrap_or_else(|| default_attention_factor(self.max_position_embeddings, original));
        if short_factor.len() != self.rotary_dim / 2 || long_factor.len() != self.rotary_dim / 2 {
            return Err(Error::Config {
                message: format!(
                    "rope factor tensors have {} and {} entries, expected {}",
                    short_factor.len(),
                    long_factor.len(),
                    self.rotary_dim / 2
                ),
            });
        }
        self.longrope = Some(LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings: original,
            attention_factor,
            long_attention_factor: None,
        });
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config { message: m });
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!("{} attention heads cannot share {} KV heads", self.num_heads, self.num_kv_heads));
        }
        if self.rotary_dim > self.head_dim || !self.head_dim.is_multiple_of(2) {
            return bad(format!("rotary dim {} and head_dim {} are inconsistent", self.rotary_dim, self.head_dim));
        }
        // Absurd sizes are a corrupt file, not a model (no multi-GB allocations from a typo).
        let limits = [
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_layers", self.num_layers, 1024),
            ("num_heads", self.num_heads, 1024),
            ("vocab_size", self.vocab_size, 1 << 22),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 24),
        ];
        for (name, value, max) in limits {
            if value == 0 || value > max {
                return bad(format!("{name} = {value} is outside 1..={max}"));
            }
        }
        if let Some(moe) = &self.moe {
            if moe.experts < 2 || moe.experts > MAX_EXPERTS {
                return bad(format!("{} experts per layer is outside 2..={MAX_EXPERTS}", moe.experts));
            }
            if moe.experts_per_token != 2 {
                return Err(Error::Unsupported {
                    what: format!("{} experts per token", moe.experts_per_token),
                    supported: "2 (sparsemixer routing is defined for top-2)".into(),
                });
            }
            if !(moe.router_jitter.is_finite() && moe.router_jitter >= 0.0) {
                return bad(format!("router_jitter_noise {} is not a non-negative number", moe.router_jitter));
            }
        }
        Ok(())
    }

    /// Bytes of f16 K and V per token of context.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * 2
    }
}

#[cfg(test)]
mod tests {
    use super::BlockSparse;

    /// The kernel's count of the keys it reads is the keys some head of the group sees.
    #[test]
    fn keys_read_are_the_keys_some_head_of_the_group_sees() {
        for (block, local_blocks, vert_stride, head_step, group) in
            [(64, 16, 8, 1, 4), (4, 2, 3, 1, 2), (4, 1, 3, 1, 8), (8, 2, 16, 4, 1), (8, 3, 5, 0, 4)]
        {
            let b = BlockSparse { block, local_blocks, vert_stride, head_step };
            for first_head in (0..16).step_by(group) {
                for query in (0..3000).step_by(37).chain([0, block - 1, block, 16 * block]) {
                    let seen = (0..=query)
                        .filter(|&key| (first_head..first_head + group).any(|h| b.sees(h, query, key)))
                        .count();
                    assert_eq!(
                        b.keys_read(first_head, group, query),
                        seen,
                        "{b:?} heads {first_head}+{group} at {query}"
                    );
                }
            }
        }
    }
}
