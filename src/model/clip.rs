//! Phi-3(.5)-vision's image embedding, read like the remote code's
//! `Phi3ImageEmbedding` (image_embedding_phi3_v.py): the CLIP ViT tower of
//! transformers' `CLIPVisionModel` up to the layer the features come from,
//! the 2×2 merge of patch features with the learned separators (`sub_GN`
//! after every row, `glb_GN` between the crops and the global view), and
//! the two-layer projector to the decoder's width. The tower runs crops in
//! passes of [`CROPS_PER_PASS`]; each crop is one 577-token sequence of
//! bidirectional attention (encoder_attention.wgsl).

use super::blocks::{Linear, Norm};
use super::recorder::{Recorder, Segment};
use crate::backend::{Backend, Buf};
use crate::config::{ModelConfig, NormKind, VisionConfig};
use crate::error::{Error, Result};
use crate::formats::package::ShardSource;
use crate::gpu::{GeluKind, OutputSlice};
use crate::image::HdImage;

/// Crops per pass of the tower: bounds its activations (a CLIP-L pass of 4
/// crops holds 2308 tokens: 38 MB of MLP activations).
pub const CROPS_PER_PASS: usize = 4;

const PREFIX: &str = "model.vision_embed_tokens.";

struct Layer {
    layer_norm1: Norm,
    q_proj: Linear, // [C, C] each, with biases
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: Norm,
    fc1: Linear, // [I, C]
    fc2: Linear, // [C, I]
}

/// The image tower, separators and projector of a vision model.
pub struct ImageEncoder {
    pub config: VisionConfig,
    /// The decoder's width: the projected rows'.
    pub hidden_size: usize,
    patch_embedding: Linear, // [C, 3·p·p], the convolution as a matrix (im2col)
    /// Position embeddings with the class embedding added to row 0, repeated
    /// for CROPS_PER_PASS crops: [CROPS_PER_PASS · 577, C].
    positions: Buf,
    pre_layrnorm: Norm,
    layers: Vec<Layer>,
    sub_gn: Vec<f32>,     // [4C] the newline after each row of merged patches
    glb_gn: Vec<f32>,     // [4C] between the crops and the global view
    projection_0: Linear, // [H, 4C]
    projection_2: Linear, // [H, H]
}

