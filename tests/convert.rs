//! The readers and the converter: SmolLM2's GGUF converts bit-exactly, tiny
//! Hugging Face Phi-3 / Llama folders (tests/data, made by
//! scripts/make_tiny_models.py) convert at every format with exactly the
//! reference quantizer's values, `verify` catches damaged shards, and bad
//! input of every kind is an error that names the problem, never a panic.
#![cfg(not(target_arch = "wasm32"))]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use phi_web::config::{Architecture, ModelConfig};
use phi_web::convert::{convert, dequantize_gguf, hf_name, ConvertOptions};
use phi_web::formats::gguf::Gguf;
use phi_web::formats::package::Package;
use phi_web::formats::safetensors;
use phi_web::quant::{self, WeightFormat};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn smollm2_gguf() -> PathBuf {
    let path = root().join(".models").join(SMOLLM2);
    assert!(path.exists(), "{} is missing: run `make models` (make test does)", path.display());
    path
}

fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target").join("test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// SmolLM2 converted once per test binary.
fn smollm2_package() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("smollm2");
        let summary = convert(&smollm2_gguf(), &dir, &ConvertOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(summary.max_abs_error, 0.0, "GGUF Q4_1/Q8_0/F32 must be kept bit-exact");
        assert_eq!(summary.tensors, 272);
        dir
    })
}

/// llama.cpp's Q/K permutation (convert_hf_to_gguf.py `permute`) applied to HF rows.
fn llama_cpp_permute(rows: &[f32], n_rows: usize, heads: usize) -> Vec<f32> {
    let cols = rows.len() / n_rows;
    let half = n_rows / heads / 2;
    let mut out = vec![0.0; rows.len()];
    for head in 0..heads {
        for h in 0..2 {
            for i in 0..half {
                let hf = head * 2 * half + h * half + i;
                let gguf = head * 2 * half + 2 * i + h;
                out[gguf * cols..][..cols].copy_from_slice(&rows[hf * cols..][..cols]);
            }
        }
    }
    out
}

#[test]
fn smollm2_gguf_converts_losslessly() {
    let package = Package::open(smollm2_package()).unwrap();
    package.verify(|_| {}).unwrap();
    let gguf = Gguf::open(&smollm2_gguf()).unwrap();
    let mut file = File::open(&gguf.path).unwrap();
    let config = &package.manifest.config;
    assert_eq!((config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads), (30, 576, 9, 3));
    assert!(config.tie_word_embeddings, "SmolLM2 has no output.weight");
    for info in &gguf.tensors {
        let name = hf_name(Architecture::Llama, &info.name).unwrap();
        let entry = package.tensor(&name).unwrap_or_else(|| panic!("{name} missing from the package"));
        assert_eq!(entry.shape, info.shape(), "{name}");
        let raw = gguf.read(&mut file, info).unwrap();
        let stored = package.read_f32(entry).unwrap();
        let source = dequantize_gguf(info.ggml_type, &raw, &info.name).unwrap();
        let heads = if name.ends_with("q_proj.weight") {
            Some(config.num_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(config.num_kv_heads)
        } else {
            None
        };
        match heads {
            // Q and K rows come back in HF order: permuting them again gives GGUF's.
            Some(heads) => assert!(llama_cpp_permute(&stored, entry.shape[0], heads) == source, "{name}: rows differ"),
            None => {
                assert!(stored.iter().zip(&source).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: values differ");
                // And the stored blocks are GGUF's blocks, byte for byte.
                let format = entry.weight_format().unwrap();
                let layout = package.read_chunk(&entry.chunks[0]).unwrap();
                assert_eq!(
                    quant::from_gpu_layout(format, &layout, info.elements() as usize).unwrap(),
                    raw,
                    "{name}: bytes differ"
                );
            }
        }
    }
}

#[test]
fn smollm2_tokenizer_and_chat_metadata() {
    let dir = smollm2_package();
    let package = Package::open(dir).unwrap();
    let m = &package.manifest;
    assert_eq!(m.tokenizer.as_deref(), Some("tokenizer.json"));
    assert!(m.chat_template.as_deref().unwrap_or("").contains("<|im_start|>"));
    assert_eq!((m.bos_token.as_deref(), m.eos_token.as_deref()), (Some("<|im_start|>"), Some("<|im_end|>")));
    assert!(m.stop_token_ids.contains(&2));

    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    // llama.cpp's greedy answer to the ChatML question (see shared/peers.md), as ids.
    let answer = tokenizer.encode("The capital of France is Paris.", false).unwrap();
    assert_eq!(answer.get_ids(), [504, 3575, 282, 4649, 314, 7042, 30]);
    let prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = tokenizer.encode(prompt, false).unwrap().get_ids().to_vec();
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 1, "<|im_end|> is one special token");
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), prompt);
    // SmolLM2's pre-tokenizer splits digits one by one.
    assert_eq!(tokenizer.encode("2024", false).unwrap().get_ids().len(), 4);
}

