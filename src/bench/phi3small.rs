//! Phi-3-small's block-sparse attention in numbers: a synthetic
//! Phi-3-small-shaped package (random q4_0, the real widths, `layers` of the
//! 32: every second one dense, as published) and the same weights with every
//! layer dense, decoded at 2k and 8k of context with the f16 and q8 KV
//! caches; and the KV bytes one decode token reads in a dense and in a
//! block-sparse layer (the kernel's own count, `BlockSparse::keys_read`).

use std::path::Path;

use serde::Serialize;

use super::{synthetic_config, synthetic_package};
use crate::config::{Architecture, BlockSparse, ModelConfig, NormKind, Phi3SmallExtras};
use crate::error::{Error, Result};
use crate::gpu::KvFormat;

/// Phi-3-small-8k's block-sparse pattern and muP settings.
const PATTERN: BlockSparse = BlockSparse { block: 64, local_blocks: 16, vert_stride: 8, head_step: 1 };

#[derive(Serialize)]
pub struct KvReadFigure {
    pub context: usize,
    pub kv_cache: &'static str,
    /// K and V bytes a decode token reads in one dense layer and one block-sparse layer.
    pub dense_layer_bytes: u64,
    pub sparse_layer_bytes: u64,
    pub sparse_over_dense: f64,
}

/// The config of `layers` Phi-3-small layers; `dense_every` 2 as published, 1: all dense.
fn config(layers: usize, dense_every: usize) -> ModelConfig {
    let mut c = synthetic_config(Architecture::Phi3Small, 4096, 14336, layers, [32, 8, 128], 100352);
    c.max_position_embeddings = 8192;
    c.rope_theta = 1e6;
    c.sliding_window = None;
    c.tie_word_embeddings = true;
    c.norm = NormKind::Layer;
    c.activation = crate::config::Activation::Gegelu;
    c.attention_scale = Some(1.0 / 128.0);
    c.eos_token_ids = vec![100257];
    c.phi3small = Some(Phi3SmallExtras {
        embedding_multiplier: 10.0,
        width_multiplier: 8.0,
        gegelu_limit: Some(20.0),
        blocksparse: PATTERN,
        dense_every_n_layers: dense_every,
        dummy_token_ids: vec![100256],
    });
    c
}

/// Writes the synthetic package into `dir` (once) and, in `dense_dir`, a
/// manifest of the same shards with every layer dense.
pub fn synthetic_phi3_small(dir: &Path, dense_dir: &Path, layers: usize) -> Result<()> {
    let (h, inter, vocab, qkv) = (4096, 14336, 100352, (32 + 2 * 8) * 128);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![vocab, h])];
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        for (name, rows, cols) in [
            ("self_attn.qkv_proj", qkv, h),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_up_proj", 2 * inter, h),
            ("mlp.down_proj", h, inter),
        ] {
            shapes.push((p(&format!("{name}.weight")), vec![rows, cols]));
            shapes.push((p(&format!("{name}.bias")), vec![rows]));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            shapes.push((p(&format!("{norm}.weight")), vec![h]));
            shapes.push((p(&format!("{norm}.bias")), vec![h]));
        }
    }
    shapes.push(("model.norm.weight".into(), vec![h]));
    shapes.push(("model.norm.bias".into(), vec![h]));
    let name = format!("synthetic Phi-3-small, {layers} of 32 layers (random q4_0)");
    synthetic_package(dir, &name, config(layers, 2), shapes)?;
    // The same shards, every layer dense.
    let text = std::fs::read_to_string(dir.join("model.json")).map_err(|e| Error::io(&dir.join("model.json"), e))?;
    let mut manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(dir.display(), e.to_string()))?;
    manifest["config"] = serde_json::to_value(config(layers, 1)).map_err(|e| Error::format("config", e.to_string()))?;
    manifest["name"] = format!("{name}, every layer dense").into();
    std::fs::create_dir_all(dense_dir).map_err(|e| Error::io(dense_dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let file = entry.map_err(|e| Error::io(dir, e))?.path();
        let target = dense_dir.join(file.file_name().unwrap_or_default());
        if file.file_name().is_some_and(|f| f != "model.json") && !target.exists() {
            std::fs::hard_link(&file, &target)
                .or_else(|_| std::fs::copy(&file, &target).map(|_| ()))
                .map_err(|e| Error::io(&target, e))?;
        }
    }
    let path = dense_dir.join("model.json");
    std::fs::write(&path, manifest.to_string()).map_err(|e| Error::io(&path, e))
}

/// KV bytes a decode token at `context` reads per layer, dense and block-sparse.
pub fn kv_read(context: usize, kv: KvFormat) -> KvReadFigure {
    let (kv_heads, group, head_dim) = (8, 4, 128);
    let head_bytes = 2 * kv.row_bytes(kv_heads * head_dim) / kv_heads; // K and V of one head
    let dense = (kv_heads * (context + 1) * head_bytes) as u64;
    let keys: usize = (0..kv_heads).map(|g| PATTERN.keys_read(g * group, group, context)).sum();
    let sparse = (keys * head_bytes) as u64;
    KvReadFigure {
        context,
        kv_cache: kv.name(),
        dense_layer_bytes: dense,
        sparse_layer_bytes: sparse,
        sparse_over_dense: sparse as f64 / dense as f64,
    }
}
