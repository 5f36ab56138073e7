//! The CPU backend's ops against scalar f64 references on seeded random
//! inputs, through the same `Backend` functions the model code records with.
//! Quantized weights meet 16-bit activations: their products are bounded by
//! the activations' rounding, 1/65534 of each block's largest magnitude,
//! relative to sum |w x|; f32 and f16 weights take f32 activations and are
//! held to the GPU kernels' f32 tolerance.
//!
//! Natively (x86: the AVX2 loops) and in Chromium (`make test-browser`: the
//! wasm simd128 loops the npm package runs), with the same tolerances.

mod common;

use std::future::Future;
use std::task::{Context, Poll, Waker};

use common::checks::{self, reference};
use common::{assert_close, cpu, cpu_env, Rng};
use phi_web::backend::{Backend, Buf, Op};
use phi_web::gpu::{AttentionShape, KvAppendShape, KvFormat, OutputSlice, RopeShape};
use phi_web::quant::{self, WeightFormat};

fn upload(values: &[f32]) -> Buf {
    cpu().storage_with("test input", bytemuck::cast_slice(values)).unwrap()
}

fn upload_u32(values: &[u32]) -> Buf {
    cpu().storage_with("test input", bytemuck::cast_slice(values)).unwrap()
}

fn run(ops: Vec<Op>) {
    cpu_env().exec(ops);
}

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// A CPU buffer's contents: its read waits on nothing, so one poll finishes
/// it (natively and in the browser alike).
fn read(buf: &Buf, len: usize) -> Vec<f32> {
    let mut read = std::pin::pin!(cpu().read_f32("test output", buf, len));
    match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(values) => values.unwrap(),
        Poll::Pending => panic!("a CPU read waited"),
    }
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn linear_every_format_decode_and_prefill_with_bias_into_slices() {
    let b: &Backend = cpu();
    for (f, format) in WeightFormat::ALL.into_iter().enumerate() {
        for &(rows, cols) in &[(1001usize, 608usize), (37, 64), (300, 3072)] {
            for tokens in [1usize, 5] {
                let values = Rng::new(100 + f as u64).vec(rows * cols, -1.0, 1.0);
                let gguf = quant::quantize(format, &values).unwrap();
                let w = quant::dequantize(format, &gguf).unwrap();
                let matrix = b.matrix("w", format, rows, cols, quant::to_gpu_layout(format, &gguf).unwrap()).unwrap();
                let xv = Rng::new(7 + tokens as u64).vec(tokens * cols, -1.0, 1.0);
                let bias = Rng::new(9).vec(rows + 3, -1.0, 1.0);
                let stride = rows + 7; // 3 floats before, 4 after: untouched
                let y = upload(&vec![5.0; tokens * stride]);
                let out = OutputSlice { stride, offset: 3 };
                run(vec![b.linear(&matrix, Some((&upload(&bias), 3)), &upload(&xv), &y, tokens, out).unwrap()]);
                let (product, products) = reference(&w, &xv, rows, cols, tokens);
                let (mut expected, mut scale) = (vec![5.0; tokens * stride], vec![0.0; tokens * stride]);
                for t in 0..tokens {
                    for r in 0..rows {
                        expected[t * stride + 3 + r] = product[t * rows + r] + bias[3 + r] as f64;
                        scale[t * stride + 3 + r] = products[t * rows + r];
                    }
                }
                let rtol = match format {
                    WeightFormat::F32 | WeightFormat::F16 => 2e-6,
                    _ => 1.0 / 65534.0,
                };
                let what = format!("cpu linear {} T={tokens} [{rows}x{cols}]", format.name());
                assert_close(&what, &read(&y, tokens * stride), &expected, &scale, 1e-6, rtol);
            }
        }
    }
}

#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn embedding_every_format() {
    let b = cpu();
    let (vocab, hidden) = (517, 96);
    for format in WeightFormat::ALL {
        let values = Rng::new(3).vec(vocab * hidden, -1.0, 1.0);
        let gguf = quant::quantize(format, &values).unwrap();
        let table = quant::dequantize(format, &gguf).unwrap();
        let matrix = b.matrix("table", format, vocab, hidden, quant::to_gpu_layout(format, &gguf).unwrap()).unwrap();
        let ids = [0u32, 516, 5, 300, 5];
        let out = upload(&vec![0.0; ids.len() * hidden]);
        run(vec![b.embedding_chunk(&matrix, 0, &upload_u32(&ids), &out, ids.len()).unwrap()]);
        let expected: Vec<f64> =
            ids.iter().flat_map(|&id| table[id as usize * hidden..][..hidden].iter().map(|&v| v as f64)).collect();
        let scale: Vec<f64> = expected.iter().map(|v| v.abs()).collect();
        assert_close(
            &format!("cpu embedding {}", format.name()),
            &read(&out, ids.len() * hidden),
            &expected,
            &scale,
            1e-7,
            1.2e-7,
        );
    }
}

