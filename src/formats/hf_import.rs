//! A Hugging Face folder (config.json, safetensors, tokenizer files) → a
//! phi-web package, planned from the safetensors headers alone, like
//! [`crate::formats::gguf_import`]: each step reads one tensor's byte range
//! and yields its bytes at a known place in the package. `phi-web convert`
//! runs the steps over files, the browser over range requests
//! (pkg/importer.js). Small files (config, tokenizer) come through `files`,
//! which gives a file's text by name, or None where the folder lacks it.
//!
//! Defaults: matrices q4_0 (f16 for BERT embedding models, whose retrieval
//! quality suffers visibly at 4 bits); vectors and MoE routers f32;
//! Phi-3-small's fused projections reordered to the runtime's layout.

use std::collections::BTreeMap;

use crate::config::{Architecture, ModelConfig, Pooling, PoolingMode, VisionConfig};
use crate::error::{Error, Result};
use crate::formats::encode::{
    check_shape, check_shards, check_step_bytes, count_formats, describe_quantization, encode_tensor, is_router,
    matrix_format, requantize, ConvertOptions, PackageLayout,
};
use crate::formats::package::{Manifest, Shard, TensorEntry, FORMAT};
use crate::formats::safetensors::{Dtype, Tensor};
use crate::formats::tiktoken;
use crate::quant::WeightFormat;

/// A folder's small file by name: its text, or None when absent.
pub type Files<'a> = &'a dyn Fn(&str) -> Result<Option<String>>;

/// One tensor read and stored.
#[derive(Clone, Debug)]
pub struct HfStep {
    /// The safetensors file (as its header was parsed: a path or a name in the folder).
    pub file: String,
    pub tensor: String,
    /// Absolute byte range in `file`.
    pub offset: u64,
    pub length: u64,
    /// Where its output goes in the package's byte stream.
    pub output_offset: u64,
    pub output_length: u64,
    entry: usize,
    source: Tensor,
    /// Stored row r is source row `order[r]` (Phi-3-small's fused projections).
    order: Option<Vec<usize>>,
}

pub struct HfImport {
    config: ModelConfig,
    options: ConvertOptions,
    name: String,
    source: String,
    pub steps: Vec<HfStep>,
    entries: Vec<TensorEntry>,
    hf_default: WeightFormat,
    pub total_bytes: u64,
    pub warnings: Vec<String>,
    pub max_abs_error: f32,
}

fn read_json(files: Files, name: &str) -> Result<Option<serde_json::Value>> {
    match files(name)? {
        None => Ok(None),
        Some(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| Error::format(name, format!("malformed JSON: {e}")))
        }
    }
}

