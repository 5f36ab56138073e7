//! `phi-web convert`: a GGUF file or a Hugging Face folder → a phi-web package.
//!
//! Streams tensor by tensor (and, for large matrices, slab by slab of rows),
//! so peak memory stays near twice the largest tensor whatever the model size.
//! A GGUF goes through [`GgufImport`], the plan the browser runs too (its
//! defaults are there); Hugging Face matrices become q4_0 (f16 for BERT
//! embedding models); vectors (norms, biases) stay f32.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::config::{Architecture, ModelConfig, Pooling, PoolingMode};
use crate::error::{Error, Result};
use crate::formats::encode::{
    check_shape, describe_quantization, encode_tensor, is_router, matrix_format, requantize, PackageLayout,
};
pub use crate::formats::encode::{dequantize_gguf, ConvertOptions};
use crate::formats::gguf::Gguf;
pub use crate::formats::gguf_import::hf_name;
use crate::formats::gguf_import::GgufImport;
use crate::formats::package::{Manifest, Shard, ShardWriter, TensorEntry, FORMAT, MANIFEST};
use crate::formats::{safetensors, tiktoken};
use crate::quant::{GpuLayout, WeightFormat};

/// What a conversion produced.
#[derive(Debug)]
pub struct ConvertSummary {
    pub tensors: usize,
    /// Tensors per stored format.
    pub formats: BTreeMap<String, usize>,
    pub total_bytes: u64,
    pub shards: usize,
    /// Largest |source − stored| over tensors that were not copied bit-exact.
    pub max_abs_error: f32,
    pub warnings: Vec<String>,
    pub config: ModelConfig,
}

/// Progress of a conversion: source bytes done of total, and the current tensor.
pub struct Progress<'a> {
    pub done: u64,
    pub total: u64,
    pub tensor: &'a str,
}