/// RoPE, the append of K and V at the step's positions, and attention over
/// the cache (GQA, a sliding window in a ring, every KV format) against f64
/// references of the same math.
#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn rope_append_and_attention_against_a_scalar_reference() {
    let b = cpu();
    let (heads, kv_heads, d) = (4usize, 2usize, 32usize);
    let q_stride = (heads + 2 * kv_heads) * d;
    let kv_dim = kv_heads * d;
    for format in KvFormat::ALL {
        for &(window, slots, pos, tokens) in &[(0usize, 64usize, 0usize, 7usize), (0, 64, 20, 1), (8, 13, 30, 5)] {
            let mut rng = Rng::new(11);
            let history = pos + tokens;
            // Every position's q/k/v rows; positions before `pos` are appended first, one call each.
            let rows: Vec<f32> = rng.vec(history * q_stride, -1.0, 1.0);
            let inv_freq: Vec<f32> = (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect();
            let (k, v) = (
                b.storage("k", (slots * format.row_bytes(kv_dim)) as u64).unwrap(),
                b.storage("v", (slots * format.row_bytes(kv_dim)) as u64).unwrap(),
            );
            let step = b.step_buffer().unwrap();
            let freq = upload(&inv_freq);
            let out = b.storage("out", (tokens * heads * d * 4) as u64).unwrap();
            let mut rotated = rows.clone();
            let call = |first: usize, n: usize, attend: bool| -> Vec<f32> {
                let qkv = upload(&rows[first * q_stride..(first + n) * q_stride]);
                b.set_step(&step, first as u32).unwrap();
                let rope = |heads, offset| RopeShape {
                    tokens: n,
                    heads,
                    head_dim: d,
                    rot_dim: d,
                    row_stride: q_stride,
                    offset,
                    attn_factor: 1.0,
                };
                let append = |offset| KvAppendShape {
                    tokens: n,
                    kv_dim,
                    src_stride: q_stride,
                    src_offset: offset,
                    slots,
                    format,
                };
                let mut ops = vec![
                    b.rope(&step, &freq, &qkv, &rope(heads, 0)).unwrap(),
                    b.rope(&step, &freq, &qkv, &rope(kv_heads, heads * d)).unwrap(),
                    b.kv_append(&step, &qkv, &k, &v, &append(heads * d)).unwrap(),
                ];
                if attend {
                    let shape = AttentionShape {
                        tokens: n,
                        heads,
                        kv_heads,
                        head_dim: d,
                        q_stride,
                        slots,
                        window,
                        scale: 0.2,
                        splits: 1,
                        kv_format: format,
                        sparse: None,
                    };
                    ops.extend(b.attention(&step, &qkv, &k, &v, None, &out, &shape).unwrap());
                }
                run(ops);
                read(&qkv, n * q_stride)
            };
            for p in 0..pos {
                rotated[p * q_stride..(p + 1) * q_stride].copy_from_slice(&call(p, 1, false));
            }
            let last = call(pos, tokens, true);
            rotated[pos * q_stride..].copy_from_slice(&last);
            // The reference: attention in f64 over the rotated rows as the
            // cache stores them (f16 rounding, q8's per-block snorm8 grid).
            let stored = |row: &[f32]| -> Vec<f32> {
                match format {
                    KvFormat::F32 => row.to_vec(),
                    KvFormat::F16 => row.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
                    KvFormat::Q8 => row
                        .chunks(KvFormat::Q8_BLOCK)
                        .flat_map(|block| {
                            let scale = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                            block.iter().map(move |v| {
                                let q = (0.5 + 127.0 * (v / scale).clamp(-1.0, 1.0)).floor();
                                (q / 127.0).max(-1.0) * scale
                            })
                        })
                        .collect(),
                }
            };
            for p in 0..history {
                let kv = &mut rotated[p * q_stride + heads * d..(p + 1) * q_stride];
                let rounded = stored(kv);
                kv.copy_from_slice(&rounded);
            }
            let mut expected = vec![0.0f64; tokens * heads * d];
            let mut scale = vec![0.0f64; tokens * heads * d];
            for t in 0..tokens {
                let p = pos + t;
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let q = &rotated[p * q_stride + h * d..][..d];
                    let lo = if window > 0 { (p + 1).saturating_sub(window) } else { 0 };
                    let scores: Vec<f64> = (lo..=p)
                        .map(|j| {
                            (0..d)
                                .map(|i| q[i] as f64 * rotated[j * q_stride + heads * d + g * d + i] as f64)
                                .sum::<f64>()
                                * 0.2
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = weights.iter().sum();
                    for i in 0..d {
                        let o = t * heads * d + h * d + i;
                        for (j, w) in (lo..=p).zip(&weights) {
                            let value = rotated[j * q_stride + heads * d + kv_dim + g * d + i] as f64;
                            expected[o] += w / sum * value;
                            scale[o] += (w / sum * value).abs();
                        }
                    }
                }
            }
            // What is left is f32 arithmetic (and q8's snorm rounding of a
            // value at a half step, once in a while one step apart).
            let rtol = match format {
                KvFormat::F32 | KvFormat::F16 => 1e-5,
                KvFormat::Q8 => 1e-4,
            };
            let what = format!("cpu attention {} window {window} slots {slots} pos {pos} T={tokens}", format.name());
            assert_close(&what, &read(&out, tokens * heads * d), &expected, &scale, 1e-5, rtol);
        }
    }
}

/// The GPU kernel checks of the ops whose check goes through `Backend`
/// (tests/common/checks.rs), on the CPU backend with the same tolerances.
macro_rules! shared_checks {
    ($($check:ident),* $(,)?) => {
        $(
            #[cfg(not(target_arch = "wasm32"))]
            #[test]
            fn $check() {
                pollster::block_on(checks::$check(cpu_env()));
            }

            #[cfg(target_arch = "wasm32")]
            #[wasm_bindgen_test::wasm_bindgen_test]
            async fn $check() {
                checks::$check(cpu_env()).await;
            }
        )*
    };
}

shared_checks!(
    rms_norm_rows,
    add_rms_norm_rows,
    layer_norm_rows,
    silu_mul_over_fused_gate_up,
    gegelu_clamps_and_gates,
    scale_in_place,
    gelu_erf_tanh_and_quick,
    add_in_place,
    splice_rows_over_flagged_tokens,
    argmax_rows_first_maximum_wins,
);
