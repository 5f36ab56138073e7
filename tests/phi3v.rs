//! Phi-3.5-vision against scripts/make_tiny_phi3v.py: the HD transform
//! against the published image processor (Pillow's bilinear resize bit for
//! bit, the normalised pixels ≤ 1e-5), the CLIP tower against transformers'
//! CLIPVisionModel, and the whole model's logits with one and with two
//! images in the prompt against a reference written from the remote code.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use phi_web::image::{hd_transform, Rgb};
use sha2::{Digest, Sha256};

fn data() -> std::path::PathBuf {
    common::models::root().join("tests/data/tiny-phi3v")
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data().join(name)).unwrap()).unwrap()
}

fn f32s(name: &str) -> Vec<f32> {
    std::fs::read(data().join(name))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn image(path: &str) -> Rgb {
    Rgb::decode(&std::fs::read(data().join(path)).unwrap()).unwrap()
}

#[test]
fn hd_transform_matches_the_processor() {
    let hd = json("hd.json");
    let samples = f32s("hd-pixels.f32");
    let stride = hd["pixel_stride"].as_u64().unwrap() as usize;
    for case in hd["cases"].as_array().unwrap() {
        let (path, crops) = (case["image"].as_str().unwrap(), case["num_crops"].as_u64().unwrap() as usize);
        let out = hd_transform(&image(path), crops);
        let what = format!("{path} at {crops} crops");
        let grid = [out.crops_h as u64, out.crops_w as u64];
        assert_eq!(serde_json::json!(grid), case["crops_hw"], "{what}: crop grid");
        assert_eq!(out.tokens() as u64, case["num_img_tokens"].as_u64().unwrap(), "{what}: image tokens");
        assert_eq!(phi_web::image::crop_grid(image(path).width, image(path).height, crops), (out.crops_h, out.crops_w));
        let digest = format!("{:x}", Sha256::digest(&out.hd.data));
        assert_eq!(digest, case["hd_sha256"].as_str().unwrap(), "{what}: the resized, padded 8-bit image");
        let shape: Vec<usize> =
            case["pixel_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(out.pixels.len(), shape.iter().product::<usize>(), "{what}: pixel tensor size");
        let (offset, count) =
            (case["pixel_offset"].as_u64().unwrap() as usize, case["pixel_count"].as_u64().unwrap() as usize);
        let expected = &samples[offset..offset + count];
        let err = expected.iter().enumerate().map(|(i, e)| (out.pixels[i * stride] - e).abs()).fold(0.0f32, f32::max);
        eprintln!("hd | {what} | grid {grid:?} | max |pixel error| {err:.2e}");
        assert!(err <= 1e-5, "{what}: max |pixel error| {err}");
    }
}

#[test]
fn bad_images_are_errors() {
    let png = std::fs::read(data().join("images/small.png")).unwrap();
    for (bytes, what) in
        [(&png[..png.len() / 2], "a truncated PNG"), (&b"<!doctype html><html>"[..], "HTML"), (&[][..], "no bytes")]
    {
        let err = Rgb::decode(bytes).unwrap_err();
        assert_eq!(err.js_name(), "ImageError", "{what}: {err}");
    }
}

const MODEL: &str = "tiny-phi3v";

fn backends() -> [&'static phi_web::backend::Backend; 2] {
    [&common::env().backend, common::cpu()]
}

#[test]
fn image_tower_matches_clip_vision_model() {
    use phi_web::model::ImageEncoder;
    let golden = json("encoder.json");
    let expected = f32s("encoder.f32");
    let package = common::models::package(MODEL, phi_web::quant::WeightFormat::F32);
    let hd = hd_transform(&image(golden["image"].as_str().unwrap()), golden["num_crops"].as_u64().unwrap() as usize);
    let crops: Vec<usize> = golden["crops"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as usize).collect();
    let crop_len = 3 * 336 * 336;
    let pixels: Vec<f32> =
        crops.iter().flat_map(|&c| hd.pixels[c * crop_len..(c + 1) * crop_len].iter().copied()).collect();
    for backend in backends() {
        let encoder = pollster::block_on(ImageEncoder::load(backend, &package)).unwrap().expect("a vision tower");
        let states = pollster::block_on(encoder.hidden_states(backend, &pixels, crops.len())).unwrap();
        let err = common::models::max_abs_diff(&states, &expected);
        eprintln!(
            "parity | {MODEL} image tower on {} | hidden_states[-2] of 2 crops | max |error| {err:.2e}",
            backend.name()
        );
        assert!(err <= 1e-4, "{}: max |error| {err}", backend.name());
    }
}

/// Logits of every position of `ids` (negative: a row of image -id) in calls
/// of `chunk` tokens, each call's image rows spliced in.
fn run_prompt(backend: &phi_web::backend::Backend, ids: &[i64], chunk: usize) -> Vec<f32> {
    use phi_web::model::{Decoder, DecoderOptions, ImageEncoder, ImageRows, Logits};
    let package = common::models::package(MODEL, phi_web::quant::WeightFormat::F32);
    let decoder =
        Decoder::load(backend, &package, &DecoderOptions::new(2048, chunk, phi_web::gpu::KvFormat::F32)).unwrap();
    let encoder = pollster::block_on(ImageEncoder::load(backend, &package)).unwrap().unwrap();
    let h = decoder.config.hidden_size;
    let golden = json("golden.json");
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["input_ids"].as_array().unwrap().len() == ids.len())
        .unwrap();
    let images: Vec<Vec<f32>> = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|path| {
            let hd = hd_transform(&image(path.as_str().unwrap()), encoder.config.num_crops);
            pollster::block_on(encoder.embed(backend, &hd)).unwrap()
        })
        .collect();
    // Image k's rows in order of its positions.
    let mut next_row = vec![0usize; images.len()];
    let tokens: Vec<u32> = ids.iter().map(|&id| id.max(0) as u32).collect();
    let mut logits = Vec::new();
    for (c, chunk_ids) in tokens.chunks(chunk).enumerate() {
        let start = c * chunk;
        let mut spliced = Vec::new();
        for (i, &id) in ids[start..start + chunk_ids.len()].iter().enumerate() {
            if id < 0 {
                let k = (-id - 1) as usize;
                let row = next_row[k];
                next_row[k] += 1;
                spliced.push(ImageRows { at: i, rows: &images[k][row * h..(row + 1) * h] });
            }
        }
        let call = decoder.forward_with_images(backend, chunk_ids, &spliced, start, tokens.len(), Logits::All);
        logits.extend(pollster::block_on(call).unwrap());
    }
    for (k, image) in images.iter().enumerate() {
        assert_eq!(next_row[k] * h, image.len(), "image {} has as many rows as positions", k + 1);
    }
    logits
}

