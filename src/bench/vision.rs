//! Phi-3.5-vision in numbers: a synthetic package of its shape — the 23
//! CLIP-L/14-336 layers that run (q8_0, as `convert` stores a tower), the
//! projector and separators, and a Phi-3-mini decoder of `layers` of its 32
//! layers (q4_0) — timed on one image of 2×2 crops plus its global view:
//! the tower per crop and per image, the prefill of a prompt with the image,
//! and the weights of the whole model at its 32 layers.

use std::path::Path;

use serde::Serialize;
use web_time::Instant;

use super::{phi3_mini_shapes, synthetic_config, synthetic_package};
use crate::backend::Backend;
use crate::config::{Architecture, VisionConfig};
use crate::error::Result;
use crate::formats::package::Package;
use crate::gpu::KvFormat;
use crate::image::{hd_transform, Rgb};
use crate::model::{Decoder, DecoderOptions, ImageEncoder, ImageRows, Logits};
use crate::quant::{self, WeightFormat};

const CLIP_L: VisionConfig = VisionConfig {
    hidden_size: 1024,
    intermediate_size: 4096,
    num_heads: 16,
    num_layers: 23,
    image_size: 336,
    patch_size: 14,
    norm_eps: 1e-5,
    num_crops: 4,
};

#[derive(Serialize)]
pub struct VisionFigure {
    pub backend: &'static str,
    pub threads: usize,
    /// The image's crops through the tower: its grid and the global view.
    pub crops: usize,
    pub image_tokens: usize,
    pub encode_ms_per_image: f64,
    pub encode_ms_per_crop: f64,
    /// A prompt of the image and 16 text tokens, on `decoder_layers` layers.
    pub decoder_layers: usize,
    pub prefill_tokens: usize,
    pub prefill_tokens_per_s: f64,
    /// Weights of the image tower and projector, and of the whole model at 32 decoder layers.
    pub vision_weights_mb: f64,
    pub full_model_weights_mb: f64,
    /// Device memory the loaded model takes (`decoder_layers` layers, a
    /// 1024-position f16 KV cache, scratch), from buffer accounting; weights
    /// and KV cache on the CPU backend.
    pub memory_mb: f64,
}

/// Tensor shapes of a Phi-3.5-vision with `layers` decoder layers.
fn shapes(layers: usize) -> Vec<(String, Vec<usize>)> {
    let h = 3072;
    let (c, ci) = (CLIP_L.hidden_size, CLIP_L.intermediate_size);
    let mut shapes = phi3_mini_shapes(layers);
    let v = |s: &str| format!("model.vision_embed_tokens.{s}");
    let t = |s: &str| v(&format!("img_processor.{s}"));
    shapes.push((t("embeddings.patch_embedding.weight"), vec![c, 3 * 14 * 14]));
    shapes.push((t("embeddings.class_embedding"), vec![c]));
    shapes.push((t("embeddings.position_embedding.weight"), vec![577, c]));
    shapes.push((t("pre_layrnorm.weight"), vec![c]));
    shapes.push((t("pre_layrnorm.bias"), vec![c]));
    for i in 0..CLIP_L.num_layers {
        let p = |s: &str| t(&format!("encoder.layers.{i}.{s}"));
        for (name, rows, cols) in [
            ("self_attn.q_proj", c, c),
            ("self_attn.k_proj", c, c),
            ("self_attn.v_proj", c, c),
            ("self_attn.out_proj", c, c),
            ("mlp.fc1", ci, c),
            ("mlp.fc2", c, ci),
        ] {
            shapes.push((p(&format!("{name}.weight")), vec![rows, cols]));
            shapes.push((p(&format!("{name}.bias")), vec![rows]));
        }
        for norm in ["layer_norm1", "layer_norm2"] {
            shapes.push((p(&format!("{norm}.weight")), vec![c]));
            shapes.push((p(&format!("{norm}.bias")), vec![c]));
        }
    }
    shapes.push((v("sub_GN"), vec![4 * c]));
    shapes.push((v("glb_GN"), vec![4 * c]));
    shapes.push((v("img_projection.0.weight"), vec![h, 4 * c]));
    shapes.push((v("img_projection.0.bias"), vec![h]));
    shapes.push((v("img_projection.2.weight"), vec![h, h]));
    shapes.push((v("img_projection.2.bias"), vec![h]));
    shapes
}

/// Bytes of the tensors `synthetic_package` writes for `shapes`.
fn package_bytes(shapes: &[(String, Vec<usize>)]) -> u64 {
    let vision = crate::formats::hf_import::VISION_PREFIX;
    shapes
        .iter()
        .map(|(name, shape)| {
            let (format, rows, cols) = match shape[..] {
                [n] => (WeightFormat::F32, 1, n),
                [rows, cols] if name.starts_with(vision) => {
                    (crate::formats::hf_import::vision_matrix_format(name, WeightFormat::Q4_0, cols), rows, cols)
                }
                [rows, cols] => (WeightFormat::Q4_0, rows, cols),
                _ => (WeightFormat::F32, 0, 0),
            };
            let (data, scales) = quant::gpu_size(format, rows, cols);
            (data + scales) as u64
        })
        .sum()
}

