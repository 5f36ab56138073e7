//! A GGUF file → a phi-web package, planned from the header alone: which
//! byte range of the file each step reads, and where its output lands in
//! the package. `phi-web convert` runs the steps over a file; the browser
//! runs them over range requests (pkg/importer.js), skipping steps whose
//! output an interrupted import already stored. Both give the same bytes.
//!
//! Decisions: GGUF formats the runtime has kernels for are kept bit-exact;
//! Q4_K becomes q4_1 and Q6_K q8_0 (the error is reported); vectors and MoE
//! routers are f32; llama.cpp's Q/K row permutation (Llama) is undone;
//! stacked experts become one matrix per expert; LongRoPE factors go into
//! the config; the vocabulary becomes a tokenizer.json.

use std::collections::BTreeMap;

use crate::chat_templates;
use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::formats::encode::{
    check_shape, check_shards, check_step_bytes, count_formats, default_for, dequantize_gguf, describe_quantization,
    encode_tensor, gguf_slab, is_router, matrix_format, ConvertOptions, PackageLayout,
};
use crate::formats::gguf::{GgmlType, Gguf};
use crate::formats::gguf_tokenizer;
use crate::formats::package::{Manifest, Shard, TensorEntry, FORMAT};
use crate::quant::WeightFormat;

/// Tokens that end a chat turn where a vocabulary has them.
pub const END_OF_TURN: [&str; 3] = ["<|end|>", "<|im_end|>", "<|endoftext|>"];

/// One read of the GGUF and what becomes of it.
#[derive(Clone, Debug)]
pub struct Step {
    /// The GGUF tensor read (a stacked expert tensor is read one expert at a time).
    pub tensor: String,
    /// Absolute byte range in the file.
    pub offset: u64,
    pub length: u64,
    /// Where its output goes in the package's byte stream (0 bytes for LongRoPE factors).
    pub output_offset: u64,
    pub output_length: u64,
    action: Action,
}

#[derive(Clone, Debug)]
enum Action {
    /// Store as `entries[index]`, in `ggml`; `unpermute_heads`: undo llama.cpp's Q/K permutation.
    Store { index: usize, ggml: GgmlType, unpermute_heads: Option<usize> },
    /// A LongRoPE factor vector for the config.
    RopeFactors { long: bool, ggml: GgmlType },
}

pub struct GgufImport {
    gguf: Gguf,
    config: ModelConfig,
    options: ConvertOptions,
    /// The file's name or URL, as recorded in the manifest's `source`.
    source: String,
    pub steps: Vec<Step>,
    entries: Vec<TensorEntry>,
    rope_factors: [Option<Vec<f32>>; 2],
    /// Bytes of the whole package (the sum of the steps' outputs).
    pub total_bytes: u64,
    pub warnings: Vec<String>,
    /// Largest |source − stored| over the steps run so far that were not bit-exact.
    pub max_abs_error: f32,
}

impl GgufImport {
    /// Plans the import of `gguf` (its header), from the file or URL `source`.
    pub fn new(gguf: Gguf, source: &str, options: &ConvertOptions) -> Result<GgufImport> {
        let config = ModelConfig::from_gguf(&gguf)?;
        let mut layout = PackageLayout::new(options);
        let (mut steps, mut entries, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
        let has_rope_pair =
            gguf.tensor("rope_factors_short.weight").is_some() && gguf.tensor("rope_factors_long.weight").is_some();
        for info in &gguf.tensors {
            let step = |action, offset, length, output_offset, output_length| Step {
                tensor: info.name.clone(),
                offset,
                length,
                output_offset,
                output_length,
                action,
            };
            if has_rope_pair && (info.name == "rope_factors_short.weight" || info.name == "rope_factors_long.weight") {
                let long = info.name == "rope_factors_long.weight";
                let action = Action::RopeFactors { long, ggml: info.ggml_type };
                steps.push(step(action, info.offset, info.size, layout.total_bytes, 0));
                continue;
            }
            if let Some((layer, projection)) = gguf_expert_stack(&info.name) {
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
                let per_expert = info.size / e as u64;
                for expert in 0..e {
                    let name = format!("model.layers.{layer}.block_sparse_moe.experts.{expert}.{projection}.weight");
                    check_shape(&config, &name, &[rows, cols])?;
                    let format = matrix_format(options, default_for(info), cols, &name, &mut warnings);
                    let start = layout.total_bytes;
                    entries.push(layout.place(&name, &[rows, cols], format)?);
                    let action =
                        Action::Store { index: entries.len() - 1, ggml: info.ggml_type, unpermute_heads: None };
                    let offset = info.offset + expert as u64 * per_expert;
                    steps.push(step(action, offset, per_expert, start, layout.total_bytes - start));
                }
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
            let unpermute_heads = match config.architecture {
                Architecture::Llama if name.ends_with("q_proj.weight") => Some(config.num_heads),
                Architecture::Llama if name.ends_with("k_proj.weight") => Some(config.num_kv_heads),
                _ => None,
            };
            let format = if shape.len() == 1 || is_router(&name) {
                WeightFormat::F32
            } else {
                matrix_format(options, default_for(info), shape[1], &name, &mut warnings)
            };
            let start = layout.total_bytes;
            entries.push(layout.place(&name, &shape, format)?);
            let action = Action::Store { index: entries.len() - 1, ggml: info.ggml_type, unpermute_heads };
            steps.push(step(action, info.offset, info.size, start, layout.total_bytes - start));
        }
        if has_rope_pair && config.architecture == Architecture::PhiMoe {
            warnings.push(
                "PhiMoE GGUFs carry llama.cpp's computed LongRoPE attention factor, not the config's \
                 short_mscale/long_mscale that transformers scales by (Phi-3.5-MoE: 1.19 instead of 1.24): \
                 convert the Hugging Face folder for transformers' logits"
                    .into(),
            );
        }
        Ok(GgufImport {
            gguf,
            config,
            options: options.clone(),
            source: source.to_string(),
            steps,
            entries,
            rope_factors: [None, None],
            total_bytes: layout.total_bytes,
            warnings,
            max_abs_error: 0.0,
        })
    }

    /// Bytes of the GGUF the steps read.
    pub fn source_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.length).sum()
    }

