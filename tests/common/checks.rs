//! The kernel checks, shared by the native tests (tests/kernels.rs, on
//! lavapipe) and the browser tests (tests/browser.rs, on Chromium's WebGPU):
//! each runs a kernel on seeded random inputs and compares it with a scalar
//! f64 reference, with an explicit tolerance. Matrix, norm and element-wise
//! checks here; RoPE, KV cache and attention in checks/attention.rs,
//! Phi-3-small's block-sparse attention in checks/blocksparse.rs; the
//! mixture-of-experts kernels in checks/moe.rs. The norm, activation, add,
//! scale and argmax checks go through `Backend`, so tests/cpu.rs runs them
//! on the CPU backend too (natively and in Chromium), same tolerances.

mod attention;
mod blocksparse;
mod moe;

#[allow(unused_imports)] // each test binary uses part of the checks
pub use attention::*;
#[allow(unused_imports)]
pub use blocksparse::*;
#[allow(unused_imports)]
pub use moe::*;
use phi_web::gpu::{Bias, GeluKind, Matrix, OutputSlice};
use phi_web::quant::{self, WeightFormat};

use super::{assert_close, assert_close_rel, Env, Rng};

// ---- matrix kernels: every weight format against the CPU dequantizer's values

/// Random weights [rows, cols] quantized to `format`: the GPU matrix and the
/// dequantized values the reference uses.
fn weights(env: &Env, format: WeightFormat, rows: usize, cols: usize, seed: u64) -> (Matrix, Vec<f32>) {
    let values = Rng::new(seed).vec(rows * cols, -1.0, 1.0);
    let gguf = quant::quantize(format, &values).unwrap();
    let dequantized = quant::dequantize(format, &gguf).unwrap();
    let layout = quant::to_gpu_layout(format, &gguf).unwrap();
    (Matrix::upload(env.gpu(), "w", format, rows, cols, &layout).unwrap(), dequantized)
}

/// y [T, N] = x [T, K] W^T in f64, plus sum |w x| per output for the tolerance.
pub fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, tokens: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut scale) = (vec![0.0; tokens * rows], vec![0.0; tokens * rows]);
    for t in 0..tokens {
        for r in 0..rows {
            for k in 0..cols {
                let term = w[r * cols + k] as f64 * x[t * cols + k] as f64;
                y[t * rows + r] += term;
                scale[t * rows + r] += term.abs();
            }
        }
    }
    (y, scale)
}

// (rows N, cols K): N not a multiple of any workgroup; K not a multiple of 256.
const SHAPES: [(usize, usize); 3] = [(1001, 608), (37, 64), (300, 3072)];

pub async fn matvec_every_format(env: &Env) {
    for (f, format) in WeightFormat::ALL.into_iter().enumerate() {
        for (s, &(rows, cols)) in SHAPES.iter().enumerate() {
            let (w, wf) = weights(env, format, rows, cols, 100 + f as u64 * 10 + s as u64);
            let xv = Rng::new(7 + s as u64).vec(cols, -1.0, 1.0);
            let x = env.upload_f32("x", &xv);
            let y = env.zeros("y", rows);
            env.run(&[&env.kernels().matvec(&w, &x, &y).unwrap()]);
            let (expected, scale) = reference(&wf, &xv, rows, cols, 1);
            let what = format!("matvec {} {} [{rows}x{cols}]", env.kernels().variant(), format.name());
            assert_close(&what, &env.read_f32(&y, rows).await, &expected, &scale, 1e-6, 2e-6);
        }
    }
}

pub async fn matmul_every_format(env: &Env) {
    for (f, format) in WeightFormat::ALL.into_iter().enumerate() {
        for &tokens in &[1usize, 37] {
            for (s, &(rows, cols)) in SHAPES[..2].iter().enumerate() {
                let (w, wf) = weights(env, format, rows, cols, 200 + f as u64 * 10 + s as u64);
                let xv = Rng::new(11 + tokens as u64).vec(tokens * cols, -1.0, 1.0);
                let x = env.upload_f32("x", &xv);
                let y = env.zeros("y", tokens * rows);
                env.run(&[&env.kernels().matmul(&w, &x, &y, tokens).unwrap()]);
                let (expected, scale) = reference(&wf, &xv, rows, cols, tokens);
                let what = format!("matmul {} T={tokens} [{rows}x{cols}]", format.name());
                assert_close(&what, &env.read_f32(&y, tokens * rows).await, &expected, &scale, 1e-6, 2e-6);
            }
        }
    }
}