#[test]
fn tiny_phi3v_matches_the_reference_with_one_and_two_images() {
    let golden = json("golden.json");
    let expected = f32s("logits.f32");
    let vocab = golden["vocab"].as_u64().unwrap() as usize;
    for case in golden["cases"].as_array().unwrap() {
        let ids: Vec<i64> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let rows: Vec<usize> = case["rows"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let offset = case["logits_offset"].as_u64().unwrap() as usize;
        let want = &expected[offset..offset + rows.len() * vocab];
        for backend in backends() {
            for chunk in [64, 512] {
                let all = run_prompt(backend, &ids, chunk);
                let got: Vec<f32> =
                    rows.iter().flat_map(|&r| all[r * vocab..(r + 1) * vocab].iter().copied()).collect();
                let err = common::models::max_abs_diff(&got, want);
                let name = case["name"].as_str().unwrap();
                eprintln!("parity | {MODEL} {name} ({} tokens) on {}, prefill chunks of {chunk}, f32 KV | max |logit error| {err:.2e}", ids.len(), backend.name());
                assert!(err <= 1e-3, "{name} on {}: max |logit error| {err}", backend.name());
            }
        }
    }
}

fn engine(backend: phi_web::backend::BackendChoice, model: &str, context: usize) -> phi_web::engine::Engine {
    use phi_web::engine::{Engine, EngineOptions};
    let package = common::models::package(model, phi_web::quant::WeightFormat::F32);
    let dir = common::models::root().join("target/test-scratch").join(format!("engine-{model}-f32"));
    let bytes = std::fs::read(dir.join(package.manifest.tokenizer.as_ref().unwrap())).unwrap();
    let tokenizer = phi_web::tokenizer::Tokenizer::from_bytes(&bytes, &package.manifest).unwrap();
    let options = EngineOptions { context, backend, kv_cache: phi_web::gpu::KvFormat::F32, ..Default::default() };
    pollster::block_on(Engine::load(&package, Some(tokenizer), &options)).unwrap()
}

fn request(body: serde_json::Value) -> phi_web::engine::Request {
    serde_json::from_value(body).unwrap()
}

/// A chat with images through the engine: the prompt the template and the
/// processor's rules build, the KV cache reused across turns only while the
/// images agree, and the answer the same as a fresh engine's.
#[test]
fn chat_with_images_reuses_the_cache_only_for_the_same_images() {
    use phi_web::backend::BackendChoice;
    let (wide, tall) = (image("images/wide.png"), image("images/tall.png"));
    for choice in [BackendChoice::Gpu, BackendChoice::Cpu] {
        let e = engine(choice, MODEL, 2048);
        assert_eq!(e.image_tokens(&wide), Some(757));
        assert_eq!(e.info()["vision"]["numCrops"], 4);
        let ask = |image: usize, text: &str| {
            request(serde_json::json!({
                "messages": [{ "role": "user", "content": [
                    { "type": "image", "index": image }, { "type": "text", "text": text }
                ]}],
                "max_tokens": 6, "temperature": 0.0
            }))
        };
        let images = [wide.clone(), tall.clone()];
        let first = pollster::block_on(e.chat_with_images(&ask(0, "What is this?"), &images, |_| {})).unwrap();
        // <s><|user|>\n, the image, <s>\nWhat is this?<|end|>\n<|assistant|>\n
        assert!(first.stats.prompt_tokens > 757 && first.stats.prompt_tokens < 790, "{:?}", first.stats);
        assert_eq!(first.stats.cached_tokens, 0);
        // The same image and question again: everything but the last token is reused.
        let again = pollster::block_on(e.chat_with_images(&ask(0, "What is this?"), &images, |_| {})).unwrap();
        assert_eq!((again.stats.cached_tokens, &again.tokens), (first.stats.prompt_tokens - 1, &first.tokens));
        // The image's rows too: the tower ran for the first request only.
        let (used, reused) = (first.stats.images.clone().unwrap(), again.stats.images.clone().unwrap());
        assert_eq!((used.images, used.tokens, used.crops), (1, 757, 5));
        assert_eq!((reused.images, reused.tokens, reused.crops), (1, 757, 0));
        // Another image at the same positions: nothing from the image on is reused.
        let other = pollster::block_on(e.chat_with_images(&ask(1, "What is this?"), &images, |_| {})).unwrap();
        assert!(other.stats.cached_tokens < 10, "{:?}", other.stats);
        let fresh = engine(choice, MODEL, 2048);
        let expected = pollster::block_on(fresh.chat_with_images(&ask(1, "What is this?"), &images, |_| {})).unwrap();
        assert_eq!(other.tokens, expected.tokens, "{choice:?}: a reused prefix answers as a fresh engine");
        eprintln!(
            "chat | {MODEL} on {choice:?} | prompt {} tokens | reused {} then {}",
            first.stats.prompt_tokens, again.stats.cached_tokens, other.stats.cached_tokens
        );
    }
}

#[test]
fn bad_image_requests_are_input_errors_and_the_engine_stays_usable() {
    use phi_web::backend::BackendChoice;
    let wide = image("images/wide.png");
    let ask = serde_json::json!({
        "messages": [{ "role": "user", "content": [{ "type": "image", "index": 0 }, { "type": "text", "text": "Hi" }]}],
        "max_tokens": 3, "temperature": 0.0
    });
    let text_only = request(serde_json::json!({ "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 3 }));

    // An image for a model without a vision tower.
    let e = engine(BackendChoice::Gpu, "tiny-phimoe", 256);
    let err =
        pollster::block_on(e.chat_with_images(&request(ask.clone()), std::slice::from_ref(&wide), |_| {})).unwrap_err();
    assert_eq!(err.js_name(), "InputError", "{err}");
    assert!(err.to_string().contains("takes no images"), "{err}");
    assert!(pollster::block_on(e.chat(&text_only, |_| {})).is_ok());

    // An image too large for the context; an index with no image; an unresolved URL.
    let e = engine(BackendChoice::Cpu, MODEL, 512);
    let err =
        pollster::block_on(e.chat_with_images(&request(ask.clone()), std::slice::from_ref(&wide), |_| {})).unwrap_err();
    assert!(err.to_string().contains("757 of them for its images"), "{err}");
    let err = pollster::block_on(e.chat_with_images(&request(ask.clone()), &[], |_| {})).unwrap_err();
    assert!(err.to_string().contains("the request has 0"), "{err}");
    let url = serde_json::json!({ "messages": [{ "role": "user", "content": [
        { "type": "image_url", "image_url": { "url": "https://example.com/cat.png" } }] }] });
    let err = pollster::block_on(e.chat_with_images(&request(url), std::slice::from_ref(&wide), |_| {})).unwrap_err();
    assert!(err.to_string().contains("unresolved"), "{err}");
    let answer = pollster::block_on(e.chat(&text_only, |_| {})).unwrap();
    assert_eq!(answer.stats.cached_tokens, 0, "nothing was generated or cached by the failed requests");
}

/// Phi-3.5-vision-instruct's published config.json (its keys; the tower
/// named, not described) and its processor's num_crops.
#[test]
fn published_phi35_vision_config_loads() {
    use phi_web::config::{Architecture, ModelConfig};
    let config = serde_json::json!({
        "architectures": ["Phi3VForCausalLM"], "model_type": "phi3_v",
        "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": { "type": "su", "short_factor": vec![1.0; 48], "long_factor": vec![1.5; 48] },
        "sliding_window": 262144, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "img_processor": { "image_dim_out": 1024, "model_name": "openai/clip-vit-large-patch14-336",
                           "name": "clip_vision_model", "num_img_tokens": 144 },
        "embd_layer": { "embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp",
                        "use_hd_transform": true, "with_learnable_separator": true }
    });
    let c = ModelConfig::from_hf(&config).unwrap();
    assert_eq!(c.architecture, Architecture::Phi3);
    let v = c.vision.as_ref().expect("a vision tower");
    assert_eq!((v.hidden_size, v.intermediate_size, v.num_heads), (1024, 4096, 16));
    assert_eq!(
        (v.num_layers, v.image_size, v.patch_size, v.grid()),
        (23, 336, 14, 24),
        "layer_idx -2: 23 of 24 layers"
    );
    assert_eq!(v.num_crops, 4);
    // Another tower or merge order is refused, not guessed.
    let mut other = config.clone();
    other["embd_layer"]["hd_transform_order"] = "glb_sub".into();
    assert_eq!(ModelConfig::from_hf(&other).unwrap_err().js_name(), "UnsupportedError");
    let mut other = config.clone();
    other["img_processor"]["model_name"] = "openai/clip-vit-base-patch32".into();
    assert_eq!(ModelConfig::from_hf(&other).unwrap_err().js_name(), "UnsupportedError");
}
