//! `phi-web convert`: a GGUF file or a Hugging Face folder → a phi-web package.
//!
//! Streams tensor by tensor (and, for large matrices, slab by slab of rows),
//! so peak memory stays near twice the largest tensor whatever the model size.
//! Both go through the plans the browser runs too, [`GgufImport`] and
//! [`HfImport`], where their defaults are written down.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
pub use crate::formats::encode::{dequantize_gguf, ConvertOptions};
use crate::formats::gguf::Gguf;
pub use crate::formats::gguf_import::hf_name;
use crate::formats::gguf_import::GgufImport;
use crate::formats::hf_import::HfImport;
use crate::formats::package::{Manifest, ShardWriter, MANIFEST};
use crate::formats::safetensors;

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
    finish(manifest, out_dir, import.formats(), import.max_abs_error, std::mem::take(&mut import.warnings))
}

/// Runs an [`HfImport`] over the folder's files.
fn convert_hf(
    input: &Path,
    out_dir: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ConvertSummary> {
    let files = |name: &str| -> Result<Option<String>> {
        let path = input.join(name);
        if !path.exists() {
            return Ok(None);
        }
        std::fs::read_to_string(&path).map(Some).map_err(|e| Error::io(&path, e))
    };
    if !input.join("config.json").exists() {
        return Err(Error::format(input.display(), "no config.json"));
    }
    let tensors = safetensors::read_headers(input)?;
    let name = input.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let mut import = HfImport::new(&name, &input.display().to_string(), &tensors, &files, options)?;
    let mut shards = ShardWriter::new(out_dir, options.shard_bytes);
    let total = import.source_bytes();
    let (mut done, mut open): (u64, Option<(String, File)>) = (0, None);
    for index in 0..import.steps.len() {
        let step = &import.steps[index];
        progress(Progress { done, total, tensor: &step.tensor });
        done += step.length;
        if open.as_ref().is_none_or(|(path, _)| *path != step.file) {
            let file = File::open(&step.file).map_err(|e| Error::io(Path::new(&step.file), e))?;
            open = Some((step.file.clone(), file));
        }
        let Some((_, file)) = open.as_mut() else { continue };
        let mut bytes = vec![0u8; step.length as usize];
        file.seek(SeekFrom::Start(step.offset)).map_err(|e| Error::io(Path::new(&step.file), e))?;
        file.read_exact(&mut bytes)
            .map_err(|e| Error::format(&step.file, format!("reading tensor {}: {e}", step.tensor)))?;
        shards.write(&import.run(index, &bytes)?)?;
    }
    progress(Progress { done: total, total, tensor: "" });
    let tokenizer = import.tokenizer_json(&files)?;
    if let Some(json) = &tokenizer {
        let path = out_dir.join("tokenizer.json");
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
    }
    let manifest = import.manifest(shards.finish()?, tokenizer.as_deref(), &files)?;
    finish(manifest, out_dir, import.formats(), import.max_abs_error, std::mem::take(&mut import.warnings))
}

/// Writes model.json and sums up the conversion.
fn finish(
    manifest: Manifest,
    out_dir: &Path,
    formats: BTreeMap<String, usize>,
    max_abs_error: f32,
    warnings: Vec<String>,
) -> Result<ConvertSummary> {
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