/// The matrix kernels under every tuning preset and the corners of the
/// bench-gpu sweep (one row per invocation over 64 lanes, 4 rows over 8,
/// workgroups of 64 to 256), portable and, where the device has them, with
/// subgroups: the tiles change the grid and every reduction, never the result.
pub async fn matrix_kernels_every_tuning(env: &Env) {
    use phi_web::gpu::{Kernels, Tuning};
    let corner = |wg, rows, lanes| Tuning {
        matvec_wg: wg,
        matvec_rows_per_thread: rows,
        matvec_lanes: lanes,
        matvec_subgroup_rows: rows * wg / 32,
        ..Tuning::GPU
    };
    let tunings = [Tuning::CPU, Tuning::SOFTWARE, Tuning::GPU, corner(256, 1, 64), corner(128, 4, 8)];
    for (t, tuning) in tunings.into_iter().enumerate() {
        for subgroups in [false, true] {
            if subgroups && !env.gpu().features.subgroups {
                continue;
            }
            let kernels = Kernels::with_tuning(env.gpu(), tuning, subgroups).unwrap();
            for (f, format) in WeightFormat::ALL.into_iter().enumerate() {
                for (s, &(rows, cols)) in SHAPES.iter().enumerate() {
                    let (w, wf) = weights(env, format, rows, cols, 300 + t as u64 * 100 + f as u64 * 10 + s as u64);
                    let xv = Rng::new(17 + s as u64).vec(cols, -1.0, 1.0);
                    let (x, y) = (env.upload_f32("x", &xv), env.zeros("y", rows));
                    env.run(&[&kernels.matvec(&w, &x, &y).unwrap()]);
                    let (expected, scale) = reference(&wf, &xv, rows, cols, 1);
                    let what = format!(
                        "matvec {} subgroups={subgroups} {} [{rows}x{cols}]",
                        tuning.matvec_name(),
                        format.name()
                    );
                    assert_close(&what, &env.read_f32(&y, rows).await, &expected, &scale, 1e-6, 2e-6);
                }
            }
            if subgroups {
                continue; // the prefill kernels take no subgroups
            }
            // Prefill: the register tiles (CPU) or the workgroup tiles, T = 37.
            let ((rows, cols), tokens) = (SHAPES[0], 37);
            let (w, wf) = weights(env, WeightFormat::Q4_1, rows, cols, 390 + t as u64);
            let xv = Rng::new(19).vec(tokens * cols, -1.0, 1.0);
            let (x, y) = (env.upload_f32("x", &xv), env.zeros("y", tokens * rows));
            env.run(&[&kernels.matmul(&w, &x, &y, tokens).unwrap()]);
            let (expected, scale) = reference(&wf, &xv, rows, cols, tokens);
            let what = format!("matmul {} T={tokens} [{rows}x{cols}]", tuning.matvec_name());
            assert_close(&what, &env.read_f32(&y, tokens * rows).await, &expected, &scale, 1e-6, 2e-6);
        }
    }
}

