//! Phi-3-small against the reference forward pass of
//! scripts/make_tiny_phi3small.py (written from the hub's remote code; no
//! transformers class exists): a tiny random Phi3SmallForCausalLM with dense
//! and block-sparse layers over 40 tokens (ten blocks of 4), per-head
//! stripes, GQA, biases, muP, gegelu's clamp and tied embeddings with dummy
//! tokens — f32 logits at every position, prefill and prefill + decode, with
//! the f32, f16 and q8 KV caches, on the GPU and the CPU backend; q8_0
//! weights against the reference on the same q8_0 weights (GPU).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::models::{argmax, golden, golden_file, max_abs_diff, package, run_on};
use common::{cpu, env};
use phi_web::gpu::KvFormat;
use phi_web::quant::WeightFormat;

const MODEL: &str = "tiny-phi3small";

/// Top-1 agreement of two [rows, vocab] logit tables.
fn top1(a: &[f32], b: &[f32], vocab: usize) -> usize {
    (0..a.len() / vocab).filter(|r| argmax(&a[r * vocab..][..vocab]) == argmax(&b[r * vocab..][..vocab])).count()
}

/// Each backend with each KV cache format, prefilling everything at once or 5 tokens then decoding.
fn combinations() -> Vec<(&'static phi_web::backend::Backend, KvFormat, usize)> {
    let tokens = golden(MODEL).ids.len();
    let backends = [&env().backend, cpu()];
    let kvs = [KvFormat::F32, KvFormat::F16, KvFormat::Q8];
    backends.into_iter().flat_map(|b| kvs.into_iter().flat_map(move |kv| [(b, kv, tokens), (b, kv, 5)])).collect()
}

#[test]
fn tiny_phi3small_matches_the_reference() {
    let g = golden(MODEL);
    let package = package(MODEL, WeightFormat::F32);
    for (backend, kv, chunk) in combinations() {
        let logits = run_on(backend, &package, &g.ids, chunk, kv);
        let err = max_abs_diff(&logits, &g.logits);
        let agree = top1(&logits, &g.logits, g.vocab);
        let (kv, on) = (kv.name(), backend.name());
        eprintln!("parity | {MODEL} f32 on {on}, {kv} KV cache, prefill {chunk} then decode | max |logit error| {err:.3e} | top-1 {agree}/{}", g.ids.len());
        // The f32 cache leaves f32 arithmetic. f16 rounds keys and values
        // to 2^-11 of their size, q8 to 1/254 of their block's largest:
        // the logits move in proportion (1e-3, 8e-3 per unit of the largest).
        let largest = g.logits.iter().filter(|v| **v > f32::MIN).fold(1.0f32, |m, v| m.max(v.abs()));
        let bound = match kv {
            "f32" => 2e-5,
            "f16" => 1e-3 * largest,
            _ => 8e-3 * largest,
        };
        assert_eq!(agree, g.ids.len(), "{on}, {kv} KV cache, prefill {chunk}: top-1");
        assert!(err <= bound, "{on}, {kv} KV cache, prefill {chunk}: max |logit error| {err} > {bound}");
    }
}

#[test]
fn tiny_phi3small_q8_0_matches_the_reference_on_the_same_weights() {
    let g = golden_file(MODEL, "golden-q8_0.json");
    let package = package(MODEL, WeightFormat::Q8_0);
    let f32_reference = golden(MODEL);
    // On the GPU: the CPU backend's 16-bit activations move q8_0 products by
    // up to 1/65534 of a block's largest (3e-5 here), above this bound.
    for chunk in [g.ids.len(), 5] {
        let logits = run_on(&env().backend, &package, &g.ids, chunk, KvFormat::F32);
        let err = max_abs_diff(&logits, &g.logits);
        let agree = top1(&logits, &f32_reference.logits, g.vocab);
        eprintln!("parity | {MODEL} q8_0 against the reference on the q8_0 weights, f32 KV cache, prefill {chunk} then decode | max |logit error| {err:.3e} | top-1 against the f32 reference {agree}/{}", g.ids.len());
        assert!(err <= 2e-5, "prefill {chunk}: max |logit error| {err}");
        assert_eq!(agree, g.ids.len(), "prefill {chunk}: top-1 against the f32 reference");
    }
}

/// The published configs (key layout of the hub files, tests/data/phi3small-configs):
/// the 8k model and the 128k model with its LongRoPE ("su") factors and mscales.
#[test]
fn published_phi3small_configs_load() {
    use phi_web::config::{Architecture, BlockSparse, ModelConfig, NormKind};
    let read = |name: &str| -> serde_json::Value {
        let path = common::models::root().join("tests/data/phi3small-configs").join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    for (file, max_position) in [("phi3small-8k.json", 8192), ("phi3small-128k.json", 131072)] {
        let c = ModelConfig::from_hf(&read(file)).unwrap();
        assert_eq!(
            (c.architecture, c.norm, c.max_position_embeddings),
            (Architecture::Phi3Small, NormKind::Layer, max_position)
        );
        assert_eq!(
            (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size),
            (4096, 32, 8, 128, 14336)
        );
        assert_eq!((c.rope_theta, c.norm_eps, c.tie_word_embeddings), (1e6, 1e-5, true));
        assert_eq!(c.attention_scale, Some(1.0 / 128.0), "mup_attn_multiplier / head_dim");
        let extras = c.phi3small.as_ref().unwrap();
        assert_eq!(extras.blocksparse, BlockSparse { block: 64, local_blocks: 16, vert_stride: 8, head_step: 1 });
        assert_eq!(
            (extras.embedding_multiplier, extras.width_multiplier, extras.gegelu_limit),
            (10.0, 8.0, Some(20.0))
        );
        let dense: Vec<usize> = (0..c.num_layers).filter(|&i| extras.dense_layer(i)).collect();
        assert_eq!(dense, (1..32).step_by(2).collect::<Vec<_>>(), "layers 2, 4, ... are dense");
        assert_eq!(extras.dummy_token_ids.len(), 91);
        assert_eq!(c.kv_bytes_per_token(), 128 << 10, "128 KiB of f16 K and V per token");
        match (file, &c.longrope) {
            ("phi3small-8k.json", None) => {}
            ("phi3small-128k.json", Some(l)) => {
                assert_eq!((l.original_max_position_embeddings, l.short_factor.len()), (8192, 64));
                assert_eq!((l.attention_factor(false), l.attention_factor(true)), (1.0, 1.190_238_1));
            }
            (file, other) => panic!("{file}: longrope {other:?}"),
        }
    }
    // A position scale other than 1 (no published model) is refused, not guessed.
    let mut scaled = read("phi3small-8k.json");
    scaled["rope_position_scale"] = 2.0.into();
    let err = ModelConfig::from_hf(&scaled).unwrap_err().to_string();
    assert!(err.contains("rope_position_scale"), "{err}");
}
