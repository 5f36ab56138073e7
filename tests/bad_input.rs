//! Bad input gets an error that names the problem and never a panic:
//! truncated, mistyped and hostile GGUF files, wrong architectures, shapes
//! that disagree with the config, malformed manifests — plus seeded mutation
//! fuzzing of both parsers and a regression corpus (tests/data/fuzz).
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};

use phi_web::convert::{convert, ConvertOptions};
use phi_web::formats::gguf::Gguf;
use phi_web::formats::package::parse_manifest;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("test-scratch").join("bad-input");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[path = "support/gguf_builder.rs"]
mod gguf_builder;
use gguf_builder::GgufBuilder;

fn open_err(bytes: &[u8], name: &str) -> String {
    let path = scratch(name);
    std::fs::write(&path, bytes).unwrap();
    match Gguf::open(&path) {
        Ok(_) => panic!("{name}: expected an error"),
        Err(e) => e.to_string(),
    }
}

fn convert_err(path: &Path) -> String {
    let out = scratch(&format!("{}-out", path.file_name().unwrap().to_string_lossy()));
    convert(path, &out, &ConvertOptions::default(), &mut |_| {}).unwrap_err().to_string()
}

#[test]
fn the_synthetic_model_itself_converts() {
    let path = GgufBuilder::tiny_llama("llama").write(&scratch("good.gguf"));
    let out = scratch("good-out");
    let summary = convert(&path, &out, &ConvertOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(summary.tensors, 11);
    assert!(summary.warnings.iter().any(|w| w.contains("tokenizer not converted")), "{:?}", summary.warnings);
}

#[test]
fn wrong_magic_and_html_pages() {
    let err = open_err(b"GGML\x03\0\0\0 and more bytes", "magic.gguf");
    assert!(err.contains("not a GGUF file"), "{err}");
    let err = open_err(b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "page.gguf");
    assert!(err.contains("looks like HTML"), "{err}");
    let err = open_err(b"GG", "tiny.gguf");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn truncated_files_name_the_tensor() {
    let bytes = GgufBuilder::tiny_llama("llama").build();
    let err = open_err(&bytes[..bytes.len() - 100], "cut-data.gguf");
    assert!(err.contains("truncated") && err.contains("blk.0.ffn_down.weight"), "{err}");
    let err = open_err(&bytes[..200], "cut-header.gguf");
    assert!(err.contains("truncated") || err.contains("cannot fit"), "{err}");
}

#[test]
fn unknown_types_and_architectures_are_named() {
    let path = GgufBuilder::tiny_llama("llama")
        .tensor("blk.0.extra.weight", &[32, 2], 6, vec![0; 44])
        .write(&scratch("q5.gguf"));
    let err = convert_err(&path);
    assert!(err.contains("Q5_0") && err.contains("blk.0.extra.weight") && err.contains("supported: F32"), "{err}");

    let path = GgufBuilder::tiny_llama("gpt2").write(&scratch("gpt2.gguf"));
    let err = convert_err(&path);
    assert!(err.contains("architecture gpt2") && err.contains("phi3") && err.contains("llama"), "{err}");
}

#[test]
fn shape_disagreeing_with_config_is_named() {
    let mut b = GgufBuilder::tiny_llama("llama");
    b.tensors[0] = ("token_embd.weight".into(), vec![32, 9], 0, vec![0; 32 * 9 * 4]);
    let err = convert_err(&b.write(&scratch("shape.gguf")));
    assert!(err.contains("model.embed_tokens.weight") && err.contains("[9, 32]") && err.contains("[8, 32]"), "{err}");
}

#[test]
fn missing_config_keys_are_named() {
    let mut b = GgufBuilder::tiny_llama("llama");
    b.kv.retain(|(k, _, _)| k != "llama.block_count");
    let err = convert_err(&b.write(&scratch("no-blocks.gguf")));
    assert!(err.contains("llama.block_count"), "{err}");
}

#[test]
fn absurd_counts_do_not_allocate() {
    // Claims 2^60 tensors and 2^60 metadata entries in a 24-byte file.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let err = open_err(&bytes, "counts.gguf");
    assert!(err.contains("cannot fit"), "{err}");
    // A string claiming 2^62 bytes.
    let mut b = GgufBuilder::default();
    b.kv.push(("general.name".into(), 8, (1u64 << 62).to_le_bytes().to_vec()));
    let err = open_err(&b.build(), "string.gguf");
    assert!(err.contains("cannot fit"), "{err}");
    // A tensor with 2^40 x 2^40 elements.
    let b = GgufBuilder::default().tensor("huge", &[1 << 40, 1 << 40], 0, vec![]);
    let err = open_err(&b.build(), "dims.gguf");
    assert!(err.contains("huge") && (err.contains("impossible shape") || err.contains("truncated")), "{err}");
}

#[test]
fn malformed_manifests_are_errors() {
    let cases: [(&str, &str); 5] = [
        ("{ not json", "malformed"),
        (r#"{"format": "phi-web/0"}"#, "convert the model again"),
        (r#"{"format": "phi-web/1", "config": {"hidden_act": "silu"}}"#, "convert the model again"),
        ("<html>404</html>", "malformed"),
        ("[]", "malformed"),
    ];
    for (text, expected) in cases {
        let err = parse_manifest(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

/// A valid manifest to mutate, from the synthetic model.
fn good_manifest(tag: &str) -> String {
    let path = GgufBuilder::tiny_llama("llama").write(&scratch(&format!("manifest-{tag}.gguf")));
    let out = scratch(&format!("manifest-{tag}-out"));
    convert(&path, &out, &ConvertOptions::default(), &mut |_| {}).unwrap();
    std::fs::read_to_string(out.join("model.json")).unwrap()
}

#[test]
fn inconsistent_manifests_are_errors() {
    let good = good_manifest("inconsistent");
    parse_manifest(&good).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["format"] = "phi-web/9".into();
    let err = parse_manifest(&json.to_string()).unwrap_err().to_string();
    assert!(err.contains("phi-web/9"), "{err}");

    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["tensors"][3]["chunks"][0]["offset"] = 1_000_000_000u64.into();
    let err = parse_manifest(&json.to_string()).unwrap_err().to_string();
    assert!(err.contains("outside"), "{err}");

    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["tensors"][3]["chunks"][0]["payload_bytes"] = 12u64.into();
    let err = parse_manifest(&json.to_string()).unwrap_err().to_string();
    assert!(err.contains(json["tensors"][3]["name"].as_str().unwrap()), "{err}");

    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["shards"][0]["file"] = "../../etc/passwd".into();
    let err = parse_manifest(&json.to_string()).unwrap_err().to_string();
    assert!(err.contains("plain name"), "{err}");

    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["tensors"][2]["format"] = "q3_k".into();
    let err = parse_manifest(&json.to_string()).unwrap_err().to_string();
    assert!(err.contains("q3_k"), "{err}");
}

/// xorshift64: seeded, the same everywhere.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Flips, overwrites, inserts, deletes or truncates bytes.
fn mutate(input: &[u8], state: &mut u64) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + next(state) % 4 {
        if out.is_empty() {
            break;
        }
        let at = (next(state) % out.len() as u64) as usize;
        match next(state) % 5 {
            0 => out[at] ^= 1 << (next(state) % 8),
            1 => out[at] = [0, 0xff, 0x7f, 0x80][(next(state) % 4) as usize],
            2 => out.insert(at, next(state) as u8),
            3 => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
    }
    out
}

#[test]
fn fuzz_gguf_reader() {
    let seed_file = GgufBuilder::tiny_llama("llama").build();
    let path = scratch("fuzz.gguf");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        // Mutations concentrate on the header, where the parsing happens.
        let head = 1 + (next(&mut state) % 900) as usize;
        let mut bytes = mutate(&seed_file[..head.min(seed_file.len())], &mut state);
        bytes.extend_from_slice(&seed_file[head.min(seed_file.len())..]);
        std::fs::write(&path, &bytes).unwrap();
        match std::panic::catch_unwind(|| Gguf::open(&path).map(|_| ())) {
            Ok(Ok(())) => ok += 1,
            Ok(Err(_)) => err += 1,
            Err(_) => panic!("Gguf::open panicked on input {bytes:?}"),
        }
    }
    assert!(err > 1000 && ok > 10, "mutations should hit both outcomes: {ok} ok, {err} errors");
}

#[test]
fn fuzz_manifest_parser() {
    let good = good_manifest("fuzz").into_bytes();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..3000 {
        let bytes = mutate(&good, &mut state);
        let text = String::from_utf8_lossy(&bytes);
        if std::panic::catch_unwind(|| parse_manifest(&text).map(|_| ())).is_err() {
            panic!("parse_manifest panicked on {text}");
        }
    }
}

#[test]
fn fuzz_real_gguf_header() {
    // SmolLM2's header (metadata, a 49k-token vocabulary, 272 tensor infos).
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path).unwrap_or_else(|_| panic!("{} is missing: run `make models`", path.display()));
    let header = &bytes[..1_800_000];
    let out = scratch("fuzz-real.gguf");
    let mut state = 0x51_7CC1_B727_220Au64;
    for _ in 0..300 {
        let mutated = mutate(header, &mut state);
        std::fs::write(&out, &mutated).unwrap();
        if std::panic::catch_unwind(|| Gguf::open(&out).map(|_| ())).is_err() {
            panic!("Gguf::open panicked on a mutated SmolLM2 header");
        }
    }
}

#[test]
fn phi3_gguf_maps_fused_tensors_and_longrope() {
    let f32s = |n: usize| (0..n).flat_map(|i| (1.0 + i as f32).to_le_bytes()).collect::<Vec<u8>>();
    let b = GgufBuilder::default()
        .string("general.architecture", "phi3")
        .u32("phi3.embedding_length", 32)
        .u32("phi3.feed_forward_length", 64)
        .u32("phi3.block_count", 1)
        .u32("phi3.attention.head_count", 2)
        .u32("phi3.attention.head_count_kv", 2)
        .u32("phi3.context_length", 1024)
        .u32("phi3.rope.dimension_count", 16)
        .u32("phi3.rope.scaling.original_context_length", 256)
        .u32("phi3.attention.sliding_window", 255)
        .tensor("token_embd.weight", &[32, 8], 0, f32s(256))
        .tensor("output.weight", &[32, 8], 0, f32s(256))
        .tensor("output_norm.weight", &[32], 0, f32s(32))
        .tensor("rope_factors_long.weight", &[8], 0, f32s(8))
        .tensor("rope_factors_short.weight", &[8], 0, f32s(8))
        .tensor("blk.0.attn_norm.weight", &[32], 0, f32s(32))
        .tensor("blk.0.attn_qkv.weight", &[32, 96], 0, f32s(3072))
        .tensor("blk.0.attn_output.weight", &[32, 32], 0, f32s(1024))
        .tensor("blk.0.ffn_norm.weight", &[32], 0, f32s(32))
        .tensor("blk.0.ffn_up.weight", &[32, 128], 0, f32s(4096))
        .tensor("blk.0.ffn_down.weight", &[64, 32], 0, f32s(2048));
    let path = b.write(&scratch("phi3.gguf"));
    let out = scratch("phi3-out");
    let summary = convert(&path, &out, &ConvertOptions::default(), &mut |_| {}).unwrap();
    let c = &summary.config;
    assert_eq!((c.sliding_window, c.tie_word_embeddings, c.rotary_dim), (Some(255), false, 16));
    let longrope = c.longrope.as_ref().unwrap();
    assert_eq!((longrope.original_max_position_embeddings, longrope.long_factor.len()), (256, 8));
    // sqrt(1 + ln(1024 / 256) / ln(256))
    assert!((longrope.attention_factor - 1.118_034).abs() < 1e-5, "{}", longrope.attention_factor);
    let package = phi_web::formats::package::Package::open(&out).unwrap();
    for name in ["model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight", "lm_head.weight"]
    {
        assert!(package.tensor(name).is_some(), "{name}");
    }
    // Phi-3 GGUFs are not Q/K-permuted: the fused QKV rows come through unchanged.
    let qkv = package.read_f32(package.tensor("model.layers.0.self_attn.qkv_proj.weight").unwrap()).unwrap();
    assert_eq!(&qkv[..3], &[1.0, 2.0, 3.0]);
    assert!(package.tensor("rope_factors_long.weight").is_none());
}

/// A one-layer `phimoe` GGUF in llama.cpp's layout: `experts` in the
/// metadata, `stacked` experts in each ffn_*_exps tensor, all F32.
fn tiny_phimoe(experts: u32, used: u32, stacked: u64) -> GgufBuilder {
    let f32s = |n: u64| vec![0u8; n as usize * 4];
    let mut b = GgufBuilder::tiny_llama("phimoe")
        .u32("phimoe.expert_count", experts)
        .u32("phimoe.expert_used_count", used)
        .tensor("blk.0.ffn_gate_inp.weight", &[32, experts as u64], 0, f32s(32 * experts as u64))
        .tensor("blk.0.ffn_gate_exps.weight", &[32, 64, stacked], 0, f32s(32 * 64 * stacked))
        .tensor("blk.0.ffn_up_exps.weight", &[32, 64, stacked], 0, f32s(32 * 64 * stacked))
        .tensor("blk.0.ffn_down_exps.weight", &[64, 32, stacked], 0, f32s(32 * 64 * stacked));
    b.tensors.retain(|(name, ..)| {
        !name.starts_with("blk.0.ffn_gate.") && !name.contains("ffn_up.") && !name.contains("ffn_down.")
    });
    b
}

#[test]
fn phimoe_expert_counts_are_checked() {
    let out = scratch("phimoe-out");
    let summary =
        convert(&tiny_phimoe(4, 2, 4).write(&scratch("phimoe.gguf")), &out, &ConvertOptions::default(), &mut |_| {})
            .unwrap();
    // 8 attention and norm tensors, the router, 3 projections x 4 experts.
    assert_eq!(summary.tensors, 21);
    let package = phi_web::formats::package::Package::open(&out).unwrap();
    assert!(package.tensor("model.layers.0.block_sparse_moe.experts.3.w2.weight").is_some());
    let err = convert_err(&tiny_phimoe(4, 2, 3).write(&scratch("phimoe-stack.gguf")));
    assert!(err.contains("blk.0.ffn_gate_exps.weight stacks 3 experts; the config has 4"), "{err}");
    let err = convert_err(&tiny_phimoe(4, 3, 4).write(&scratch("phimoe-top3.gguf")));
    assert!(err.contains("3 experts per token") && err.contains("top-2"), "{err}");
    let err = convert_err(&tiny_phimoe(1, 2, 1).write(&scratch("phimoe-one.gguf")));
    assert!(err.contains("1 experts per layer is outside 2..=256"), "{err}");
    let mut b = tiny_phimoe(4, 2, 4);
    b.kv.retain(|(k, _, _)| k != "phimoe.expert_count");
    let err = convert_err(&b.write(&scratch("phimoe-no-count.gguf")));
    assert!(err.contains("phimoe.expert_count"), "{err}");
}

#[test]
fn regression_corpus_never_panics() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("data").join("fuzz");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        files += 1;
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(parse_manifest(&text).is_err(), "{} should be rejected", path.display());
        } else {
            assert!(Gguf::open(&path).is_err(), "{} should be rejected", path.display());
        }
    }
    assert!(files >= 5, "corpus has {files} files");
}

#[test]
fn a_header_read_from_a_prefix_asks_for_more_until_it_is_whole() {
    // A browser reads a GGUF's header by range requests: every prefix short
    // of the header asks for more, never errs; the whole header parses as
    // the file does.
    let bytes = GgufBuilder::tiny_llama("llama").string("general.name", "tiny").build();
    let whole =
        Gguf::open(&GgufBuilder::tiny_llama("llama").string("general.name", "tiny").write(&scratch("prefix.gguf")))
            .unwrap();
    let len = bytes.len() as u64;
    let mut first_whole = None;
    for n in 0..bytes.len() {
        match Gguf::from_prefix(&bytes[..n], len, "https://host/tiny.gguf").unwrap() {
            None => assert!(first_whole.is_none(), "a {n}-byte prefix asked for more after a shorter one parsed"),
            Some(header) => {
                first_whole.get_or_insert(n);
                assert_eq!(header.metadata, whole.metadata);
                assert_eq!(header.tensors.len(), whole.tensors.len());
                for (a, b) in header.tensors.iter().zip(&whole.tensors) {
                    assert_eq!((&a.name, &a.dims, a.offset, a.size), (&b.name, &b.dims, b.offset, b.size));
                }
            }
        }
    }
    let first_whole = first_whole.expect("the header parses before the tensor data");
    assert!(first_whole as u64 <= whole.tensors[0].offset, "{first_whole} bytes needed");
    // Not a GGUF, or a file that claims more than it has: errors, not "more".
    let prefix_err = |prefix: &[u8], len: u64, name: &str| match Gguf::from_prefix(prefix, len, name) {
        Err(e) => e.to_string(),
        Ok(header) => panic!("{name}: expected an error, got a header: {}", header.is_some()),
    };
    let err = prefix_err(b"<!DOCTYPE html><html>", 4096, "https://host/x.gguf");
    assert!(err.contains("HTML") && err.contains("https://host/x.gguf"), "{err}");
    let err = prefix_err(&bytes, len - 1, "https://host/tiny.gguf");
    assert!(err.contains("truncated"), "{err}");
}