impl HfImport {
    /// Plans the import of a folder called `name` at `source` (a path or
    /// URL) whose safetensors hold `tensors`.
    pub fn new(
        name: &str,
        source: &str,
        tensors: &BTreeMap<String, Tensor>,
        files: Files,
        options: &ConvertOptions,
    ) -> Result<HfImport> {
        let config_json = read_json(files, "config.json")?.ok_or_else(|| Error::format(source, "no config.json"))?;
        let mut config = ModelConfig::from_hf(&config_json)?;
        let mut warnings = Vec::new();
        if config.architecture == Architecture::Bert {
            config.pooling = Some(sentence_pooling(&config, &|n| read_json(files, n), &mut warnings)?);
        }
        if let Some(vision) = config.vision.as_mut() {
            let processor = read_json(files, "preprocessor_config.json")?;
            match processor.as_ref().and_then(|p| p.get("num_crops")).and_then(|n| n.as_u64()) {
                Some(n) => vision.num_crops = (n as usize).max(1),
                None => warnings.push(format!(
                    "no num_crops in preprocessor_config.json: images are cut into at most {} crops",
                    vision.num_crops
                )),
            }
        }
        // Phi-3-small ties by its config even where a checkpoint keeps a copy of lm_head.
        if config.architecture != Architecture::Phi3Small {
            config.tie_word_embeddings =
                config.architecture != Architecture::Bert && !tensors.contains_key("lm_head.weight");
        }
        if let Some(embed) = tensors.get("model.embed_tokens.weight") {
            check_shape(&config, &embed.name, &embed.shape)?;
        }
        let hf_default = if config.architecture == Architecture::Bert { WeightFormat::F16 } else { WeightFormat::Q4_0 };
        let mut layout = PackageLayout::new(options);
        let (mut steps, mut entries) = (Vec::new(), Vec::new());
        for tensor in tensors.values() {
            if tensor.name.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            if let Dtype::Integer(dtype) = tensor.dtype {
                warnings.push(format!("skipped {dtype} buffer {} (not a weight)", tensor.name));
                continue;
            }
            let (name, order) = match config.architecture {
                Architecture::Phi3Small => match phi3small_layout(&config, &tensor.name, tensor.shape[0]) {
                    Some(layout) => layout,
                    None => continue,
                },
                // CLIPVisionModel's weights sit under img_processor.vision_model. in hub checkpoints.
                _ => (tensor.name.replace(".img_processor.vision_model.", ".img_processor."), None),
            };
            let vision = name.starts_with(VISION_PREFIX);
            let shape = match (vision, &config.vision) {
                (true, Some(v)) => match vision_shape(v, &name, &tensor.shape) {
                    Some(shape) => shape,
                    None => continue, // not used by the features the decoder takes
                },
                _ => {
                    check_shape(&config, &name, &tensor.shape)?;
                    tensor.shape.clone()
                }
            };
            let format = match shape.len() {
                1 => WeightFormat::F32,
                2 if is_router(&tensor.name) => WeightFormat::F32,
                2 if vision => vision_matrix_format(&name, options.quant.unwrap_or(hf_default), shape[1]),
                2 => matrix_format(options, hf_default, shape[1], &tensor.name, &mut warnings),
                _ => {
                    return Err(Error::Unsupported {
                        what: format!("tensor {} with shape {:?}", tensor.name, tensor.shape),
                        supported: "vectors and matrices".into(),
                    })
                }
            };
            let start = layout.total_bytes;
            entries.push(layout.place(&name, &shape, format)?);
            steps.push(HfStep {
                file: tensor.file.display().to_string(),
                tensor: tensor.name.clone(),
                offset: tensor.offset,
                length: tensor.len,
                output_offset: start,
                output_length: layout.total_bytes - start,
                entry: entries.len() - 1,
                source: tensor.clone(),
                order,
            });
        }
        Ok(HfImport {
            config,
            options: options.clone(),
            name: name.to_string(),
            source: source.to_string(),
            steps,
            entries,
            hf_default,
            total_bytes: layout.total_bytes,
            warnings,
            max_abs_error: 0.0,
        })
    }

