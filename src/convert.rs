//! `phi-web convert`: a GGUF file or a Hugging Face folder → a phi-web package.
//!
//! Streams tensor by tensor (and, for large matrices, slab by slab of rows),
//! so peak memory stays near twice the largest tensor whatever the model size.
//! Defaults: GGUF formats the runtime has kernels for are kept bit-exact;
//! Q4_K becomes q4_1 and Q6_K q8_0 (the error is reported); Hugging Face
//! matrices become q4_0 (f16 for BERT embedding models); vectors (norms,
//! biases) stay f32.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use crate::config::{Architecture, ModelConfig, Pooling, PoolingMode};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgmlType, Gguf, TensorInfo};
use crate::formats::kquant;
use crate::formats::package::{Chunk, Manifest, Shard, ShardWriter, TensorEntry, FORMAT, MANIFEST, MAX_CHUNK_BYTES};
use crate::formats::{safetensors, tiktoken};
use crate::quant::{self, GpuLayout, WeightFormat, BLOCK};

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Format for every matrix; `None` = the defaults above.
    pub quant: Option<WeightFormat>,
    pub shard_bytes: u64,
    /// Largest payload of one row chunk (a GPU binding); see [`MAX_CHUNK_BYTES`].
    pub chunk_bytes: u64,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions { quant: None, shard_bytes: 64 << 20, chunk_bytes: MAX_CHUNK_BYTES }
    }
}

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

/// Elements per slab when converting a large matrix (bounds peak memory).
const SLAB_ELEMENTS: usize = 1 << 24;

/// How one source tensor becomes stored rows.
enum Source<'a> {
    /// GGUF blocks, already row-permuted as needed: (type, bytes).
    Gguf(GgmlType, Vec<u8>),
    /// A safetensors tensor read slab by slab.
    Safetensors(&'a safetensors::Tensor, File),
    /// A safetensors matrix whose stored row r is source row `order[r]`.
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

/// Writes tensors and collects their manifest entries.
struct Writer {
    shards: ShardWriter,
    chunk_bytes: u64,
    entries: Vec<TensorEntry>,
    max_abs_error: f32,
}

impl Writer {
    fn new(out_dir: &Path, options: &ConvertOptions) -> Writer {
        Writer {
            shards: ShardWriter::new(out_dir, options.shard_bytes),
            chunk_bytes: options.chunk_bytes,
            entries: Vec::new(),
            max_abs_error: 0.0,
        }
    }

    /// Stores `source` as `format` under `name` with PyTorch shape `shape`.
    fn tensor(&mut self, name: &str, shape: &[usize], format: WeightFormat, source: Source) -> Result<()> {
        let (rows, cols) = match shape {
            [n] => (1, *n),
            [rows, cols] => (*rows, *cols),
            _ => {
                return Err(Error::Config {
                    message: format!("tensor {name}: shape {shape:?} is not a vector or a matrix"),
                })
            }
        };
        let row_payload = quant::gpu_size(format, 1, cols).0.max(1) as u64;
        // Even slab sizes keep 2-byte scales aligned when slabs are concatenated.
        let chunk_rows = ((self.chunk_bytes / row_payload) as usize).max(2) & !1;
        let slab_rows = (SLAB_ELEMENTS / cols).max(2) & !1;
        let mut source = source;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = chunk_rows.min(rows - start);
            let (shard, offset) = self.shards.position();
            let (mut payload_bytes, mut scales) = (0u64, Vec::new());
            let mut slab_start = start;
            while slab_start < start + n {
                let m = slab_rows.min(start + n - slab_start);
                let (layout, error) = slab(&mut source, name, format, cols, slab_start, m)?;
                self.max_abs_error = self.max_abs_error.max(error);
                self.shards.write(&layout.data)?;
                payload_bytes += layout.data.len() as u64;
                scales.extend_from_slice(&layout.scales);
                slab_start += m;
            }
            scales.resize(scales.len().next_multiple_of(4), 0);
            self.shards.write(&scales)?;
            chunks.push(Chunk { rows: n, shard, offset, payload_bytes, scales_bytes: scales.len() as u64 });
            start += n;
        }
        self.entries.push(TensorEntry {
            name: name.to_string(),
            format: format.name().into(),
            shape: shape.to_vec(),
            chunks,
        });
        Ok(())
    }
}