/// Every point of bench-gpu's matvec sweep gives the right answer (a fast
/// wrong kernel must not win the sweep): q4_0 over a long row and q8_0 over
/// rows that fill no workgroup evenly, portable and with subgroups.
pub async fn matvec_every_sweep_point(env: &Env) {
    use phi_web::gpu::{Kernels, Tuning};
    let cases = [(WeightFormat::Q4_0, 300, 3072), (WeightFormat::Q8_0, 1001, 608)];
    let inputs: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, &(format, rows, cols))| {
            let (w, wf) = weights(env, format, rows, cols, 500 + i as u64);
            let xv = Rng::new(23 + i as u64).vec(cols, -1.0, 1.0);
            let expected = reference(&wf, &xv, rows, cols, 1);
            (w, env.upload_f32("x", &xv), expected)
        })
        .collect();
    let sweep = Tuning::GPU.matvec_sweep();
    assert!(sweep.len() >= 50, "{} sweep points", sweep.len());
    for tuning in sweep {
        for subgroups in [false, true] {
            if subgroups && !env.gpu().features.subgroups {
                continue;
            }
            let kernels = Kernels::with_tuning(env.gpu(), tuning, subgroups).unwrap();
            for (w, x, (expected, scale)) in &inputs {
                let y = env.zeros("y", w.rows);
                env.run(&[&kernels.matvec(w, x, &y).unwrap()]);
                let what = format!("matvec {} subgroups={subgroups} {}", tuning.matvec_name(), w.format.name());
                assert_close(&what, &env.read_f32(&y, w.rows).await, expected, scale, 1e-6, 2e-6);
            }
        }
    }
}

/// A down projection reading silu(gate) * up straight from the fused gate_up
/// buffer (input_silu_mul.wgsl) on the GPU tiles, portable and with
/// subgroups, every format, against silu_mul's formula then the matvec in f64.
pub async fn matvec_after_silu_mul_every_format(env: &Env) {
    use phi_web::gpu::{Kernels, Tuning};
    for subgroups in [false, true] {
        if subgroups && !env.gpu().features.subgroups {
            continue;
        }
        let kernels = Kernels::with_tuning(env.gpu(), Tuning::GPU, subgroups).unwrap();
        for (f, format) in WeightFormat::ALL.into_iter().enumerate() {
            for (s, &(rows, cols)) in SHAPES.iter().enumerate() {
                let (w, wf) = weights(env, format, rows, cols, 600 + f as u64 * 10 + s as u64);
                // Gates down to -100: the exp clamp must keep them finite.
                let gate_up = Rng::new(29 + s as u64).vec(2 * cols, -100.0, 8.0);
                let act: Vec<f32> = (0..cols)
                    .map(|k| {
                        let (g, u) = (gate_up[k] as f64, gate_up[cols + k] as f64);
                        (g / (1.0 + (-g).min(80.0).exp()) * u) as f32
                    })
                    .collect();
                let (x, y) = (env.upload_f32("gate_up", &gate_up), env.zeros("y", rows));
                let d = kernels.matvec_after_silu_mul(&w, &x, &y, OutputSlice::whole(rows)).unwrap();
                env.run(&[&d]);
                let (expected, scale) = reference(&wf, &act, rows, cols, 1);
                let what = format!("matvec_after_silu_mul subgroups={subgroups} {} [{rows}x{cols}]", format.name());
                assert_close(&what, &env.read_f32(&y, rows).await, &expected, &scale, 1e-6, 2e-6);
            }
        }
    }
}

/// bench-gpu's read probe: workgroup g XORs the 16-byte words whose index
/// modulo the grid's invocations falls in its 256.
pub async fn read_bandwidth_xors_every_word(env: &Env) {
    // 9000 words: the four-load loop runs once per invocation, then the tail.
    let (words, groups, wg) = (9000usize, 7usize, 256usize);
    let mut rng = Rng::new(77);
    let data: Vec<u32> = (0..4 * words).map(|_| (rng.next_u64() >> 32) as u32).collect();
    let out = env.upload_u32("out", &vec![0xffff_ffff; groups]);
    let d = env.kernels().read_bandwidth(&env.upload_u32("data", &data), &out, groups).unwrap();
    env.run(&[&d]);
    let mut expected = vec![0u32; groups];
    for (i, word) in data.chunks(4).enumerate() {
        expected[i % (groups * wg) / wg] ^= word.iter().fold(0, |a, w| a ^ w);
    }
    assert_eq!(env.read_u32(&out, groups).await, expected, "read_bandwidth per workgroup XOR");
}

