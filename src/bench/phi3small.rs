//! Phi-3-small's block-sparse attention in numbers: a synthetic
//! Phi-3-small-shaped package (random q4_0, the real widths, `layers` of the
//! 32: every second one dense, as published) and the same weights with every
//! layer dense, decoded at 2k and 8k of context with the f16 and q8 KV
//! caches; and the KV bytes one decode token reads in a dense and in a
//! block-sparse layer (the kernel's own count, `BlockSparse::keys_read`),
//! with the time its attention kernels take in each.

use std::path::Path;

use serde::Serialize;

use super::{synthetic_config, synthetic_package};
use crate::config::{Architecture, BlockSparse, ModelConfig, NormKind, Phi3SmallExtras};
use crate::error::{Error, Result};
use crate::gpu::{AttentionScratch, AttentionShape, Gpu, Kernels, KvFormat};

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
    /// One decode token's attention kernels (split pass and combine) in each.
    pub dense_attention_ms: f64,
    pub sparse_attention_ms: f64,
    pub time_sparse_over_dense: f64,
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

/// One decode token's attention at `context` in a dense and in a
/// block-sparse layer (Phi-3-small's heads, 32 / 8 x 128): the KV bytes each
/// reads (the kernel's own count) and the time each takes.
pub fn kv_read(gpu: &Gpu, kernels: &Kernels, context: usize, kv: KvFormat) -> Result<KvReadFigure> {
    let (heads, kv_heads, head_dim) = (32, 8, 128);
    let head_bytes = 2 * kv.row_bytes(kv_heads * head_dim) / kv_heads; // K and V of one head
    let dense = (kv_heads * (context + 1) * head_bytes) as u64;
    let sparse = (PATTERN.layer_keys_read(heads, kv_heads, context) * head_bytes) as u64;

    let capacity = context + 1;
    let cache_bytes = (capacity * kv.row_bytes(kv_heads * head_dim)) as u64;
    let (k, v) = (gpu.storage("k", cache_bytes)?, gpu.storage("v", cache_bytes)?);
    let q_floats = (heads + 2 * kv_heads) * head_dim; // a fused QKV row
    let (q, out) = (gpu.storage("q", 4 * q_floats as u64)?, gpu.storage("out", (4 * heads * head_dim) as u64)?);
    let step = gpu.step_buffer(context as u32);
    let mut seconds = [0.0; 2];
    for (sparse, time) in [None, Some(PATTERN)].into_iter().zip(&mut seconds) {
        let shape = AttentionShape {
            tokens: 1,
            heads,
            kv_heads,
            head_dim,
            q_stride: q_floats,
            slots: capacity,
            window: 0,
            scale: 1.0 / 128.0,
            splits: AttentionShape::default_splits(1, capacity, kv_heads, gpu.tuning),
            kv_format: kv,
            sparse,
        };
        let scratch = AttentionScratch::new(gpu, &shape)?;
        let [split_pass, combine] = kernels.attention(&step, &q, &k, &v, &scratch, &out, &shape)?;
        *time = super::time_dispatches(gpu, &[&split_pass, &combine], 5, 3)?;
    }
    Ok(KvReadFigure {
        context,
        kv_cache: kv.name(),
        dense_layer_bytes: dense,
        sparse_layer_bytes: sparse,
        sparse_over_dense: sparse as f64 / dense as f64,
        dense_attention_ms: seconds[0] * 1e3,
        sparse_attention_ms: seconds[1] * 1e3,
        time_sparse_over_dense: seconds[1] / seconds[0],
    })
}

/// The figures as the Markdown table `phi-web bench` writes beside its JSON.
pub fn markdown(figures: &[KvReadFigure]) -> String {
    let mut out = String::from("\n| Phi-3-small, one decode token's attention | KV read, dense layer | block-sparse layer | sparse ÷ dense | kernel time, dense | block-sparse | sparse ÷ dense |\n|---|---|---|---|---|---|---|\n");
    for f in figures {
        out += &format!(
            "| context {}, {} KV | {:.2} MB | {:.2} MB | {:.2} | {:.2} ms | {:.2} ms | {:.2} |\n",
            f.context,
            f.kv_cache,
            f.dense_layer_bytes as f64 / 1e6,
            f.sparse_layer_bytes as f64 / 1e6,
            f.sparse_over_dense,
            f.dense_attention_ms,
            f.sparse_attention_ms,
            f.time_sparse_over_dense
        );
    }
    out
}