/// Rows [start, start + count) of `source` in `format`'s GPU layout, and the
/// largest absolute change the conversion made (0 for bit-exact copies).
fn slab(
    source: &mut Source,
    name: &str,
    format: WeightFormat,
    cols: usize,
    start: usize,
    count: usize,
) -> Result<(GpuLayout, f32)> {
    match source {
        Source::Gguf(ggml, bytes) => {
            let (block_elems, block_bytes) = ggml.block();
            let row_bytes = cols / block_elems as usize * block_bytes as usize;
            let rows = &bytes[start * row_bytes..(start + count) * row_bytes];
            let same = matches!(
                (*ggml, format),
                (GgmlType::F32, WeightFormat::F32)
                    | (GgmlType::F16, WeightFormat::F16)
                    | (GgmlType::Q4_0, WeightFormat::Q4_0)
                    | (GgmlType::Q4_1, WeightFormat::Q4_1)
                    | (GgmlType::Q8_0, WeightFormat::Q8_0)
            );
            if same {
                return Ok((quant::to_gpu_layout(format, rows)?, 0.0));
            }
            if (*ggml, format) == (GgmlType::Q4K, WeightFormat::Q4_1) {
                let converted = kquant::q4_k_to_q4_1(rows)?;
                let error =
                    max_diff(&kquant::dequantize_q4_k(rows)?, &quant::dequantize(WeightFormat::Q4_1, &converted)?);
                return Ok((quant::to_gpu_layout(format, &converted)?, error));
            }
            let values = dequantize_gguf(*ggml, rows, name)?;
            requantize(format, &values)
        }
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

/// Quantizes `values` on every core (in whole blocks) and packs them for the GPU.
fn requantize(format: WeightFormat, values: &[f32]) -> Result<(GpuLayout, f32)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let part = values.len().div_ceil(threads).next_multiple_of(BLOCK).max(BLOCK);
    let parts: Vec<Result<(Vec<u8>, f32)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = values
            .chunks(part)
            .map(|chunk| {
                scope.spawn(move || {
                    let gguf = quant::quantize(format, chunk)?;
                    let error = if format == WeightFormat::F32 {
                        0.0
                    } else {
                        max_diff(chunk, &quant::dequantize(format, &gguf)?)
                    };
                    Ok((gguf, error))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Err(Error::Config { message: "a quantization thread panicked".into() }))
            })
            .collect()
    });
    let (mut gguf, mut error) = (Vec::new(), 0.0f32);
    for part in parts {
        let (bytes, e) = part?;
        gguf.extend_from_slice(&bytes);
        error = error.max(e);
    }
    Ok((quant::to_gpu_layout(format, &gguf)?, error))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Any supported GGUF tensor type to f32.
pub fn dequantize_gguf(ggml: GgmlType, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
    Ok(match ggml {
        GgmlType::F32 => quant::dequantize(WeightFormat::F32, bytes)?,
        GgmlType::F16 => quant::dequantize(WeightFormat::F16, bytes)?,
        GgmlType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        GgmlType::Q4_0 => quant::dequantize(WeightFormat::Q4_0, bytes)?,
        GgmlType::Q4_1 => quant::dequantize(WeightFormat::Q4_1, bytes)?,
        GgmlType::Q8_0 => quant::dequantize(WeightFormat::Q8_0, bytes)?,
        GgmlType::Q4K => kquant::dequantize_q4_k(bytes)?,
        GgmlType::Q6K => {
            kquant::dequantize_q6_k(bytes).map_err(|e| Error::Config { message: format!("tensor {name}: {e}") })?
        }
    })
}

/// The stored format of a matrix: the user's choice, else the default for its source.
fn matrix_format(
    options: &ConvertOptions,
    default: WeightFormat,
    cols: usize,
    name: &str,
    warnings: &mut Vec<String>,
) -> WeightFormat {
    let format = options.quant.unwrap_or(default);
    if format != WeightFormat::F32 && format != WeightFormat::F16 && !cols.is_multiple_of(BLOCK) {
        warnings.push(format!("{name}: {cols} columns is not a multiple of {BLOCK}; stored as f32"));
        return WeightFormat::F32;
    }
    format
}

/// GGUF tensor names → Hugging Face names; `None` for tensors that are not weights.
pub fn hf_name(arch: Architecture, gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output_norm.bias" => Some("model.norm.bias"),
        "output.weight" => Some("lm_head.weight"),
        "output.bias" => Some("lm_head.bias"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.into());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_norm.bias" => "input_layernorm.bias",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_norm.bias" => "post_attention_layernorm.bias",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_qkv.weight" => "self_attn.qkv_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_output.bias" => "self_attn.o_proj.bias",
        "ffn_gate_inp.weight" => "block_sparse_moe.gate.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        // Phi-3's ffn_up is the fused gate_up_proj (no separate ffn_gate).
        "ffn_up.weight" if arch == Architecture::Phi3 => "mlp.gate_up_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// llama.cpp's stacked experts `blk.N.ffn_{gate,up,down}_exps.weight`
/// ([E, rows, cols]) → (N, the HF projection each expert's slice becomes).
fn gguf_expert_stack(gguf_name: &str) -> Option<(usize, &'static str)> {
    let (layer, part) = gguf_name.strip_prefix("blk.")?.split_once('.')?;
    let projection = match part {
        "ffn_gate_exps.weight" => "w1",
        "ffn_up_exps.weight" => "w3",
        "ffn_down_exps.weight" => "w2",
        _ => return None,
    };
    Some((layer.parse().ok()?, projection))
}

/// Whether `name` is a MoE router: kept f32 whatever the matrices get, since a
/// rounding there changes which experts run (llama.cpp keeps ffn_gate_inp f32 too).
fn is_router(name: &str) -> bool {
    name.ends_with("block_sparse_moe.gate.weight")
}

/// Undoes llama.cpp's Q/K row permutation (convert_hf_to_gguf.py `permute`):
/// within each head, GGUF row 2i + h holds HF row h·d/2 + i.
fn unpermute_rows(bytes: &[u8], rows: usize, heads: usize) -> Result<Vec<u8>> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) || !bytes.len().is_multiple_of(rows) {
        return Err(Error::Config {
            message: format!("cannot undo the Q/K permutation of {rows} rows over {heads} heads"),
        });
    }
    let row_bytes = bytes.len() / rows;
    let half = rows / heads / 2;
    let mut out = vec![0u8; bytes.len()];
    for head in 0..heads {
        for h in 0..2 {
            for i in 0..half {
                let hf_row = head * 2 * half + h * half + i;
                let gguf_row = head * 2 * half + 2 * i + h;
                out[hf_row * row_bytes..][..row_bytes].copy_from_slice(&bytes[gguf_row * row_bytes..][..row_bytes]);
            }
        }
    }
    Ok(out)
}