/// Two projections written side by side into one fused buffer (Llama's
/// separate q/k/v into a QKV row), by matvec (T = 1) and matmul (T = 5).
pub async fn linear_into_slices_of_a_fused_buffer(env: &Env) {
    let cols = 96;
    let (a, af) = weights(env, WeightFormat::Q8_0, 70, cols, 41);
    let (b, bf) = weights(env, WeightFormat::Q4_0, 33, cols, 42);
    let stride = 70 + 33 + 5; // 5 floats of padding that must stay untouched
    for tokens in [1usize, 5] {
        let xv = Rng::new(43).vec(tokens * cols, -1.0, 1.0);
        let x = env.upload_f32("x", &xv);
        let y = env.upload_f32("y", &vec![7.0; tokens * stride]);
        let first = env.kernels().linear(&a, &x, &y, tokens, OutputSlice { stride, offset: 0 }).unwrap();
        let second = env.kernels().linear(&b, &x, &y, tokens, OutputSlice { stride, offset: 70 }).unwrap();
        env.run(&[&first, &second]);
        let (ya, sa) = reference(&af, &xv, 70, cols, tokens);
        let (yb, sb) = reference(&bf, &xv, 33, cols, tokens);
        let (mut expected, mut scale) = (vec![7.0; tokens * stride], vec![0.0; tokens * stride]);
        for t in 0..tokens {
            expected[t * stride..][..70].copy_from_slice(&ya[t * 70..][..70]);
            scale[t * stride..][..70].copy_from_slice(&sa[t * 70..][..70]);
            expected[t * stride + 70..][..33].copy_from_slice(&yb[t * 33..][..33]);
            scale[t * stride + 70..][..33].copy_from_slice(&sb[t * 33..][..33]);
        }
        let got = env.read_f32(&y, tokens * stride).await;
        assert_close(&format!("linear into slices T={tokens}"), &got, &expected, &scale, 1e-6, 2e-6);
    }
}

pub async fn embedding_every_format(env: &Env) {
    let (vocab, hidden) = (517, 96);
    for (f, format) in WeightFormat::ALL.into_iter().enumerate() {
        let (table, tf) = weights(env, format, vocab, hidden, 300 + f as u64);
        let mut rng = Rng::new(5);
        let mut ids: Vec<u32> = (0..37).map(|_| rng.below(vocab as u64) as u32).collect();
        ids[0] = 0;
        ids[1] = vocab as u32 - 1;
        let ids_buffer = env.upload_u32("ids", &ids);
        let out = env.zeros("out", ids.len() * hidden);
        env.run(&[&env.kernels().embedding(&table, &ids_buffer, &out, ids.len()).unwrap()]);
        let expected: Vec<f64> =
            ids.iter().flat_map(|&id| tf[id as usize * hidden..][..hidden].iter().map(|&v| v as f64)).collect();
        let scale: Vec<f64> = expected.iter().map(|v| v.abs()).collect();
        // Dequantization is one multiply (and one add for q4_1): equal up to FMA contraction.
        assert_close(
            &format!("embedding {}", format.name()),
            &env.read_f32(&out, ids.len() * hidden).await,
            &expected,
            &scale,
            1e-7,
            1.2e-7,
        );
    }
}

pub async fn wrong_shapes_are_errors_not_out_of_bounds_reads(env: &Env) {
    let (w, _) = weights(env, WeightFormat::Q4_0, 64, 64, 1);
    let short = env.zeros("short", 32);
    let y = env.zeros("y", 64);
    let err = env.kernels().matvec(&w, &short, &y).unwrap_err();
    assert!(err.to_string().contains("linear") && err.to_string().contains("x holds 128 bytes"), "{err}");
    let err = Matrix::from_f32(env.gpu(), "odd", WeightFormat::Q4_0, 2, 48, &[0.0; 96]).unwrap_err();
    assert!(err.to_string().contains("odd: q4_0 [2, 48] needs cols a multiple of 32"), "{err}");
    let err = env.gpu().storage("huge", env.gpu().limits.max_buffer_size + 4).unwrap_err();
    assert!(err.to_string().contains("maxBufferSize"), "{err}");
}