impl ImageEncoder {
    /// The package's image embedding, or None for a text-only model.
    pub async fn load(b: &Backend, source: &impl ShardSource) -> Result<Option<ImageEncoder>> {
        let model: &ModelConfig = &source.manifest().config;
        let Some(config) = model.vision.clone() else { return Ok(None) };
        let (c, eps) = (config.hidden_size, config.norm_eps);
        let name = |s: &str| format!("{PREFIX}{s}");
        let tower = |s: &str| format!("{PREFIX}img_processor.{s}");
        let dense = async |n: String| Linear::load(b, source, &n, true).await;
        let layer_norm = async |n: String| Norm::load(b, source, &n, NormKind::Layer, c, eps).await;
        let patch_embedding = Linear::load(b, source, &tower("embeddings.patch_embedding"), false).await?;
        let patch_cols = 3 * config.patch_size * config.patch_size;
        let tokens = config.grid() * config.grid() + 1;

        // Position embeddings (+ the class embedding on the class token's row).
        let table = super::entry(source, &tower("embeddings.position_embedding.weight"))?;
        let class = super::entry(source, &tower("embeddings.class_embedding"))?;
        let (mut rows, class) = (source.tensor_f32(table).await?, source.tensor_f32(class).await?);
        if rows.len() != tokens * c
            || class.len() != c
            || patch_embedding.rows != c
            || patch_embedding.cols != patch_cols
        {
            return Err(Error::Config {
                message: format!(
                    "the image tower's embeddings do not fit a {c}-wide CLIP of {tokens} positions in {}-pixel patches",
                    config.patch_size
                ),
            });
        }
        rows[..c].iter_mut().zip(&class).for_each(|(r, c)| *r += c);
        let positions = rows.repeat(CROPS_PER_PASS);

        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = |s: &str| tower(&format!("encoder.layers.{i}.{s}"));
            layers.push(Layer {
                layer_norm1: layer_norm(p("layer_norm1")).await?,
                q_proj: dense(p("self_attn.q_proj")).await?,
                k_proj: dense(p("self_attn.k_proj")).await?,
                v_proj: dense(p("self_attn.v_proj")).await?,
                out_proj: dense(p("self_attn.out_proj")).await?,
                layer_norm2: layer_norm(p("layer_norm2")).await?,
                fc1: dense(p("mlp.fc1")).await?,
                fc2: dense(p("mlp.fc2")).await?,
            });
        }
        let separator = async |n: &str| source.tensor_f32(super::entry(source, &name(n))?).await;
        let encoder = ImageEncoder {
            hidden_size: model.hidden_size,
            patch_embedding,
            positions: b.storage_with("image positions", bytemuck::cast_slice(&positions))?,
            pre_layrnorm: layer_norm(tower("pre_layrnorm")).await?,
            layers,
            sub_gn: separator("sub_GN").await?,
            glb_gn: separator("glb_GN").await?,
            projection_0: dense(name("img_projection.0")).await?,
            projection_2: dense(name("img_projection.2")).await?,
            config,
        };
        let merged = 4 * c;
        let p0 = &encoder.projection_0;
        if encoder.sub_gn.len() != merged
            || encoder.glb_gn.len() != merged
            || p0.cols != merged
            || p0.rows != model.hidden_size
        {
            return Err(Error::Config {
                message: format!(
                    "the image separators and projector do not fit a {c}-wide tower and a {}-wide decoder",
                    model.hidden_size
                ),
            });
        }
        b.check()?;
        Ok(Some(encoder))
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.q_proj, &l.k_proj, &l.v_proj, &l.out_proj, &l.fc1, &l.fc2]
                    .iter()
                    .map(|m| m.gpu_bytes())
                    .sum::<u64>()
                    + l.layer_norm1.gpu_bytes()
                    + l.layer_norm2.gpu_bytes()
            })
            .sum();
        layers
            + self.patch_embedding.gpu_bytes()
            + self.positions.size()
            + self.pre_layrnorm.gpu_bytes()
            + self.projection_0.gpu_bytes()
            + self.projection_2.gpu_bytes()
    }

    /// Positions `image` takes in a prompt, from its size alone (no transform).
    pub fn tokens(&self, image: &crate::image::Rgb) -> usize {
        let (rows, cols) = crate::image::crop_grid(image.width, image.height, self.config.num_crops);
        crate::image::image_tokens(rows, cols)
    }

    /// The rows an image stands for in the prompt, [image.tokens(), H].
    pub async fn embed(&self, b: &Backend, image: &HdImage) -> Result<Vec<f32>> {
        let (c, grid) = (self.config.hidden_size, self.config.grid());
        let crop_len = 3 * crate::image::CROP * crate::image::CROP;
        let mut features = Vec::with_capacity(image.crops() * grid * grid * c);
        let seq_len = (grid * grid + 1) * c;
        for pass in image.pixels.chunks(CROPS_PER_PASS * crop_len) {
            let states = self.hidden_states(b, pass, pass.len() / crop_len).await?;
            // Without each crop's class token.
            features.extend(states.chunks_exact(seq_len).flat_map(|crop| crop[c..].iter().copied()));
        }
        let merged = self.merge(&features, image.crops_h, image.crops_w);
        self.project(b, &merged).await
    }

    /// CLIPVisionModel's `hidden_states[layer_idx]` for `crops` crops
    /// ([crops, 3, 336, 336] pixels, at most CROPS_PER_PASS): [crops, 1 + grid², C].
    pub async fn hidden_states(&self, b: &Backend, pixels: &[f32], crops: usize) -> Result<Vec<f32>> {
        let crop_len = 3 * crate::image::CROP * crate::image::CROP;
        if crops == 0 || crops > CROPS_PER_PASS || pixels.len() != crops * crop_len {
            return Err(Error::Shape {
                op: "image tower",
                message: format!(
                    "{} pixel values for {crops} crops (1 to {CROPS_PER_PASS} crops of {crop_len})",
                    pixels.len()
                ),
            });
        }
        let cfg = &self.config;
        let (c, inner, grid, p) = (cfg.hidden_size, cfg.intermediate_size, cfg.grid(), cfg.patch_size);
        let seq = grid * grid + 1;
        let t = crops * seq;
        let patch_cols = 3 * p * p;
        // im2col: row (crop, 1 + patch) = the patch's pixels in the convolution
        // weight's (channel, y, x) order; the class token's row stays zero.
        let mut columns = vec![0f32; t * patch_cols];
        let side = crate::image::CROP;
        for crop in 0..crops {
            let image = &pixels[crop * 3 * side * side..(crop + 1) * 3 * side * side];
            for (patch, row) in columns[(crop * seq + 1) * patch_cols..(crop + 1) * seq * patch_cols]
                .chunks_exact_mut(patch_cols)
                .enumerate()
            {
                let (py, px) = (patch / grid, patch % grid);
                for ch in 0..3 {
                    for y in 0..p {
                        let src = ch * side * side + (py * p + y) * side + px * p;
                        row[(ch * p + y) * p..(ch * p + y + 1) * p].copy_from_slice(&image[src..src + p]);
                    }
                }
            }
        }
        let segments: Vec<u32> = (0..t).flat_map(|i| [(i / seq * seq) as u32, (i / seq * seq + seq) as u32]).collect();
        let buf = |label: &str, floats: usize| b.storage(label, (4 * floats) as u64);
        let x = b.storage_with("image patches", bytemuck::cast_slice(&columns))?;
        let segments = b.storage_with("image segments", bytemuck::cast_slice(&segments))?;
        let (h, tmp, qkv) = (buf("image hidden", t * c)?, buf("image tmp", t * c)?, buf("image qkv", t * 3 * c)?);
        let (context, mlp) = (buf("image context", t * c)?, buf("image mlp", t * inner)?);
        let step = b.step_buffer()?;
        let mut r = Recorder::new(b, t, &step);
        // embeddings = patch_embedding(pixels) with the class embedding, + positions; then pre_layrnorm.
        self.patch_embedding.forward(&mut r, &x, &tmp)?;
        r.add(&tmp, &self.positions, c)?;
        self.pre_layrnorm.forward(&mut r, &tmp, &h)?;
        let fused = |part: usize| OutputSlice { stride: 3 * c, offset: part * c };
        for layer in &self.layers {
            // h += out_proj(attention(layer_norm1(h)))
            layer.layer_norm1.forward(&mut r, &h, &tmp)?;
            layer.q_proj.forward_into(&mut r, &tmp, &qkv, fused(0))?;
            layer.k_proj.forward_into(&mut r, &tmp, &qkv, fused(1))?;
            layer.v_proj.forward_into(&mut r, &tmp, &qkv, fused(2))?;
            r.push(b.encoder_attention(&qkv, &segments, &context, t, cfg.num_heads, c / cfg.num_heads)?);
            layer.out_proj.forward(&mut r, &context, &tmp)?;
            r.add(&h, &tmp, c)?;
            // h += fc2(quick_gelu(fc1(layer_norm2(h))))
            layer.layer_norm2.forward(&mut r, &h, &tmp)?;
            layer.fc1.forward(&mut r, &tmp, &mlp)?;
            r.push(b.gelu(&mlp, t * inner, GeluKind::Quick)?);
            layer.fc2.forward(&mut r, &mlp, &tmp)?;
            r.add(&h, &tmp, c)?;
        }
        run(b, r)?;
        b.read_f32("image features", &h, t * c).await
    }

    /// `hd_feature_transform` before the projection: [rows, 4C] with rows =
    /// the crops' merged grid with a newline per row, glb_GN, then the global
    /// view's merged grid with its newlines. `features` is [crops, grid², C],
    /// the global view first.
    fn merge(&self, features: &[f32], crops_h: usize, crops_w: usize) -> Vec<f32> {
        let (c, grid) = (self.config.hidden_size, self.config.grid());
        let half = grid / 2;
        let crop_len = grid * grid * c;
        // Merged patch (y, x) of a grid of crops: 4C = the 2×2 patches
        // (row-in-pair, col-in-pair) side by side, as the reference's reshape.
        let merged_row = |out: &mut Vec<f32>, crop_of: &dyn Fn(usize, usize) -> usize, rows: usize, cols: usize| {
            for y in 0..rows * half {
                for x in 0..cols * half {
                    let crop = crop_of(y / half, x / half);
                    let (my, mx) = (y % half, x % half);
                    for dy in 0..2 {
                        for dx in 0..2 {
                            let patch = (2 * my + dy) * grid + 2 * mx + dx;
                            let at = crop * crop_len + patch * c;
                            out.extend_from_slice(&features[at..at + c]);
                        }
                    }
                }
                out.extend_from_slice(&self.sub_gn);
            }
        };
        let mut out = Vec::with_capacity(crate::image::image_tokens(crops_h, crops_w) * 4 * c);
        merged_row(&mut out, &|cy, cx| 1 + cy * crops_w + cx, crops_h, crops_w);
        out.extend_from_slice(&self.glb_gn);
        merged_row(&mut out, &|_, _| 0, 1, 1);
        out
    }

    /// img_projection: Linear(4C → H), GELU, Linear(H → H).
    async fn project(&self, b: &Backend, merged: &[f32]) -> Result<Vec<f32>> {
        let h = self.hidden_size;
        let rows = merged.len() / (4 * self.config.hidden_size);
        let x = b.storage_with("image merged", bytemuck::cast_slice(merged))?;
        let (mid, out) =
            (b.storage("image projection", (4 * rows * h) as u64)?, b.storage("image rows", (4 * rows * h) as u64)?);
        let step = b.step_buffer()?;
        let mut r = Recorder::new(b, rows, &step);
        self.projection_0.forward(&mut r, &x, &mid)?;
        r.push(b.gelu(&mid, rows * h, GeluKind::Erf)?);
        self.projection_2.forward(&mut r, &mid, &out)?;
        run(b, r)?;
        b.read_f32("image rows", &out, rows * h).await
    }
}

fn run(b: &Backend, r: Recorder) -> Result<()> {
    for segment in r.finish() {
        if let Segment::Run(ops) = segment {
            b.run(&ops)?;
        }
    }
    Ok(())
}