fn convert_gguf(
    input: &Path,
    out_dir: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ConvertSummary> {
    let gguf = Gguf::open(input)?;
    let mut config = ModelConfig::from_gguf(&gguf)?;
    let mut file = File::open(input).map_err(|e| Error::io(input, e))?;
    let mut warnings = Vec::new();
    if let (Some(short), Some(long)) =
        (gguf.tensor("rope_factors_short.weight"), gguf.tensor("rope_factors_long.weight"))
    {
        let (s, l) = (gguf.read(&mut file, short)?, gguf.read(&mut file, long)?);
        let (s, l) =
            (dequantize_gguf(short.ggml_type, &s, &short.name)?, dequantize_gguf(long.ggml_type, &l, &long.name)?);
        config.set_longrope_factors(&gguf, s, l)?;
        if config.architecture == Architecture::PhiMoe {
            warnings.push(
                "PhiMoE GGUFs carry llama.cpp's computed LongRoPE attention factor, not the config's \
                 short_mscale/long_mscale that transformers scales by (Phi-3.5-MoE: 1.19 instead of 1.24): \
                 convert the Hugging Face folder for transformers' logits"
                    .into(),
            );
        }
    }
    let total: u64 = gguf.tensors.iter().map(|t| t.size).sum();
    let mut writer = Writer::new(out_dir, options);
    let mut done = 0;
    for info in &gguf.tensors {
        progress(Progress { done, total, tensor: &info.name });
        done += info.size;
        if let Some((layer, projection)) = gguf_expert_stack(&info.name) {
            split_experts(&gguf, &mut file, info, layer, projection, &config, options, &mut writer, &mut warnings)?;
            continue;
        }
        let Some(name) = hf_name(config.architecture, &info.name) else {
            if !info.name.starts_with("rope_factors_") {
                warnings.push(format!("skipped tensor {} (not a weight phi-web uses)", info.name));
            }
            continue;
        };
        let shape = info.shape();
        check_shape(&config, &name, &shape)?;
        let mut bytes = gguf.read(&mut file, info)?;
        if config.architecture == Architecture::Llama {
            if name.ends_with("q_proj.weight") {
                bytes = unpermute_rows(&bytes, shape[0], config.num_heads)?;
            } else if name.ends_with("k_proj.weight") {
                bytes = unpermute_rows(&bytes, shape[0], config.num_kv_heads)?;
            }
        }
        let format = if shape.len() == 1 || is_router(&name) {
            WeightFormat::F32
        } else {
            matrix_format(options, default_for(info), shape[1], &name, &mut warnings)
        };
        writer.tensor(&name, &shape, format, Source::Gguf(info.ggml_type, bytes))?;
    }
    progress(Progress { done: total, total, tensor: "" });

    let tokens: Vec<&str> = gguf
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
        .unwrap_or_default();
    let token = |key: &str| {
        gguf.get(key).and_then(|v| v.as_u64()).and_then(|id| tokens.get(id as usize)).map(|s| s.to_string())
    };
    let mut stop_token_ids = config.eos_token_ids.clone();
    let tokenizer = match crate::formats::gguf_tokenizer::tokenizer_json(&gguf) {
        Ok(json) => {
            let path = out_dir.join("tokenizer.json");
            std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
            // Chat turns end in <|end|> (Phi-3, Phi-4-mini), <|im_end|> (Phi-4, ChatML) or <|endoftext|>.
            let ends = tokens.iter().enumerate().filter(|(_, t)| END_OF_TURN.contains(t)).map(|(id, _)| id as u32);
            for id in ends {
                if !stop_token_ids.contains(&id) {
                    stop_token_ids.push(id);
                }
            }
            Some("tokenizer.json".to_string())
        }
        Err(e) => {
            warnings.push(format!("tokenizer not converted: {e}"));
            None
        }
    };
    let name = gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or("model").to_string();
    let file_name = input.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let chat_template = match gguf.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        Some(template) => Some(template.to_string()),
        None => {
            let published = crate::chat_templates::published(&name).or(crate::chat_templates::published(&file_name));
            if published.is_some() {
                warnings.push(format!("no chat template in the GGUF: the one published for {name} is used"));
            }
            published.map(String::from)
        }
    };
    let quantization = describe_quantization(options, "kept from GGUF; Q4_K → q4_1, Q6_K → q8_0");
    let manifest = Manifest {
        format: FORMAT.into(),
        name,
        tokenizer,
        chat_template,
        bos_token: token("tokenizer.ggml.bos_token_id"),
        eos_token: token("tokenizer.ggml.eos_token_id"),
        stop_token_ids,
        quantization,
        source: file_name,
        config,
        tensors: Vec::new(),
        shards: Vec::new(),
    };
    finish(writer, manifest, out_dir, warnings)
}