/// How one safetensors tensor becomes stored rows.
enum Source<'a> {
    /// Read slab by slab.
    Safetensors(&'a safetensors::Tensor, File),
    /// A matrix whose stored row r is source row `order[r]`.
    Rows(&'a safetensors::Tensor, File, Vec<usize>),
    /// Values already in memory (a reordered vector).
    Values(Vec<f32>),
}

/// Converts `input` (GGUF file or HF folder) into a package in `out_dir`.
pub fn convert(
    input: &Path,
    out_dir: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ConvertSummary> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    if input.is_dir() {
        convert_hf(input, out_dir, options, progress)
    } else {
        let mut magic = [0u8; 4];
        let mut file = File::open(input).map_err(|e| Error::io(input, e))?;
        std::io::Read::read_exact(&mut file, &mut magic)
            .map_err(|_| Error::format(input.display(), "too short to be a model file"))?;
        if &magic == b"GGUF" {
            convert_gguf(input, out_dir, options, progress)
        } else {
            Err(Error::format(
                input.display(),
                "neither a GGUF file nor a Hugging Face folder (config.json + *.safetensors)",
            ))
        }
    }
}

/// Runs a [`GgufImport`] over the file: each step reads its range and
/// appends its output to the shards.
fn convert_gguf(
    input: &Path,
    out_dir: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ConvertSummary> {
    let gguf = Gguf::open(input)?;
    let file_name = input.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let mut import = GgufImport::new(gguf, &file_name, options)?;
    let mut file = File::open(input).map_err(|e| Error::io(input, e))?;
    let mut shards = ShardWriter::new(out_dir, options.shard_bytes);
    let total = import.source_bytes();
    let mut done = 0;
    for index in 0..import.steps.len() {
        let step = &import.steps[index];
        progress(Progress { done, total, tensor: &step.tensor });
        done += step.length;
        let mut bytes = vec![0u8; step.length as usize];
        file.seek(SeekFrom::Start(step.offset)).map_err(|e| Error::io(input, e))?;
        file.read_exact(&mut bytes)
            .map_err(|e| Error::format(input.display(), format!("reading tensor {}: {e}", step.tensor)))?;
        shards.write(&import.run(index, &bytes)?)?;
    }
    progress(Progress { done: total, total, tensor: "" });
    let tokenizer = match import.tokenizer_json() {
        Ok(json) => {
            let path = out_dir.join("tokenizer.json");
            std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
            true
        }
        Err(e) => {
            import.warnings.push(format!("tokenizer not converted: {e}"));
            false
        }
    };
    let manifest = import.manifest(shards.finish()?, tokenizer)?;
    write_manifest(&manifest, out_dir)?;
    Ok(ConvertSummary {
        tensors: manifest.tensors.len(),
        formats: import.formats(),
        total_bytes: import.total_bytes,
        shards: manifest.shards.len(),
        max_abs_error: import.max_abs_error,
        warnings: std::mem::take(&mut import.warnings),
        config: manifest.config,
    })
}

/// Writes safetensors tensors and collects their manifest entries.
struct Writer {
    shards: ShardWriter,
    layout: PackageLayout,
    entries: Vec<TensorEntry>,
    max_abs_error: f32,
}

impl Writer {
    fn new(out_dir: &Path, options: &ConvertOptions) -> Writer {
        Writer {
            shards: ShardWriter::new(out_dir, options.shard_bytes),
            layout: PackageLayout::new(options),
            entries: Vec::new(),
            max_abs_error: 0.0,
        }
    }

    /// Stores `source` as `format` under `name` with PyTorch shape `shape`.
    fn tensor(&mut self, name: &str, shape: &[usize], format: WeightFormat, mut source: Source) -> Result<()> {
        let entry = self.layout.place(name, shape, format)?;
        let cols = entry.rows_cols().1;
        let shards = &mut self.shards;
        let error = encode_tensor(
            &entry,
            |start, count| slab(&mut source, format, cols, start, count),
            |bytes| shards.write(bytes),
        )?;
        self.max_abs_error = self.max_abs_error.max(error);
        self.entries.push(entry);
        Ok(())
    }
}

/// Rows [start, start + count) of `source` in `format`'s GPU layout, and the
/// largest absolute change the conversion made.
fn slab(
    source: &mut Source,
    format: WeightFormat,
    cols: usize,
    start: usize,
    count: usize,
) -> Result<(GpuLayout, f32)> {
    match source {
        Source::Safetensors(tensor, file) => {
            let values = tensor.read_f32_range(file, start * cols, count * cols)?;
            requantize(format, &values)
        }
        Source::Rows(tensor, file, order) => {
            let mut values = Vec::with_capacity(count * cols);
            for &row in &order[start..start + count] {
                values.extend(tensor.read_f32_range(file, row * cols, cols)?);
            }
            requantize(format, &values)
        }
        Source::Values(values) => requantize(format, &values[start * cols..(start + count) * cols]),
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

fn convert_hf(
    input: &Path,
    out_dir: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ConvertSummary> {
    let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
        let path = input.join(name);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| Error::format(path.display(), format!("malformed JSON: {e}")))
    };
    let config_json = read_json("config.json")?.ok_or_else(|| Error::format(input.display(), "no config.json"))?;
    let mut config = ModelConfig::from_hf(&config_json)?;
    let tensors = safetensors::read_headers(input)?;
    let mut warnings = Vec::new();
    if config.architecture == Architecture::Bert {
        config.pooling = Some(sentence_pooling(&config, &read_json, &mut warnings)?);
    }
    // Phi-3-small ties by its config even where a checkpoint keeps a copy of lm_head.
    if config.architecture != Architecture::Phi3Small {
        config.tie_word_embeddings =
            config.architecture != Architecture::Bert && !tensors.contains_key("lm_head.weight");
    }
    if let Some(embed) = tensors.get("model.embed_tokens.weight") {
        check_shape(&config, &embed.name, &embed.shape)?;
    }

    // Embedding models keep f16: retrieval quality suffers visibly at 4 bits.
    let hf_default = if config.architecture == Architecture::Bert { WeightFormat::F16 } else { WeightFormat::Q4_0 };
    let total: u64 = tensors.values().map(|t| t.len).sum();
    let mut writer = Writer::new(out_dir, options);
    let mut done = 0;
    for tensor in tensors.values() {
        progress(Progress { done, total, tensor: &tensor.name });
        done += tensor.len;
        if tensor.name.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        if let safetensors::Dtype::Integer(dtype) = tensor.dtype {
            warnings.push(format!("skipped {dtype} buffer {} (not a weight)", tensor.name));
            continue;
        }
        let (name, order) = match config.architecture {
            Architecture::Phi3Small => match phi3small_layout(&config, &tensor.name, tensor.shape[0]) {
                Some(layout) => layout,
                None => continue,
            },
            _ => (tensor.name.clone(), None),
        };
        check_shape(&config, &name, &tensor.shape)?;
        let format = match tensor.shape.len() {
            1 => WeightFormat::F32,
            2 if is_router(&tensor.name) => WeightFormat::F32,
            2 => matrix_format(options, hf_default, tensor.shape[1], &tensor.name, &mut warnings),
            _ => {
                return Err(Error::Unsupported {
                    what: format!("tensor {} with shape {:?}", tensor.name, tensor.shape),
                    supported: "vectors and matrices".into(),
                })
            }
        };
        let mut file = File::open(&tensor.file).map_err(|e| Error::io(&tensor.file, e))?;
        let source = match order {
            None => Source::Safetensors(tensor, file),
            Some(order) if tensor.shape.len() == 2 => Source::Rows(tensor, file, order),
            Some(order) => {
                let values = tensor.read_f32_range(&mut file, 0, tensor.shape[0])?;
                Source::Values(order.iter().map(|&i| values[i]).collect())
            }
        };
        writer.tensor(&name, &tensor.shape, format, source)?;
    }
    progress(Progress { done: total, total, tensor: "" });

    let tiktoken = input.join("cl100k_base.tiktoken");
    let tokenizer = if input.join("tokenizer.json").exists() {
        std::fs::copy(input.join("tokenizer.json"), out_dir.join("tokenizer.json"))
            .map_err(|e| Error::io(&out_dir.join("tokenizer.json"), e))?;
        Some("tokenizer.json".to_string())
    } else if config.architecture == Architecture::Phi3Small && tiktoken.exists() {
        // Phi-3-small ships tiktoken ranks and its special tokens in Python.
        let text = std::fs::read_to_string(&tiktoken).map_err(|e| Error::io(&tiktoken, e))?;
        let ranks = tiktoken::parse_tiktoken(&text, "cl100k_base.tiktoken")?;
        let json = tiktoken::tokenizer_json(&ranks, tiktoken::CL100K_PATTERN, &tiktoken::phi3small_special_tokens())?;
        let path = out_dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).map_err(|e| Error::io(&path, e))?;
        Some("tokenizer.json".to_string())
    } else {
        warnings.push("no tokenizer.json: the package can compute logits but not chat".into());
        None
    };
    let tokenizer_config = read_json("tokenizer_config.json")?;
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
    if config.architecture == Architecture::Phi3Small && tokenizer.is_some() {
        let end = added_token_id(&out_dir.join("tokenizer.json"), "<|end|>")?;
        stop_token_ids.extend(end.filter(|id| !stop_token_ids.contains(id)));
    }
    if let Some(generation) = read_json("generation_config.json")? {
        for id in generation
            .get("eos_token_id")
            .map(|v| match v {
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).collect(),
                other => other.as_u64().into_iter().collect::<Vec<_>>(),
            })
            .unwrap_or_default()
        {
            if !stop_token_ids.contains(&(id as u32)) {
                stop_token_ids.push(id as u32);
            }
        }
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        name: input.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()),
        tokenizer,
        chat_template,
        bos_token: token_text("bos_token"),
        eos_token: token_text("eos_token"),
        stop_token_ids,
        quantization: describe_quantization(options, &format!("{} for matrices, f32 for vectors", hf_default.name())),
        source: input.display().to_string(),
        config,
        tensors: Vec::new(),
        shards: Vec::new(),
    };
    finish(writer, manifest, out_dir, warnings)
}

