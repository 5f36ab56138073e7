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