/// The largest row chunk `convert` writes (128 MiB of q4_0 payload, WebGPU's
/// default binding limit) and its 16 MiB of scales share one buffer, bound as
/// two ranges: it loads and multiplies (Phi-3-small's and Phi-4's embeddings
/// come in such chunks).
pub async fn matrix_chunk_at_the_binding_limit(env: &Env) {
    use phi_web::formats::package::MAX_CHUNK_BYTES;
    let limit = MAX_CHUNK_BYTES.min(env.gpu().limits.max_storage_buffer_binding_size);
    let cols = 4096;
    let (row_payload, row_scales) = quant::gpu_size(WeightFormat::Q4_0, 1, cols);
    let rows = (limit as usize / row_payload) & !1;
    // Every weight is its block's scale (nibble 9 = +1); row r's scale is (r % 7 + 1) / 8.
    let data = vec![0x99u8; rows * row_payload];
    let scales: Vec<u8> = (0..rows)
        .flat_map(|r| std::iter::repeat_n(half::f16::from_f32((r % 7 + 1) as f32 / 8.0), row_scales / 2))
        .flat_map(|d| d.to_le_bytes())
        .collect();
    let layout = quant::GpuLayout { data, scales };
    let w = Matrix::upload(env.gpu(), "chunk", WeightFormat::Q4_0, rows, cols, &layout).unwrap();
    assert!(w.gpu_bytes() > limit, "payload and scales {} in one buffer", w.gpu_bytes());
    let (x, y) = (env.upload_f32("x", &vec![1.0; cols]), env.zeros("y", rows));
    env.run(&[&env.kernels().matvec(&w, &x, &y).unwrap()]);
    let got = env.read_f32(&y, rows).await;
    let expected: Vec<f64> = (0..rows).map(|r| (cols / 8 * (r % 7 + 1)) as f64).collect();
    assert_close_rel(&format!("q4_0 [{rows}, {cols}] chunk"), &got, &expected, 0.0, 0.0);
}

// ---- norms, activations, residual add, softmax, argmax

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// w * x / sqrt(mean(x²) + eps) per row of `cols`, in f64.
fn rms_norm_reference(x: &[f32], w: &[f32], cols: usize, eps: f32) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let mean_sq = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (mean_sq + eps as f64).sqrt();
            row.iter().zip(w).map(move |(&v, &w)| w as f64 * v as f64 * inv)
        })
        .collect()
}

pub async fn rms_norm_rows(env: &Env) {
    for &(rows, cols) in &[(1usize, 3072usize), (37, 576), (3, 5)] {
        let mut rng = Rng::new(cols as u64);
        let (xv, wv) = (rng.vec(rows * cols, -3.0, 3.0), rng.vec(cols, 0.5, 1.5));
        let (x, w, y) = (env.buf_f32("x", &xv), env.buf_f32("w", &wv), env.buf_zeros("y", rows * cols));
        let eps = 1e-5;
        env.exec(vec![env.backend.rms_norm(&x, &w, &y, rows, cols, eps).unwrap()]);
        let expected = rms_norm_reference(&xv, &wv, cols, eps);
        assert_close_rel(
            &format!("rms_norm [{rows}x{cols}]"),
            &env.read_buf_f32(&y, rows * cols).await,
            &expected,
            1e-6,
            1e-5,
        );
    }
}

/// A residual add folded into the next RMSNorm: the residual stream gets
/// x + h exactly (one f32 add, as add.wgsl), and h its norm.
pub async fn add_rms_norm_rows(env: &Env) {
    for &(rows, cols) in &[(1usize, 3072usize), (37, 576), (3, 5)] {
        let mut rng = Rng::new(cols as u64 + 9);
        let (xv, hv, wv) = (rng.vec(rows * cols, -3.0, 3.0), rng.vec(rows * cols, -3.0, 3.0), rng.vec(cols, 0.5, 1.5));
        let (x, h, w) = (env.buf_f32("x", &xv), env.buf_f32("h", &hv), env.buf_f32("w", &wv));
        let eps = 1e-5;
        env.exec(vec![env.backend.add_rms_norm(&x, &h, &w, rows, cols, eps).unwrap()]);
        let sum: Vec<f32> = xv.iter().zip(&hv).map(|(x, h)| x + h).collect();
        assert_eq!(env.read_buf_f32(&x, rows * cols).await, sum, "add_rms_norm [{rows}x{cols}]: x + h");
        let expected = rms_norm_reference(&sum, &wv, cols, eps);
        let what = format!("add_rms_norm [{rows}x{cols}]: norm");
        assert_close_rel(&what, &env.read_buf_f32(&h, rows * cols).await, &expected, 1e-6, 1e-5);
    }
}