    /// Bytes of safetensors the steps read.
    pub fn source_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.length).sum()
    }

    /// Runs step `index` on the tensor's bytes; returns its output (the
    /// package bytes at `output_offset`). Decodes and quantizes slab by slab.
    pub fn run(&mut self, index: usize, bytes: &[u8]) -> Result<Vec<u8>> {
        let step = self.steps.get(index).ok_or_else(|| Error::Config {
            message: format!("import step {index} does not exist (there are {})", self.steps.len()),
        })?;
        check_step_bytes(&step.file, &step.tensor, bytes.len(), step.length)?;
        let entry = &self.entries[step.entry];
        let format = entry.weight_format()?;
        let cols = entry.rows_cols().1;
        let size = step.source.dtype.size();
        let row = |r: usize| &bytes[r * cols * size..(r + 1) * cols * size];
        let slab = |start: usize, count: usize| {
            let values = match (&step.order, entry.shape.len()) {
                (None, _) => step.source.decode(&bytes[start * cols * size..(start + count) * cols * size])?,
                (Some(order), 2) => {
                    let mut values = Vec::with_capacity(count * cols);
                    for &r in &order[start..start + count] {
                        values.extend(step.source.decode(row(r))?);
                    }
                    values
                }
                (Some(order), _) => {
                    let all = step.source.decode(bytes)?;
                    order.iter().map(|&i| all[i]).collect()
                }
            };
            requantize(format, &values)
        };
        let mut out = Vec::with_capacity(step.output_length as usize);
        let error = encode_tensor(entry, slab, |b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        self.max_abs_error = self.max_abs_error.max(error);
        Ok(out)
    }

    /// The folder's tokenizer.json: its own, or Phi-3-small's built from its
    /// tiktoken ranks; None (with a warning) when it has neither.
    pub fn tokenizer_json(&mut self, files: Files) -> Result<Option<String>> {
        if let Some(json) = files("tokenizer.json")? {
            return Ok(Some(json));
        }
        if self.config.architecture == Architecture::Phi3Small {
            if let Some(text) = files("cl100k_base.tiktoken")? {
                // Phi-3-small ships tiktoken ranks and its special tokens in Python.
                let ranks = tiktoken::parse_tiktoken(&text, "cl100k_base.tiktoken")?;
                let specials = tiktoken::phi3small_special_tokens();
                return Ok(Some(tiktoken::tokenizer_json(&ranks, tiktoken::CL100K_PATTERN, &specials)?.to_string()));
            }
        }
        self.warnings.push("no tokenizer.json: the package can compute logits but not chat".into());
        Ok(None)
    }

    /// model.json for the package, once every step ran and `shards` hold its
    /// bytes; `tokenizer` is [`HfImport::tokenizer_json`]'s answer.
    pub fn manifest(&self, shards: Vec<Shard>, tokenizer: Option<&str>, files: Files) -> Result<Manifest> {
        check_shards(&shards, self.total_bytes)?;
        let config = &self.config;
        let tokenizer_config = read_json(files, "tokenizer_config.json")?;
        let token_text = |key: &str| -> Option<String> {
            let v = tokenizer_config.as_ref()?.get(key)?;
            let text = v.as_str().map(String::from).or_else(|| v.get("content")?.as_str().map(String::from));
            // Phi-3-small's tokenizer class sets both to <|endoftext|> in code.
            text.or_else(|| (config.architecture == Architecture::Phi3Small).then(|| "<|endoftext|>".to_string()))
        };
        let chat_template = tokenizer_config.as_ref().and_then(|t| t.get("chat_template")).and_then(|t| match t {
            serde_json::Value::String(s) => Some(s.clone()),
            // A list of named templates: take "default".
            serde_json::Value::Array(list) => list
                .iter()
                .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|e| e.get("template")?.as_str().map(String::from)),
            _ => None,
        });
        let mut stop_token_ids = config.eos_token_ids.clone();
        // Phi-3-small's chat turns end in <|end|>, which its config does not list.
        if let (Architecture::Phi3Small, Some(tokenizer)) = (config.architecture, tokenizer) {
            let end = added_token_id(tokenizer, "<|end|>")?;
            stop_token_ids.extend(end.filter(|id| !stop_token_ids.contains(id)));
        }
        if let Some(generation) = read_json(files, "generation_config.json")? {
            let ids = match generation.get("eos_token_id") {
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).collect(),
                Some(other) => other.as_u64().into_iter().collect::<Vec<_>>(),
                None => Vec::new(),
            };
            for id in ids {
                if !stop_token_ids.contains(&(id as u32)) {
                    stop_token_ids.push(id as u32);
                }
            }
        }
        let default = format!("{} for matrices, f32 for vectors", self.hf_default.name());
        Ok(Manifest {
            format: FORMAT.into(),
            name: self.name.clone(),
            tokenizer: tokenizer.map(|_| "tokenizer.json".to_string()),
            chat_template,
            bos_token: token_text("bos_token"),
            eos_token: token_text("eos_token"),
            stop_token_ids,
            quantization: describe_quantization(&self.options, &default),
            source: self.source.clone(),
            config: config.clone(),
            tensors: self.entries.clone(),
            shards,
        })
    }

    /// Tensors per stored format.
    pub fn formats(&self) -> BTreeMap<String, usize> {
        count_formats(&self.entries)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
}

/// Where Phi-3(.5)-vision keeps its image tower, separators and projector.
pub const VISION_PREFIX: &str = "model.vision_embed_tokens.";

/// The stored shape of a Phi-3-vision image tensor, or None for what the
/// features never use: CLIP's layers after `layer_idx`, its post-LayerNorm,
/// and `wte` (a second name for embed_tokens). The patch convolution
/// [C, 3, p, p] becomes the matrix [C, 3p²] of an im2col product; the
/// separators [1, 1, (1,) 4C] become vectors.
fn vision_shape(vision: &VisionConfig, name: &str, shape: &[usize]) -> Option<Vec<usize>> {
    let rest = &name[VISION_PREFIX.len()..];
    if rest.starts_with("wte.") || rest.contains("post_layernorm.") {
        return None;
    }
    if let Some((_, after)) = rest.split_once("encoder.layers.") {
        let layer: usize = after.split('.').next()?.parse().ok()?;
        if layer >= vision.num_layers {
            return None;
        }
    }
    Some(match rest {
        "glb_GN" | "sub_GN" => vec![shape.iter().product()],
        _ if rest.ends_with("patch_embedding.weight") && shape.len() == 4 => {
            vec![shape[0], shape[1..].iter().product()]
        }
        _ => shape.to_vec(),
    })
}

/// The image tower keeps at least 8 bits (q4 costs a vision tower more than
/// a decoder, and it is a tenth of the model); a matrix whose rows are not
/// whole blocks (the patch embedding's 588 columns) is f16, the position
/// table (read once at load, 2.4 MB) f32.
pub fn vision_matrix_format(name: &str, requested: WeightFormat, cols: usize) -> WeightFormat {
    if name.ends_with("position_embedding.weight") {
        return WeightFormat::F32;
    }
    let format = match requested {
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => WeightFormat::Q8_0,
        other => other,
    };
    match format {
        WeightFormat::F32 | WeightFormat::F16 => format,
        _ if !cols.is_multiple_of(crate::quant::BLOCK) => WeightFormat::F16,
        _ => format,
    }
}