/// Writes each expert of a stacked GGUF expert tensor as its own HF-named
/// matrix (`model.layers.N.block_sparse_moe.experts.E.w1.weight`), the
/// layout the loader stacks again on the GPU.
#[allow(clippy::too_many_arguments)]
fn split_experts(
    gguf: &Gguf,
    file: &mut File,
    info: &TensorInfo,
    layer: usize,
    projection: &str,
    config: &ModelConfig,
    options: &ConvertOptions,
    writer: &mut Writer,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let shape = info.shape();
    let experts = config.moe.as_ref().map_or(0, |m| m.experts);
    let [e, rows, cols] = shape[..] else {
        return Err(Error::Config {
            message: format!("tensor {}: shape {shape:?} is not [experts, rows, cols]", info.name),
        });
    };
    if e != experts {
        return Err(Error::Config {
            message: format!("tensor {} stacks {e} experts; the config has {experts}", info.name),
        });
    }
    let bytes = gguf.read(file, info)?;
    let per_expert = bytes.len() / e;
    for (expert, part) in bytes.chunks_exact(per_expert).enumerate() {
        let name = format!("model.layers.{layer}.block_sparse_moe.experts.{expert}.{projection}.weight");
        check_shape(config, &name, &[rows, cols])?;
        let format = matrix_format(options, default_for(info), cols, &name, warnings);
        writer.tensor(&name, &[rows, cols], format, Source::Gguf(info.ggml_type, part.to_vec()))?;
    }
    Ok(())
}

