//! `phi-web inspect`: what is inside a GGUF file, a Hugging Face folder or a package.

use std::fmt::Write;
use std::path::Path;

use phi_web::config::ModelConfig;
use phi_web::formats::gguf::{Gguf, Value};
use phi_web::formats::package::{Package, TensorEntry, MANIFEST};
use phi_web::formats::safetensors;
use phi_web::{Error, Result};

/// The report as text.
pub fn inspect(path: &Path) -> Result<String> {
    let mut out = String::new();
    if path.is_dir() && path.join(MANIFEST).exists() {
        inspect_package(path, &mut out)?;
    } else if path.is_dir() {
        inspect_hf(path, &mut out)?;
    } else {
        inspect_gguf(path, &mut out)?;
    }
    Ok(out)
}

fn short(value: &Value) -> String {
    match value {
        Value::Str(s) if s.chars().count() > 100 => {
            format!("{:?}… ({} chars)", s.chars().take(100).collect::<String>(), s.chars().count())
        }
        Value::Str(s) => format!("{s:?}"),
        Value::Array(items) if items.len() > 8 => format!("[{} items]", items.len()),
        Value::Array(items) => format!("[{}]", items.iter().map(short).collect::<Vec<_>>().join(", ")),
        other => {
            format!("{other:?}").split_once('(').map_or(String::new(), |(_, v)| v.trim_end_matches(')').to_string())
        }
    }
}

fn inspect_gguf(path: &Path, out: &mut String) -> Result<()> {
    let gguf = Gguf::open(path)?;
    let _ = writeln!(
        out,
        "GGUF v{} {}: {} metadata keys, {} tensors",
        gguf.version,
        path.display(),
        gguf.metadata.len(),
        gguf.tensors.len()
    );
    for (key, value) in &gguf.metadata {
        let _ = writeln!(out, "  {key} = {}", short(value));
    }
    match ModelConfig::from_gguf(&gguf) {
        Ok(config) => {
            let _ = writeln!(out, "config: {config:?}");
        }
        Err(e) => {
            let _ = writeln!(out, "config: {e}");
        }
    }
    let _ = writeln!(out, "{:<40} {:>6} {:>20} {:>12}", "tensor", "type", "shape", "bytes");
    for t in &gguf.tensors {
        let _ =
            writeln!(out, "{:<40} {:>6} {:>20} {:>12}", t.name, t.ggml_type.name(), format!("{:?}", t.shape()), t.size);
    }
    Ok(())
}

fn inspect_hf(dir: &Path, out: &mut String) -> Result<()> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| Error::Io { path: config_path.display().to_string(), message: e.to_string() })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Format {
        file: config_path.display().to_string(),
        message: format!("malformed JSON: {e}"),
    })?;
    match ModelConfig::from_hf(&json) {
        Ok(config) => {
            let _ = writeln!(out, "config: {config:?}");
        }
        Err(e) => {
            let _ = writeln!(out, "config: {e}");
        }
    }
    let tensors = safetensors::read_headers(dir)?;
    let _ = writeln!(out, "{:<60} {:>5} {:>16}", "tensor", "dtype", "shape");
    for t in tensors.values() {
        let _ = writeln!(out, "{:<60} {:>5} {:>16}", t.name, t.dtype.name(), format!("{:?}", t.shape));
    }
    for file in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        let _ = writeln!(out, "{file}: {}", if dir.join(file).exists() { "present" } else { "absent" });
    }
    Ok(())
}

fn inspect_package(dir: &Path, out: &mut String) -> Result<()> {
    let package = Package::open(dir)?;
    let m = &package.manifest;
    let _ = writeln!(out, "{} package {}: {} ({})", m.format, dir.display(), m.name, m.quantization);
    let _ = writeln!(
        out,
        "  source {}, tokenizer {:?}, chat template {}",
        m.source,
        m.tokenizer,
        if m.chat_template.is_some() { "present" } else { "absent" }
    );
    let _ = writeln!(out, "  bos {:?}, eos {:?}, stop ids {:?}", m.bos_token, m.eos_token, m.stop_token_ids);
    let _ = writeln!(out, "  config: {:?}", m.config);
    let _ = writeln!(out, "  {} shards, {} bytes", m.shards.len(), package.total_bytes());
    if let Some(moe) = &m.config.moe {
        let bytes = |t: &&TensorEntry| t.chunks.iter().map(|c| c.payload_bytes + c.scales_bytes).sum::<u64>();
        let experts: u64 = m.tensors.iter().filter(|t| t.name.contains(".experts.")).map(|t| bytes(&t)).sum();
        let embedding: u64 =
            m.tensors.iter().filter(|t| t.name == "model.embed_tokens.weight").map(|t| bytes(&t)).sum();
        let rest = package.total_bytes().saturating_sub(experts + embedding);
        let active = rest + experts * moe.experts_per_token as u64 / moe.experts as u64;
        let mb = |b: u64| b as f64 / 1e6;
        let _ = writeln!(
            out,
            "  experts: {} per layer, {} per token (sparsemixer, jitter {}); {:.1} MB of experts; \
             a token reads {:.1} MB (attention, routers, lm_head and {} experts per layer)",
            moe.experts,
            moe.experts_per_token,
            moe.router_jitter,
            mb(experts),
            mb(active),
            moe.experts_per_token
        );
    }
    let _ = writeln!(out, "{:<60} {:>5} {:>14} {:>7}", "tensor", "fmt", "shape", "chunks");
    for t in &m.tensors {
        let _ = writeln!(out, "{:<60} {:>5} {:>14} {:>7}", t.name, t.format, format!("{:?}", t.shape), t.chunks.len());
    }
    Ok(())
}
