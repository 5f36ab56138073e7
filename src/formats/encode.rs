//! Tensors into the package layout, shared by the native converter
//! (`phi-web convert`) and the in-browser import of a GGUF: where each chunk
//! goes is decided from shapes and formats alone ([`PackageLayout`]), before
//! any tensor byte is read, so an import can skip what an interrupted one
//! already stored; [`encode_tensor`] then produces the bytes slab by slab.

use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgmlType, TensorInfo};
use crate::formats::kquant;
use crate::formats::package::{Chunk, Shard, TensorEntry, MAX_CHUNK_BYTES};
use crate::quant::{self, GpuLayout, WeightFormat, BLOCK};

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Format for every matrix; `None` = each source's default.
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

/// Elements per slab when encoding a large matrix (bounds peak memory).
pub const SLAB_ELEMENTS: usize = 1 << 24;

/// Places tensors one after another in the package's byte stream (shards of
/// `shard_bytes`), each matrix in row chunks of at most `chunk_bytes`.
pub struct PackageLayout {
    shard_bytes: u64,
    chunk_bytes: u64,
    /// Bytes placed so far.
    pub total_bytes: u64,
}

impl PackageLayout {
    pub fn new(options: &ConvertOptions) -> PackageLayout {
        PackageLayout { shard_bytes: options.shard_bytes.max(1), chunk_bytes: options.chunk_bytes, total_bytes: 0 }
    }

    /// The manifest entry of the next tensor; its bytes are [`encode_tensor`]'s.
    pub fn place(&mut self, name: &str, shape: &[usize], format: WeightFormat) -> Result<TensorEntry> {
        let (rows, cols) = rows_cols(name, shape)?;
        let row_payload = quant::gpu_size(format, 1, cols).0.max(1) as u64;
        // Even chunk sizes keep 2-byte scales aligned when slabs are concatenated.
        let chunk_rows = ((self.chunk_bytes / row_payload) as usize).max(2) & !1;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = chunk_rows.min(rows - start);
            let (payload_bytes, scales_bytes) = quant::gpu_size(format, n, cols);
            let (shard, offset) = (self.total_bytes / self.shard_bytes, self.total_bytes % self.shard_bytes);
            let (payload_bytes, scales_bytes) = (payload_bytes as u64, scales_bytes as u64);
            chunks.push(Chunk { rows: n, shard: shard as usize, offset, payload_bytes, scales_bytes });
            self.total_bytes += payload_bytes + scales_bytes;
            start += n;
        }
        Ok(TensorEntry { name: name.to_string(), format: format.name().into(), shape: shape.to_vec(), chunks })
    }
}

/// Fails unless an import step got the `expected` bytes it reads.
pub fn check_step_bytes(file: &str, tensor: &str, got: usize, expected: u64) -> Result<()> {
    if got as u64 == expected {
        return Ok(());
    }
    Err(Error::format(file, format!("tensor {tensor}: {got} bytes were read, {expected} are needed (truncated?)")))
}

/// Fails unless `shards` hold the `planned` bytes of an import.
pub fn check_shards(shards: &[Shard], planned: u64) -> Result<()> {
    let stored: u64 = shards.iter().map(|s| s.bytes).sum();
    if stored == planned {
        return Ok(());
    }
    Err(Error::Config { message: format!("the shards hold {stored} bytes; the import plans {planned}") })
}

/// Tensors per stored format.
pub fn count_formats(entries: &[TensorEntry]) -> std::collections::BTreeMap<String, usize> {
    let mut formats = std::collections::BTreeMap::new();
    for e in entries {
        *formats.entry(e.format.clone()).or_insert(0) += 1;
    }
    formats
}

/// (rows, cols) of a vector [n] (one row) or a matrix.
fn rows_cols(name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [n] => Ok((1, *n)),
        [rows, cols] => Ok((*rows, *cols)),
        _ => Err(Error::Config { message: format!("tensor {name}: shape {shape:?} is not a vector or a matrix") }),
    }
}