pub async fn layer_norm_rows(env: &Env) {
    for &(rows, cols) in &[(1usize, 4096usize), (37, 384), (2, 7)] {
        let mut rng = Rng::new(cols as u64 + 1);
        // An offset mean exercises the two-pass variance.
        let xv: Vec<f32> = rng.vec(rows * cols, -1.0, 1.0).iter().map(|v| v + 20.0).collect();
        let (wv, bv) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -0.5, 0.5));
        let (x, w, b, y) =
            (env.buf_f32("x", &xv), env.buf_f32("w", &wv), env.buf_f32("b", &bv), env.buf_zeros("y", rows * cols));
        let eps = 1e-5;
        env.exec(vec![env.backend.layer_norm(&x, &w, &b, &y, rows, cols, eps).unwrap()]);
        let mut expected = vec![0.0; rows * cols];
        for r in 0..rows {
            let row = to_f64(&xv[r * cols..][..cols]);
            let mean = row.iter().sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
            for c in 0..cols {
                expected[r * cols + c] = (row[c] - mean) / (var + eps as f64).sqrt() * wv[c] as f64 + bv[c] as f64;
            }
        }
        // f32 input values near 20 carry ~1e-6 absolute rounding, magnified by 1/std ~ 1.7.
        assert_close_rel(
            &format!("layer_norm [{rows}x{cols}]"),
            &env.read_buf_f32(&y, rows * cols).await,
            &expected,
            2e-5,
            1e-5,
        );
    }
}

pub async fn silu_mul_over_fused_gate_up(env: &Env) {
    let (tokens, inter) = (37, 130);
    let gu = Rng::new(3).vec(tokens * 2 * inter, -12.0, 12.0);
    let (x, out) = (env.buf_f32("gate_up", &gu), env.buf_zeros("out", tokens * inter));
    env.exec(vec![env.backend.silu_mul(&x, &out, tokens, inter).unwrap()]);
    let mut expected = vec![0.0; tokens * inter];
    for t in 0..tokens {
        for i in 0..inter {
            let g = gu[t * 2 * inter + i] as f64;
            let u = gu[t * 2 * inter + inter + i] as f64;
            expected[t * inter + i] = g / (1.0 + (-g).exp()) * u;
        }
    }
    assert_close_rel("silu_mul", &env.read_buf_f32(&out, tokens * inter).await, &expected, 1e-6, 1e-5);
}

pub async fn gegelu_clamps_and_gates(env: &Env) {
    let (tokens, inter) = (19, 130);
    let gu = Rng::new(4).vec(tokens * 2 * inter, -12.0, 12.0);
    let (x, out) = (env.buf_f32("gate_up", &gu), env.buf_zeros("out", tokens * inter));
    for limit in [Some(2.0f32), None] {
        env.exec(vec![env.backend.gegelu(&x, &out, tokens, inter, limit).unwrap()]);
        let l = limit.map_or(f64::MAX, f64::from);
        let mut expected = vec![0.0; tokens * inter];
        for t in 0..tokens {
            for i in 0..inter {
                let a = (gu[t * 2 * inter + i] as f64).min(l);
                let b = (gu[t * 2 * inter + inter + i] as f64).clamp(-l, l);
                expected[t * inter + i] = a / (1.0 + (-1.702 * a).exp()) * (b + 1.0);
            }
        }
        assert_close_rel("gegelu", &env.read_buf_f32(&out, tokens * inter).await, &expected, 1e-6, 1e-5);
    }
}

pub async fn scale_in_place(env: &Env) {
    let values = Rng::new(5).vec(1000, -3.0, 3.0);
    let x = env.buf_f32("x", &values);
    env.exec(vec![env.backend.scale(&x, 999, 10.0).unwrap()]);
    let expected: Vec<f64> =
        values.iter().enumerate().map(|(i, &v)| v as f64 * if i < 999 { 10.0 } else { 1.0 }).collect();
    assert_close_rel("scale", &env.read_buf_f32(&x, 1000).await, &expected, 0.0, 1e-7);
}