    /// Runs step `index` on the bytes it reads; returns its output (the
    /// package bytes at `output_offset`).
    pub fn run(&mut self, index: usize, bytes: &[u8]) -> Result<Vec<u8>> {
        let step = self.steps.get(index).ok_or_else(|| Error::Config {
            message: format!("import step {index} does not exist (there are {})", self.steps.len()),
        })?;
        check_step_bytes(&self.source, &step.tensor, bytes.len(), step.length)?;
        match step.action {
            Action::RopeFactors { long, ggml } => {
                self.rope_factors[long as usize] = Some(dequantize_gguf(ggml, bytes, &step.tensor)?);
                Ok(Vec::new())
            }
            Action::Store { index, ggml, unpermute_heads } => {
                let entry = &self.entries[index];
                let (rows, cols) = entry.rows_cols();
                let format = entry.weight_format()?;
                let unpermuted;
                let bytes = match unpermute_heads {
                    Some(heads) => {
                        unpermuted = unpermute_rows(bytes, rows, heads)?;
                        &unpermuted[..]
                    }
                    None => bytes,
                };
                let mut out = Vec::with_capacity(step.output_length as usize);
                let slab = |start, count| gguf_slab(ggml, bytes, &entry.name, format, cols, start, count);
                let error = encode_tensor(entry, slab, |b| {
                    out.extend_from_slice(b);
                    Ok(())
                })?;
                self.max_abs_error = self.max_abs_error.max(error);
                Ok(out)
            }
        }
    }

    /// The vocabulary as a tokenizer.json, or why there is none.
    pub fn tokenizer_json(&self) -> Result<String> {
        gguf_tokenizer::tokenizer_json(&self.gguf)
    }

    /// model.json for the package, once every step ran and `shards` hold its bytes.
    pub fn manifest(&mut self, shards: Vec<Shard>, has_tokenizer: bool) -> Result<Manifest> {
        check_shards(&shards, self.total_bytes)?;
        let mut config = self.config.clone();
        if let [Some(short), Some(long)] = &self.rope_factors {
            config.set_longrope_factors(&self.gguf, short.clone(), long.clone())?;
        }
        let gguf = &self.gguf;
        let tokens: Vec<&str> = gguf
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
            .unwrap_or_default();
        let token = |key: &str| {
            gguf.get(key).and_then(|v| v.as_u64()).and_then(|id| tokens.get(id as usize)).map(|s| s.to_string())
        };
        let mut stop_token_ids = config.eos_token_ids.clone();
        if has_tokenizer {
            // Chat turns end in <|end|> (Phi-3, Phi-4-mini), <|im_end|> (Phi-4, ChatML) or <|endoftext|>.
            let ends = tokens.iter().enumerate().filter(|(_, t)| END_OF_TURN.contains(t)).map(|(id, _)| id as u32);
            for id in ends {
                if !stop_token_ids.contains(&id) {
                    stop_token_ids.push(id);
                }
            }
        }
        let name = gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or("model").to_string();
        let chat_template = match gguf.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(template) => Some(template.to_string()),
            None => {
                let file_name = self.source.rsplit(['/', '\\']).next().unwrap_or_default();
                let published = chat_templates::published(&name).or(chat_templates::published(file_name));
                if published.is_some() {
                    self.warnings.push(format!("no chat template in the GGUF: the one published for {name} is used"));
                }
                published.map(String::from)
            }
        };
        Ok(Manifest {
            format: FORMAT.into(),
            name,
            tokenizer: has_tokenizer.then(|| "tokenizer.json".to_string()),
            chat_template,
            bos_token: token("tokenizer.ggml.bos_token_id"),
            eos_token: token("tokenizer.ggml.eos_token_id"),
            stop_token_ids,
            quantization: describe_quantization(&self.options, "kept from GGUF; Q4_K → q4_1, Q6_K → q8_0"),
            source: self.source.clone(),
            config,
            tensors: self.entries.clone(),
            shards,
        })
    }

    /// Tensors per stored format.
    pub fn formats(&self) -> BTreeMap<String, usize> {
        count_formats(&self.entries)
    }
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