/// How a Phi-3-small checkpoint tensor is stored: its runtime name and, for
/// the fused projections, the source rows in runtime order — qkv from groups
/// per KV head (`group` query heads, K, V) to Q | K | V, and up_proj's
/// interleaved (gelu, linear) pairs to the gelu half then the linear half.
/// None: not stored (lm_head when tied).
fn phi3small_layout(config: &ModelConfig, name: &str, rows: usize) -> Option<(String, Option<Vec<usize>>)> {
    if name == "lm_head.weight" && config.tie_word_embeddings {
        return None;
    }
    if let Some(rest) = name.strip_prefix("model.final_layernorm.") {
        return Some((format!("model.norm.{rest}"), None));
    }
    let (d, kv) = (config.head_dim, config.num_kv_heads);
    let group = config.num_heads / kv;
    if name.contains(".self_attn.query_key_value.") {
        let first = |g: usize, j: usize| (g * (group + 2) + j) * d;
        let q = (0..config.num_heads).flat_map(|h| first(h / group, h % group)..first(h / group, h % group) + d);
        let k = (0..kv).flat_map(|g| first(g, group)..first(g, group) + d);
        let v = (0..kv).flat_map(|g| first(g, group + 1)..first(g, group + 1) + d);
        return Some((name.replace(".query_key_value.", ".qkv_proj."), Some(q.chain(k).chain(v).collect())));
    }
    if name.contains(".mlp.up_proj.") {
        let order = (0..rows).step_by(2).chain((1..rows).step_by(2)).collect();
        return Some((name.replace(".up_proj.", ".gate_up_proj."), Some(order)));
    }
    Some((name.replace(".self_attn.dense.", ".self_attn.o_proj."), None))
}

/// An embedding model's pooling from its sentence-transformers files
/// (modules.json, the Pooling module's config.json, sentence_bert_config.json);
/// mean pooling with L2 normalisation when they are missing.
fn sentence_pooling(
    config: &ModelConfig,
    read_json: &dyn Fn(&str) -> Result<Option<serde_json::Value>>,
    warnings: &mut Vec<String>,
) -> Result<Pooling> {
    let modules = read_json("modules.json")?;
    let module = |kind: &str| -> Option<String> {
        modules.as_ref()?.as_array()?.iter().find_map(|m| {
            let t = m.get("type")?.as_str()?;
            t.ends_with(kind).then(|| m.get("path").and_then(|p| p.as_str()).unwrap_or("").to_string())
        })
    };
    let max_position = config.max_position_embeddings.min(crate::gpu::ENCODER_MAX_KEYS);
    let max_seq_length = read_json("sentence_bert_config.json")?
        .and_then(|c| c.get("max_seq_length")?.as_u64())
        .map_or(max_position, |n| (n as usize).min(max_position));
    let Some(pooling_dir) = module("models.Pooling") else {
        warnings.push("no sentence-transformers modules.json: using mean pooling with L2 normalisation".into());
        return Ok(Pooling { mode: PoolingMode::Mean, normalize: true, max_seq_length });
    };
    let pooling = read_json(&format!("{pooling_dir}/config.json"))?.unwrap_or_default();
    let flag = |key: &str| pooling.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
    let mode = match (flag("pooling_mode_mean_tokens"), flag("pooling_mode_cls_token")) {
        (true, false) => PoolingMode::Mean,
        (false, true) => PoolingMode::Cls,
        _ => {
            return Err(Error::Unsupported {
                what: format!("the pooling in {pooling_dir}/config.json"),
                supported: "exactly one of mean tokens or the CLS token".into(),
            })
        }
    };
    Ok(Pooling { mode, normalize: module("models.Normalize").is_some(), max_seq_length })
}

/// The id of added token `content` in a tokenizer.json's text, if it has one.
fn added_token_id(tokenizer: &str, content: &str) -> Result<Option<u32>> {
    let json: serde_json::Value =
        serde_json::from_str(tokenizer).map_err(|e| Error::format("tokenizer.json", format!("malformed JSON: {e}")))?;
    let added = json.get("added_tokens").and_then(|a| a.as_array()).map(Vec::as_slice).unwrap_or_default();
    Ok(added
        .iter()
        .find(|t| t.get("content").and_then(|c| c.as_str()) == Some(content))
        .and_then(|t| t.get("id")?.as_u64())
        .map(|id| id as u32))
}