/// erf in f64: Taylor series near 0, continued fraction for erfc beyond.
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let value = if a < 2.5 {
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let mut k = a;
        for n in (1..80).rev() {
            k = a + (n as f64 / 2.0) / k;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / k
    };
    value.copysign(x)
}

pub async fn gelu_erf_tanh_and_quick(env: &Env) {
    let n = 4099;
    let xv = Rng::new(9).vec(n, -8.0, 8.0);
    for kind in [GeluKind::Erf, GeluKind::Tanh, GeluKind::Quick] {
        let x = env.buf_f32("x", &xv);
        env.exec(vec![env.backend.gelu(&x, n, kind).unwrap()]);
        let expected: Vec<f64> = xv
            .iter()
            .map(|&v| {
                let v = v as f64;
                match kind {
                    GeluKind::Erf => 0.5 * v * (1.0 + erf(v / 2f64.sqrt())),
                    GeluKind::Tanh => {
                        0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
                    }
                    GeluKind::Quick => v / (1.0 + (-1.702 * v).exp()),
                }
            })
            .collect();
        // The erf approximation is good to 1.5e-7, scaled by |x| / 2.
        let scale: Vec<f64> = xv.iter().map(|v| v.abs() as f64).collect();
        assert_close(&format!("gelu {kind:?}"), &env.read_buf_f32(&x, n).await, &expected, &scale, 1e-6, 1e-6);
    }
}

pub async fn splice_rows_over_flagged_tokens(env: &Env) {
    let (tokens, width) = (37, 72);
    let mut rng = Rng::new(5);
    let (xv, rows_v) = (rng.vec(tokens * width, -1.0, 1.0), rng.vec(tokens * width, -1.0, 1.0));
    let flags: Vec<u32> = (0..tokens).map(|t| u32::from(t % 3 == 1 || (20..30).contains(&t))).collect();
    let (x, rows) = (env.buf_f32("x", &xv), env.buf_f32("rows", &rows_v));
    let flag_buf = env.backend.storage_with("flags", bytemuck::cast_slice(&flags)).unwrap();
    env.exec(vec![env.backend.splice_rows(&flag_buf, &rows, &x, tokens, width).unwrap()]);
    let expected: Vec<f64> =
        (0..tokens * width).map(|i| if flags[i / width] != 0 { rows_v[i] } else { xv[i] } as f64).collect();
    assert_close_rel("splice_rows", &env.read_buf_f32(&x, tokens * width).await, &expected, 0.0, 0.0);
}

pub async fn add_in_place(env: &Env) {
    let n = 1027;
    let mut rng = Rng::new(4);
    let (av, bv) = (rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0));
    let (a, b) = (env.buf_f32("a", &av), env.buf_f32("b", &bv));
    env.exec(vec![env.backend.add(&a, &b, n).unwrap()]);
    let expected: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| (x + y) as f64).collect();
    assert_close_rel("add", &env.read_buf_f32(&a, n).await, &expected, 0.0, 0.0);
}

pub async fn softmax_rows(env: &Env) {
    let (rows, cols) = (5, 32064);
    let xv = Rng::new(8).vec(rows * cols, -30.0, 30.0);
    let x = env.upload_f32("x", &xv);
    env.run(&[&env.kernels().softmax(&x, rows, cols).unwrap()]);
    let mut expected = vec![0.0; rows * cols];
    for r in 0..rows {
        let row = to_f64(&xv[r * cols..][..cols]);
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = row.iter().map(|v| (v - m).exp()).sum();
        for c in 0..cols {
            expected[r * cols + c] = (row[c] - m).exp() / sum;
        }
    }
    assert_close_rel("softmax", &env.read_f32(&x, rows * cols).await, &expected, 1e-9, 2e-5);
}