fn tiny(name: &str) -> PathBuf {
    root().join("tests").join("data").join(name)
}

#[test]
fn tiny_hf_models_convert_at_every_format() {
    for model in ["tiny-phi3", "tiny-phi3-longrope", "tiny-llama", "tiny-phimoe"] {
        let sources = safetensors::read_headers(&tiny(model)).unwrap();
        for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1]
        {
            let dir = scratch(&format!("{model}-{}", format.name()));
            let options = ConvertOptions { quant: Some(format), ..Default::default() };
            convert(&tiny(model), &dir, &options, &mut |_| {}).unwrap();
            let package = Package::open(&dir).unwrap();
            package.verify(|_| {}).unwrap();
            assert_eq!(package.manifest.tensors.len(), sources.len(), "{model}");
            for (name, source) in &sources {
                let entry = package.tensor(name).unwrap();
                let values = source.read_f32().unwrap();
                // Vectors and MoE routers stay f32; matrices hold exactly what
                // the reference quantizer gives.
                let expected = if source.shape.len() == 1 || name.ends_with("block_sparse_moe.gate.weight") {
                    values
                } else {
                    quant::dequantize(format, &quant::quantize(format, &values).unwrap()).unwrap()
                };
                let stored = package.read_f32(entry).unwrap();
                assert!(
                    stored.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{model} {} {name}",
                    format.name()
                );
            }
        }
    }
    let phi3 = ModelConfig::from_hf(&read_json(&tiny("tiny-phi3").join("config.json"))).unwrap();
    assert_eq!((phi3.architecture, phi3.sliding_window, phi3.num_kv_heads), (Architecture::Phi3, Some(8), 2));
    let phimoe = ModelConfig::from_hf(&read_json(&tiny("tiny-phimoe").join("config.json"))).unwrap();
    let longrope = phimoe.longrope.as_ref().unwrap();
    assert_eq!((longrope.attention_factor(false), longrope.attention_factor(true)), (1.1, 1.3), "mscales");
    assert_eq!(phimoe.moe.as_ref().map(|m| (m.experts, m.experts_per_token)), Some((16, 2)));
    assert!(phimoe.attention_bias && phimoe.lm_head_bias && phimoe.norm == phi_web::config::NormKind::Layer);
    let dir = scratch("tiny-llama-default");
    let summary = convert(&tiny("tiny-llama"), &dir, &ConvertOptions::default(), &mut |_| {}).unwrap();
    assert!(summary.config.tie_word_embeddings, "no lm_head.weight: tied");
    assert_eq!(summary.formats.get("q4_0"), Some(&15), "matrices default to q4_0: {:?}", summary.formats);
    assert!(summary.warnings.iter().any(|w| w.contains("no tokenizer.json")), "{:?}", summary.warnings);
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn config_key_styles_agree() {
    let folder = tiny("tiny-phi3-longrope");
    let v5 = ModelConfig::from_hf(&read_json(&folder.join("config.json"))).unwrap();
    let published = ModelConfig::from_hf(&read_json(&folder.join("config.published-style.json"))).unwrap();
    assert_eq!(v5, published);
    assert_eq!((v5.head_dim, v5.rotary_dim), (16, 12));
    let longrope = v5.longrope.as_ref().unwrap();
    assert_eq!(longrope.original_max_position_embeddings, 64);
    assert_eq!(longrope.long_factor, [2.0, 2.5, 3.0, 3.5, 4.0, 4.5]);
    // sqrt(1 + ln(256 / 64) / ln(64)), HF's default.
    assert!((longrope.attention_factor - 1.154_700_5).abs() < 1e-6, "{}", longrope.attention_factor);
}