/// GGUF's own format where the runtime has a kernel; the nearest one otherwise.
fn default_for(info: &TensorInfo) -> WeightFormat {
    match info.ggml_type {
        GgmlType::F32 | GgmlType::BF16 => WeightFormat::F32,
        GgmlType::F16 => WeightFormat::F16,
        GgmlType::Q4_0 => WeightFormat::Q4_0,
        GgmlType::Q4_1 | GgmlType::Q4K => WeightFormat::Q4_1,
        GgmlType::Q8_0 | GgmlType::Q6K => WeightFormat::Q8_0,
    }
}

fn describe_quantization(options: &ConvertOptions, default: &str) -> String {
    match options.quant {
        Some(f) => format!("{} for matrices, f32 for vectors", f.name()),
        None => default.to_string(),
    }
}

/// Checks a tensor's shape against the config, for the names the engine reads.
fn check_shape(config: &ModelConfig, name: &str, shape: &[usize]) -> Result<()> {
    if config.architecture == Architecture::Bert {
        return Ok(());
    }
    let (h, d, i) = (config.hidden_size, config.head_dim, config.intermediate_size);
    let (q, kv) = (config.num_heads * d, config.num_kv_heads * d);
    let part = name.rsplit_once("layers.").and_then(|(_, rest)| rest.split_once('.')).map_or(name, |(_, p)| p);
    let expected: Option<Vec<usize>> = match part {
        "model.embed_tokens.weight" | "lm_head.weight" => Some(vec![config.vocab_size, h]),
        "model.norm.weight" | "input_layernorm.weight" | "post_attention_layernorm.weight" => Some(vec![h]),
        "model.norm.bias" | "input_layernorm.bias" | "post_attention_layernorm.bias" => Some(vec![h]),
        "self_attn.o_proj.bias" => Some(vec![h]),
        "lm_head.bias" => Some(vec![config.vocab_size]),
        "self_attn.qkv_proj.weight" => Some(vec![q + 2 * kv, h]),
        "self_attn.qkv_proj.bias" => Some(vec![q + 2 * kv]),
        "mlp.gate_up_proj.bias" => Some(vec![2 * i]),
        "mlp.down_proj.bias" => Some(vec![h]),
        "self_attn.q_proj.weight" => Some(vec![q, h]),
        "self_attn.q_proj.bias" => Some(vec![q]),
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => Some(vec![kv, h]),
        "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => Some(vec![kv]),
        "self_attn.o_proj.weight" => Some(vec![h, q]),
        "block_sparse_moe.gate.weight" => Some(vec![config.moe.as_ref().map_or(0, |m| m.experts), h]),
        "mlp.gate_up_proj.weight" => Some(vec![2 * i, h]),
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => Some(vec![i, h]),
        "mlp.down_proj.weight" => Some(vec![h, i]),
        _ if part.starts_with("block_sparse_moe.experts.") => match part.rsplit('.').nth(1) {
            Some("w1" | "w3") => Some(vec![i, h]),
            Some("w2") => Some(vec![h, i]),
            _ => None,
        },
        _ => None,
    };
    match expected {
        Some(e) if e != shape => {
            Err(Error::Config { message: format!("tensor {name} has shape {shape:?}; the config implies {e:?}") })
        }
        _ => Ok(()),
    }
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

/// Tokens that end a chat turn where a vocabulary has them.
const END_OF_TURN: [&str; 3] = ["<|end|>", "<|im_end|>", "<|endoftext|>"];

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
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| Error::format(MANIFEST, e.to_string()))?;
    let path = out_dir.join(MANIFEST);
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
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