/// Writes the synthetic package into `dir` (once).
pub fn synthetic_phi3_vision(dir: &Path, layers: usize) -> Result<()> {
    let mut config = synthetic_config(Architecture::Phi3, 3072, 8192, layers, [32, 32, 96], 32064);
    config.vision = Some(CLIP_L);
    let name = format!("synthetic Phi-3.5-vision, {layers} of 32 decoder layers (random q4_0, tower q8_0)");
    synthetic_package(dir, &name, config, shapes(layers))
}

/// A 640×480 picture (4 crops and the global view at num_crops 4).
fn picture() -> Rgb {
    let (w, h) = (640, 480);
    let data = (0..w * h * 3).map(|i| ((i * 37 + i / (w * 3) * 11) % 256) as u8).collect();
    Rgb { width: w, height: h, data }
}

/// The figures on `b` for the package in `dir`.
pub async fn figure(b: &Backend, dir: &Path, progress: impl Fn(&str)) -> Result<VisionFigure> {
    let package = Package::open(dir)?;
    let allocated = || match b {
        Backend::Gpu(g) => g.gpu.storage_bytes(),
        Backend::Cpu(_) => 0,
    };
    let before = allocated();
    let encoder = ImageEncoder::load(b, &package).await?.ok_or_else(|| crate::Error::Config {
        message: format!("{}: the synthetic vision package has no image tower", dir.display()),
    })?;
    let decoder = Decoder::load_from(b, &package, &DecoderOptions::new(1024, 256, KvFormat::F16)).await?;
    let memory = match b {
        Backend::Gpu(_) => allocated() - before,
        Backend::Cpu(_) => encoder.weight_bytes() + decoder.memory().weights + decoder.memory().kv_cache,
    };
    let image = hd_transform(&picture(), encoder.config.num_crops);
    // One run, without a warm-up: it takes a minute on a CPU, the tower's
    // first pipeline compilations a fraction of a second.
    progress(&format!("image tower: {} crops", image.crops()));
    let start = Instant::now();
    let rows = encoder.embed(b, &image).await?;
    let encode = start.elapsed().as_secs_f64();

    progress("prefill of the image and 16 tokens");
    let h = decoder.config.hidden_size;
    let text = 16;
    let tokens = image.tokens() + text;
    let ids: Vec<u32> =
        (0..tokens as u32).map(|i| if (8..8 + image.tokens() as u32).contains(&i) { 0 } else { i % 300 }).collect();
    let start = Instant::now();
    for (c, chunk) in ids.chunks(decoder.max_tokens).enumerate() {
        let pos = c * decoder.max_tokens;
        // The image's rows at positions 8..8 + image tokens.
        let (from, to) = (pos.max(8), (pos + chunk.len()).min(8 + image.tokens()));
        let spliced: Vec<ImageRows> = match from < to {
            true => vec![ImageRows { at: from - pos, rows: &rows[(from - 8) * h..(to - 8) * h] }],
            false => Vec::new(),
        };
        decoder.forward_with_images(b, chunk, &spliced, pos, tokens, Logits::Last).await?;
    }
    let prefill = start.elapsed().as_secs_f64();
    let mb = |bytes: u64| bytes as f64 / 1e6;
    Ok(VisionFigure {
        backend: b.name(),
        threads: match b {
            Backend::Cpu(c) => c.threads,
            Backend::Gpu(_) => 0,
        },
        crops: image.crops(),
        image_tokens: image.tokens(),
        encode_ms_per_image: encode * 1e3,
        encode_ms_per_crop: encode * 1e3 / image.crops() as f64,
        decoder_layers: decoder.config.num_layers,
        prefill_tokens: tokens,
        prefill_tokens_per_s: tokens as f64 / prefill,
        vision_weights_mb: mb(encoder.weight_bytes()),
        full_model_weights_mb: mb(package_bytes(&shapes(32))),
        memory_mb: mb(memory),
    })
}

/// The figures as the Markdown table `phi-web bench` writes beside its JSON.
pub fn markdown(figures: &[VisionFigure]) -> String {
    let mut out = String::from("\n| Phi-3.5-vision (synthetic) | image tower, per image | per crop | prefill with the image | memory, as loaded | tower weights | whole model's weights (32 layers) |\n|---|---|---|---|---|---|---|\n");
    for f in figures {
        let on = match f.threads {
            0 => f.backend.to_string(),
            n => format!("{} ({n} thread{})", f.backend, if n == 1 { "" } else { "s" }),
        };
        out += &format!(
            "| {on}: {} crops, {} image tokens | {:.0} ms | {:.0} ms | {:.1} tok/s ({} tokens, {} decoder layers) | {:.0} MB | {:.0} MB | {:.0} MB |\n",
            f.crops,
            f.image_tokens,
            f.encode_ms_per_image,
            f.encode_ms_per_crop,
            f.prefill_tokens_per_s,
            f.prefill_tokens,
            f.decoder_layers,
            f.memory_mb,
            f.vision_weights_mb,
            f.full_model_weights_mb
        );
    }
    out
}