pub async fn argmax_rows_first_maximum_wins(env: &Env) {
    for &cols in &[7usize, 32064, 200064] {
        let rows = 3;
        let mut xv = Rng::new(cols as u64).vec(rows * cols, -10.0, 10.0);
        // Row 0: a tie between two positions; the first must win.
        xv[cols - 1] = 50.0;
        xv[cols / 2] = 50.0;
        // Row 1: every value very negative (below the kernel's sentinel).
        xv[cols..2 * cols].iter_mut().for_each(|v| *v = -3.0e38);
        xv[cols + cols / 3] = -1.0e38;
        let (x, out) = (env.buf_f32("x", &xv), env.buf_zeros("out", rows));
        env.exec(vec![env.backend.argmax(&x, &out, rows, cols).unwrap()]);
        let expected: Vec<u32> = (0..rows)
            .map(|r| {
                let row = &xv[r * cols..][..cols];
                (0..cols).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32
            })
            .collect();
        assert_eq!(env.read_buf_u32(&out, rows).await, expected, "argmax over {cols} columns");
    }
}

/// The fused bias epilogue of every matrix kernel (matvec, the tiled matmul,
/// matmul_any), a row chunk's bias offset, and f32/f16 matrices whose rows
/// are not whole 32-column blocks, written into a slice of fused rows.
pub async fn linear_with_bias_any_shape(env: &Env) {
    let cases = [
        (WeightFormat::Q4_0, 70, 64),
        (WeightFormat::Q8_0, 37, 96),
        (WeightFormat::F16, 70, 64),
        (WeightFormat::F32, 37, 144),
        (WeightFormat::F16, 50, 200),
        (WeightFormat::F32, 13, 7),
        (WeightFormat::F16, 9, 3),
    ];
    for (i, (format, rows, cols)) in cases.into_iter().enumerate() {
        let (w, wf) = weights(env, format, rows, cols, 500 + i as u64);
        let bias_offset = 5; // as for a row chunk starting at row 5
        let bv = Rng::new(40 + i as u64).vec(bias_offset + rows, -1.0, 1.0);
        let bias = env.upload_f32("bias", &bv);
        for tokens in [1, 5, 70] {
            let (stride, offset) = (rows + 11, 3);
            let xv = Rng::new(60 + i as u64).vec(tokens * cols, -1.0, 1.0);
            let x = env.upload_f32("x", &xv);
            let y = env.upload_f32("y", &vec![7.0; tokens * stride]);
            let out = OutputSlice { stride, offset };
            let b = Some(Bias { buffer: &bias, offset: bias_offset });
            env.run(&[&env.kernels().linear_with_bias(&w, b, &x, &y, tokens, out).unwrap()]);
            let (product, product_scale) = reference(&wf, &xv, rows, cols, tokens);
            let (mut expected, mut scale) = (vec![7.0; tokens * stride], vec![0.0; tokens * stride]);
            for t in 0..tokens {
                for r in 0..rows {
                    expected[t * stride + offset + r] = product[t * rows + r] + bv[bias_offset + r] as f64;
                    scale[t * stride + offset + r] = product_scale[t * rows + r] + bv[bias_offset + r].abs() as f64;
                }
            }
            let what = format!("linear + bias {} [{rows}x{cols}] T={tokens}", format.name());
            assert_close(&what, &env.read_f32(&y, tokens * stride).await, &expected, &scale, 1e-6, 2e-6);
        }
    }
}

/// f32/f16 embedding tables whose rows are not whole 32-column blocks.
pub async fn embedding_any_shape(env: &Env) {
    for (i, (format, vocab, hidden)) in
        [(WeightFormat::F32, 50, 144), (WeightFormat::F16, 31, 7)].into_iter().enumerate()
    {
        let (table, tf) = weights(env, format, vocab, hidden, 700 + i as u64);
        let ids: Vec<u32> = vec![0, vocab as u32 - 1, 3, 3, 17];
        let ids_buffer = env.upload_u32("ids", &ids);
        let out = env.zeros("out", ids.len() * hidden);
        env.run(&[&env.kernels().embedding(&table, &ids_buffer, &out, ids.len()).unwrap()]);
        let expected: Vec<f64> =
            ids.iter().flat_map(|&id| tf[id as usize * hidden..][..hidden].iter().map(|&v| v as f64)).collect();
        let what = format!("embedding {} [{vocab}x{hidden}]", format.name());
        assert_close_rel(&what, &env.read_f32(&out, ids.len() * hidden).await, &expected, 0.0, 0.0);
    }
}
