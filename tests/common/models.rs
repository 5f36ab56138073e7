//! Golden-data helpers of the model tests: the tiny models of tests/data
//! converted once per test binary, their transformers logits, and running
//! a decoder over the golden ids (prefill, then decode).

use std::path::PathBuf;

use phi_web::convert::{convert, ConvertOptions};
use phi_web::formats::package::Package;
use phi_web::gpu::KvFormat;
use phi_web::model::{Decoder, DecoderOptions, Logits};
use phi_web::quant::WeightFormat;

use phi_web::backend::Backend;

use super::env;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Golden {
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
    pub vocab: usize,
}

pub fn golden(model: &str) -> Golden {
    golden_file(model, "golden.json")
}

pub fn golden_file(model: &str, file: &str) -> Golden {
    let dir = root().join("tests").join("data").join(model);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
    let ids = json["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let logits = bytemuck::pod_collect_to_vec(&std::fs::read(dir.join(json["logits_file"].as_str().unwrap())).unwrap());
    let vocab = json["logits_shape"][1].as_u64().unwrap() as usize;
    Golden { ids, logits, vocab }
}

/// `model` converted to `format`, once per test binary: tests run in parallel
/// and several share a package, so none may rewrite a folder another reads.
pub fn package(model: &str, format: WeightFormat) -> Package {
    static CONVERTED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let out = root().join("target").join("test-scratch").join(format!("engine-{model}-{}", format.name()));
    let mut converted = CONVERTED.lock().unwrap_or_else(|e| e.into_inner());
    if !converted.contains(&out) {
        let _ = std::fs::remove_dir_all(&out);
        let options = ConvertOptions { quant: Some(format), ..Default::default() };
        convert(&root().join("tests").join("data").join(model), &out, &options, &mut |_| {}).unwrap();
        converted.push(out.clone());
    }
    Package::open(&out).unwrap()
}

/// Logits of the golden ids: all at once, or `chunk` tokens per call then one by one.
pub fn run(package: &Package, ids: &[u32], chunk: usize) -> Vec<f32> {
    run_with(package, ids, chunk, KvFormat::F16)
}

/// `run` with a KV cache stored as `kv`.
pub fn run_with(package: &Package, ids: &[u32], chunk: usize, kv: KvFormat) -> Vec<f32> {
    run_on(&env().backend, package, ids, chunk, kv)
}

/// `run_with` on `backend`.
pub fn run_on(backend: &Backend, package: &Package, ids: &[u32], chunk: usize, kv: KvFormat) -> Vec<f32> {
    // One-by-one decoding after a 5-token prefill keeps max_tokens at 5, so the
    // 8-position sliding window of tiny-phi3 runs in a ring of 13 slots.
    let decoder = Decoder::load(backend, package, &DecoderOptions::new(128, chunk, kv)).unwrap();
    let mut logits = Vec::new();
    let mut pos = 0;
    while pos < ids.len() {
        let n = if pos == 0 { chunk.min(ids.len()) } else { 1 };
        logits.extend(pollster::block_on(decoder.forward(backend, &ids[pos..pos + n], pos, Logits::All)).unwrap());
        pos += n;
    }
    logits
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// The f16 KV cache's bound on |logit error|: f16 rounds keys and values to
/// 2^-11 of their size, so the logits move in proportion to theirs; 1e-3 per
/// unit of the largest |logit| (the tiny Phi-3s stay under 1, PhiMoE's reach 4).
pub fn f16_cache_bound(logits: &[f32]) -> f32 {
    1e-3 * logits.iter().fold(1.0f32, |m, v| m.max(v.abs()))
}

pub fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}