/// Writes `entry`'s chunks to `sink`: per chunk the payload of each slab,
/// then the chunk's scales. `slab(start, count)` gives rows [start, start +
/// count) in GPU layout and the largest change the conversion made. Returns
/// the largest change over the tensor.
pub fn encode_tensor(
    entry: &TensorEntry,
    mut slab: impl FnMut(usize, usize) -> Result<(GpuLayout, f32)>,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<f32> {
    let (_, cols) = rows_cols(&entry.name, &entry.shape)?;
    let slab_rows = (SLAB_ELEMENTS / cols).max(2) & !1;
    let mut error = 0.0f32;
    let mut start = 0;
    for chunk in &entry.chunks {
        let (mut payload, mut scales) = (0u64, Vec::new());
        let mut slab_start = start;
        while slab_start < start + chunk.rows {
            let m = slab_rows.min(start + chunk.rows - slab_start);
            let (layout, e) = slab(slab_start, m)?;
            error = error.max(e);
            sink(&layout.data)?;
            payload += layout.data.len() as u64;
            scales.extend_from_slice(&layout.scales);
            slab_start += m;
        }
        scales.resize(scales.len().next_multiple_of(4), 0);
        if payload != chunk.payload_bytes || scales.len() as u64 != chunk.scales_bytes {
            return Err(Error::Config {
                message: format!(
                    "tensor {}: encoded {payload} + {} bytes where {} + {} were planned",
                    entry.name,
                    scales.len(),
                    chunk.payload_bytes,
                    chunk.scales_bytes
                ),
            });
        }
        sink(&scales)?;
        start += chunk.rows;
    }
    Ok(error)
}

/// Rows [start, start + count) of a GGUF tensor's raw bytes (`cols` per row)
/// in `format`'s GPU layout, and the largest change made (0 when copied).
pub fn gguf_slab(
    ggml: GgmlType,
    bytes: &[u8],
    name: &str,
    format: WeightFormat,
    cols: usize,
    start: usize,
    count: usize,
) -> Result<(GpuLayout, f32)> {
    let (block_elems, block_bytes) = ggml.block();
    let row_bytes = cols / block_elems as usize * block_bytes as usize;
    let rows = bytes.get(start * row_bytes..(start + count) * row_bytes).ok_or_else(|| Error::Config {
        message: format!("tensor {name}: rows {start}..{} lie outside its {} bytes", start + count, bytes.len()),
    })?;
    let same = matches!(
        (ggml, format),
        (GgmlType::F32, WeightFormat::F32)
            | (GgmlType::F16, WeightFormat::F16)
            | (GgmlType::Q4_0, WeightFormat::Q4_0)
            | (GgmlType::Q4_1, WeightFormat::Q4_1)
            | (GgmlType::Q8_0, WeightFormat::Q8_0)
    );
    if same {
        return Ok((quant::to_gpu_layout(format, rows)?, 0.0));
    }
    if (ggml, format) == (GgmlType::Q4K, WeightFormat::Q4_1) {
        let converted = kquant::q4_k_to_q4_1(rows)?;
        let error = max_diff(&kquant::dequantize_q4_k(rows)?, &quant::dequantize(WeightFormat::Q4_1, &converted)?);
        return Ok((quant::to_gpu_layout(format, &converted)?, error));
    }
    requantize(format, &dequantize_gguf(ggml, rows, name)?)
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

/// Quantizes `values` (on every core natively, in whole blocks; on one in
/// wasm) and packs them for the GPU; returns the largest change made.
pub fn requantize(format: WeightFormat, values: &[f32]) -> Result<(GpuLayout, f32)> {
    let quantize = |chunk: &[f32]| -> Result<(Vec<u8>, f32)> {
        let gguf = quant::quantize(format, chunk)?;
        let error = if format == WeightFormat::F32 { 0.0 } else { max_diff(chunk, &quant::dequantize(format, &gguf)?) };
        Ok((gguf, error))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parts: Vec<Result<(Vec<u8>, f32)>> = if threads == 1 || cfg!(target_arch = "wasm32") {
        vec![quantize(values)]
    } else {
        let part = values.len().div_ceil(threads).next_multiple_of(BLOCK).max(BLOCK);
        std::thread::scope(|scope| {
            let handles: Vec<_> = values.chunks(part).map(|chunk| scope.spawn(move || quantize(chunk))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| Err(Error::Config { message: "a quantization thread panicked".into() }))
                })
                .collect()
        })
    };
    let (mut gguf, mut error) = (Vec::new(), 0.0f32);
    for part in parts {
        let (bytes, e) = part?;
        gguf.extend_from_slice(&bytes);
        error = error.max(e);
    }
    Ok((quant::to_gpu_layout(format, &gguf)?, error))
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// The stored format of a matrix: the user's choice, else the default for its source.
pub fn matrix_format(
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

/// GGUF's own format where the runtime has a kernel; the nearest one otherwise.
pub fn default_for(info: &TensorInfo) -> WeightFormat {
    match info.ggml_type {
        GgmlType::F32 | GgmlType::BF16 => WeightFormat::F32,
        GgmlType::F16 => WeightFormat::F16,
        GgmlType::Q4_0 => WeightFormat::Q4_0,
        GgmlType::Q4_1 | GgmlType::Q4K => WeightFormat::Q4_1,
        GgmlType::Q8_0 | GgmlType::Q6K => WeightFormat::Q8_0,
    }
}

pub fn describe_quantization(options: &ConvertOptions, default: &str) -> String {
    match options.quant {
        Some(f) => format!("{} for matrices, f32 for vectors", f.name()),
        None => default.to_string(),
    }
}

/// Whether `name` is a MoE router: kept f32 whatever the matrices get, since a
/// rounding there changes which experts run (llama.cpp keeps ffn_gate_inp f32 too).
pub fn is_router(name: &str) -> bool {
    name.ends_with("block_sparse_moe.gate.weight")
}

/// Checks a tensor's shape against the config, for the names the engine reads.
pub fn check_shape(config: &ModelConfig, name: &str, shape: &[usize]) -> Result<()> {
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