/// The id of added token `content` in a tokenizer.json, if it has one.
fn added_token_id(path: &Path, content: &str) -> Result<Option<u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path.display(), format!("malformed JSON: {e}")))?;
    let added = json.get("added_tokens").and_then(|a| a.as_array()).map(Vec::as_slice).unwrap_or_default();
    Ok(added
        .iter()
        .find(|t| t.get("content").and_then(|c| c.as_str()) == Some(content))
        .and_then(|t| t.get("id")?.as_u64())
        .map(|id| id as u32))
}

fn finish(writer: Writer, mut manifest: Manifest, out_dir: &Path, warnings: Vec<String>) -> Result<ConvertSummary> {
    let Writer { shards, entries, max_abs_error, .. } = writer;
    let shards: Vec<Shard> = shards.finish()?;
    let mut formats = BTreeMap::new();
    for e in &entries {
        *formats.entry(e.format.clone()).or_insert(0) += 1;
    }
    manifest.tensors = entries;
    manifest.shards = shards;
    write_manifest(&manifest, out_dir)?;
    Ok(ConvertSummary {
        tensors: manifest.tensors.len(),
        formats,
        total_bytes: manifest.shards.iter().map(|s| s.bytes).sum(),
        shards: manifest.shards.len(),
        max_abs_error,
        warnings,
        config: manifest.config,
    })
}

fn write_manifest(manifest: &Manifest, out_dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(manifest).map_err(|e| Error::format(MANIFEST, e.to_string()))?;
    let path = out_dir.join(MANIFEST);
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))
}