#[test]
fn small_shards_split_tensors_across_files() {
    let dir = scratch("tiny-phi3-small-shards");
    let options = ConvertOptions { quant: Some(WeightFormat::Q8_0), shard_bytes: 10_000, ..Default::default() };
    let summary = convert(&tiny("tiny-phi3"), &dir, &options, &mut |_| {}).unwrap();
    assert!(summary.shards > 10, "{} shards", summary.shards);
    let package = Package::open(&dir).unwrap();
    package.verify(|_| {}).unwrap();
    let reference = scratch("tiny-phi3-one-shard");
    convert(&tiny("tiny-phi3"), &reference, &ConvertOptions { shard_bytes: 64 << 20, ..options }, &mut |_| {}).unwrap();
    let reference = Package::open(&reference).unwrap();
    for entry in &package.manifest.tensors {
        assert_eq!(
            package.read_f32(entry).unwrap(),
            reference.read_f32(reference.tensor(&entry.name).unwrap()).unwrap(),
            "{}",
            entry.name
        );
    }
}

#[test]
fn large_matrices_are_split_into_row_chunks() {
    let dir = scratch("tiny-phi3-chunked");
    let options = ConvertOptions { quant: Some(WeightFormat::Q4_0), chunk_bytes: 2_000, ..Default::default() };
    convert(&tiny("tiny-phi3"), &dir, &options, &mut |_| {}).unwrap();
    let package = Package::open(&dir).unwrap();
    package.verify(|_| {}).unwrap();
    let embed = package.tensor("model.embed_tokens.weight").unwrap();
    // 512 rows of 64 q4_0 values = 32 payload bytes a row: 62 rows (even) per 2000-byte chunk.
    assert_eq!(embed.chunks.len(), 512usize.div_ceil(62));
    assert!(embed.chunks.iter().all(|c| c.payload_bytes <= 2_000));
    let values =
        safetensors::read_headers(&tiny("tiny-phi3")).unwrap()["model.embed_tokens.weight"].read_f32().unwrap();
    let expected =
        quant::dequantize(WeightFormat::Q4_0, &quant::quantize(WeightFormat::Q4_0, &values).unwrap()).unwrap();
    assert_eq!(package.read_f32(embed).unwrap(), expected);
}

#[test]
fn verify_names_damaged_shards() {
    let dir = scratch("tiny-phi3-damaged");
    convert(&tiny("tiny-phi3"), &dir, &ConvertOptions { shard_bytes: 50_000, ..Default::default() }, &mut |_| {})
        .unwrap();
    let shard = dir.join("shard-00001.bin");
    let original = std::fs::read(&shard).unwrap();

    let mut flipped = original.clone();
    flipped[123] ^= 0x40;
    std::fs::write(&shard, &flipped).unwrap();
    let err = Package::open(&dir).unwrap().verify(|_| {}).unwrap_err().to_string();
    assert!(err.contains("shard-00001.bin") && err.contains("sha256") && err.contains("corrupted"), "{err}");

    std::fs::write(&shard, &original[..original.len() - 7]).unwrap();
    let err = Package::open(&dir).unwrap().verify(|_| {}).unwrap_err().to_string();
    assert!(err.contains("shard-00001.bin") && err.contains("the manifest says"), "{err}");

    std::fs::write(&shard, "<!doctype html><title>404 Not Found</title>").unwrap();
    let err = Package::open(&dir).unwrap().verify(|_| {}).unwrap_err().to_string();
    assert!(err.contains("shard-00001.bin"), "{err}");

    std::fs::remove_file(&shard).unwrap();
    let err = Package::open(&dir).unwrap().verify(|_| {}).unwrap_err().to_string();
    assert!(err.contains("shard-00001.bin"), "{err}");
}
