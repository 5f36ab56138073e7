//! The kernel checks, shared by the native tests (tests/kernels.rs, on
//! lavapipe) and the browser tests (tests/browser.rs, on Chromium's WebGPU):
//! each runs a kernel on seeded random inputs and compares it with a scalar
//! f64 reference, with an explicit tolerance.

use half::f16;
use phi_web::gpu::{
    AttentionScratch, AttentionShape, Bias, GeluKind, KvAppendShape, KvFormat, Matrix, OutputSlice, RopeShape,
};
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
    (Matrix::upload(&env.gpu, "w", format, rows, cols, &layout).unwrap(), dequantized)
}

/// y [T, N] = x [T, K] W^T in f64, plus sum |w x| per output for the tolerance.
fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, tokens: usize) -> (Vec<f64>, Vec<f64>) {
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
            env.run(&[&env.kernels.matvec(&w, &x, &y).unwrap()]);
            let (expected, scale) = reference(&wf, &xv, rows, cols, 1);
            let what = format!("matvec {} {} [{rows}x{cols}]", env.kernels.variant(), format.name());
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
                env.run(&[&env.kernels.matmul(&w, &x, &y, tokens).unwrap()]);
                let (expected, scale) = reference(&wf, &xv, rows, cols, tokens);
                let what = format!("matmul {} T={tokens} [{rows}x{cols}]", format.name());
                assert_close(&what, &env.read_f32(&y, tokens * rows).await, &expected, &scale, 1e-6, 2e-6);
            }
        }
    }
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
        let first = env.kernels.linear(&a, &x, &y, tokens, OutputSlice { stride, offset: 0 }).unwrap();
        let second = env.kernels.linear(&b, &x, &y, tokens, OutputSlice { stride, offset: 70 }).unwrap();
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
        env.run(&[&env.kernels.embedding(&table, &ids_buffer, &out, ids.len()).unwrap()]);
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
    let err = env.kernels.matvec(&w, &short, &y).unwrap_err();
    assert!(err.to_string().contains("linear") && err.to_string().contains("x holds 128 bytes"), "{err}");
    let err = Matrix::from_f32(&env.gpu, "odd", WeightFormat::Q4_0, 2, 48, &[0.0; 96]).unwrap_err();
    assert!(err.to_string().contains("odd: q4_0 [2, 48] needs cols a multiple of 32"), "{err}");
    let err = env.gpu.storage("huge", env.gpu.limits.max_buffer_size + 4).unwrap_err();
    assert!(err.to_string().contains("maxBufferSize"), "{err}");
}

// ---- norms, activations, residual add, softmax, argmax

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub async fn rms_norm_rows(env: &Env) {
    for &(rows, cols) in &[(1usize, 3072usize), (37, 576), (3, 5)] {
        let mut rng = Rng::new(cols as u64);
        let (xv, wv) = (rng.vec(rows * cols, -3.0, 3.0), rng.vec(cols, 0.5, 1.5));
        let (x, w, y) = (env.upload_f32("x", &xv), env.upload_f32("w", &wv), env.zeros("y", rows * cols));
        let eps = 1e-5;
        env.run(&[&env.kernels.rms_norm(&x, &w, &y, rows, cols, eps).unwrap()]);
        let mut expected = vec![0.0; rows * cols];
        for r in 0..rows {
            let row = &xv[r * cols..][..cols];
            let mean_sq = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (mean_sq + eps as f64).sqrt();
            for c in 0..cols {
                expected[r * cols + c] = wv[c] as f64 * row[c] as f64 * inv;
            }
        }
        assert_close_rel(
            &format!("rms_norm [{rows}x{cols}]"),
            &env.read_f32(&y, rows * cols).await,
            &expected,
            1e-6,
            1e-5,
        );
    }
}

pub async fn layer_norm_rows(env: &Env) {
    for &(rows, cols) in &[(1usize, 4096usize), (37, 384), (2, 7)] {
        let mut rng = Rng::new(cols as u64 + 1);
        // An offset mean exercises the two-pass variance.
        let xv: Vec<f32> = rng.vec(rows * cols, -1.0, 1.0).iter().map(|v| v + 20.0).collect();
        let (wv, bv) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -0.5, 0.5));
        let (x, w, b, y) =
            (env.upload_f32("x", &xv), env.upload_f32("w", &wv), env.upload_f32("b", &bv), env.zeros("y", rows * cols));
        let eps = 1e-5;
        env.run(&[&env.kernels.layer_norm(&x, &w, &b, &y, rows, cols, eps).unwrap()]);
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
            &env.read_f32(&y, rows * cols).await,
            &expected,
            2e-5,
            1e-5,
        );
    }
}

pub async fn silu_mul_over_fused_gate_up(env: &Env) {
    let (tokens, inter) = (37, 130);
    let gu = Rng::new(3).vec(tokens * 2 * inter, -12.0, 12.0);
    let (x, out) = (env.upload_f32("gate_up", &gu), env.zeros("out", tokens * inter));
    env.run(&[&env.kernels.silu_mul(&x, &out, tokens, inter).unwrap()]);
    let mut expected = vec![0.0; tokens * inter];
    for t in 0..tokens {
        for i in 0..inter {
            let g = gu[t * 2 * inter + i] as f64;
            let u = gu[t * 2 * inter + inter + i] as f64;
            expected[t * inter + i] = g / (1.0 + (-g).exp()) * u;
        }
    }
    assert_close_rel("silu_mul", &env.read_f32(&out, tokens * inter).await, &expected, 1e-6, 1e-5);
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

pub async fn gelu_erf_and_tanh(env: &Env) {
    let n = 4099;
    let xv = Rng::new(9).vec(n, -8.0, 8.0);
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        let x = env.upload_f32("x", &xv);
        env.run(&[&env.kernels.gelu(&x, n, kind).unwrap()]);
        let expected: Vec<f64> = xv
            .iter()
            .map(|&v| {
                let v = v as f64;
                match kind {
                    GeluKind::Erf => 0.5 * v * (1.0 + erf(v / 2f64.sqrt())),
                    GeluKind::Tanh => {
                        0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
                    }
                }
            })
            .collect();
        // The erf approximation is good to 1.5e-7, scaled by |x| / 2.
        let scale: Vec<f64> = xv.iter().map(|v| v.abs() as f64).collect();
        assert_close(&format!("gelu {kind:?}"), &env.read_f32(&x, n).await, &expected, &scale, 1e-6, 1e-6);
    }
}

pub async fn add_in_place(env: &Env) {
    let n = 1027;
    let mut rng = Rng::new(4);
    let (av, bv) = (rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0));
    let (a, b) = (env.upload_f32("a", &av), env.upload_f32("b", &bv));
    env.run(&[&env.kernels.add(&a, &b, n).unwrap()]);
    let expected: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| (x + y) as f64).collect();
    assert_close_rel("add", &env.read_f32(&a, n).await, &expected, 0.0, 0.0);
}

pub async fn softmax_rows(env: &Env) {
    let (rows, cols) = (5, 32064);
    let xv = Rng::new(8).vec(rows * cols, -30.0, 30.0);
    let x = env.upload_f32("x", &xv);
    env.run(&[&env.kernels.softmax(&x, rows, cols).unwrap()]);
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
        let (x, out) = (env.upload_f32("x", &xv), env.gpu.storage("out", 4 * rows as u64).unwrap());
        env.run(&[&env.kernels.argmax(&x, &out, rows, cols).unwrap()]);
        let expected: Vec<u32> = (0..rows)
            .map(|r| {
                let row = &xv[r * cols..][..cols];
                (0..cols).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32
            })
            .collect();
        assert_eq!(env.read_u32(&out, rows).await, expected, "argmax over {cols} columns");
    }
}

// ---- RoPE, KV append, split causal attention (GQA, window, decode and prefill)

/// inv_freq[i] = 1 / (factor[i] * theta^(2i / rot_dim)), as HF computes it in f32.
fn inv_freq(theta: f32, rot_dim: usize, factors: Option<&[f32]>) -> Vec<f32> {
    (0..rot_dim / 2)
        .map(|i| {
            let base = theta.powf((2 * i) as f32 / rot_dim as f32);
            1.0 / (factors.map_or(1.0, |f| f[i]) * base)
        })
        .collect()
}

pub async fn rope_neox_partial_longrope_and_large_positions(env: &Env) {
    struct RopeCase<'a> {
        head_dim: usize,
        rot_dim: usize,
        heads: usize,
        theta: f32,
        long_factors: Option<&'a [f32]>,
        attn_factor: f32,
        pos0: u32,
    }
    let long: Vec<f32> = (0..48).map(|i| 1.0 + i as f32 * 1.5).collect();
    let cases = [
        // Phi-3-mini
        RopeCase {
            head_dim: 96,
            rot_dim: 96,
            heads: 4,
            theta: 10_000.0,
            long_factors: None,
            attn_factor: 1.0,
            pos0: 0,
        },
        // Phi-4-mini: partial rotary
        RopeCase {
            head_dim: 128,
            rot_dim: 96,
            heads: 3,
            theta: 10_000.0,
            long_factors: None,
            attn_factor: 1.0,
            pos0: 17,
        },
        // LongRoPE near 128k positions
        RopeCase {
            head_dim: 96,
            rot_dim: 96,
            heads: 2,
            theta: 10_000.0,
            long_factors: Some(&long),
            attn_factor: 1.190_238,
            pos0: 131_000,
        },
        // Phi-4's theta
        RopeCase {
            head_dim: 128,
            rot_dim: 128,
            heads: 2,
            theta: 250_000.0,
            long_factors: None,
            attn_factor: 1.0,
            pos0: 4090,
        },
    ];
    for (case, c) in cases.iter().enumerate() {
        let RopeCase { head_dim, rot_dim, heads, theta, long_factors: factors, attn_factor, pos0 } = *c;
        let tokens = 5;
        // The rotated heads sit after `offset` floats of each row, as Q or K in a fused QKV row.
        let offset = head_dim;
        let row_stride = offset + heads * head_dim + 8;
        let xv = Rng::new(case as u64).vec(tokens * row_stride, -1.0, 1.0);
        let freqs = inv_freq(theta, rot_dim, factors);
        let (x, f, step) = (env.upload_f32("x", &xv), env.upload_f32("inv_freq", &freqs), env.gpu.step_buffer(pos0));
        let shape = RopeShape { tokens, heads, head_dim, rot_dim, row_stride, offset, attn_factor };
        env.run(&[&env.kernels.rope(&step, &f, &x, &shape).unwrap()]);

        let mut expected: Vec<f64> = xv.iter().map(|&v| v as f64).collect();
        for t in 0..tokens {
            for h in 0..heads {
                let base = t * row_stride + offset + h * head_dim;
                for i in 0..rot_dim / 2 {
                    let angle = ((pos0 + t as u32) as f32 * freqs[i]) as f64; // f32 product, as HF
                    let (c, s) = (angle.cos() * attn_factor as f64, angle.sin() * attn_factor as f64);
                    let (x1, x2) = (xv[base + i] as f64, xv[base + i + rot_dim / 2] as f64);
                    expected[base + i] = x1 * c - x2 * s;
                    expected[base + i + rot_dim / 2] = x2 * c + x1 * s;
                }
            }
        }
        let what = format!("rope head_dim {head_dim} rot {rot_dim} pos {pos0}");
        assert_close(&what, &env.read_f32(&x, xv.len()).await, &expected, &vec![1.0; xv.len()], 2e-6, 0.0);
    }
}

pub async fn kv_append_packs_f16_at_the_step_position(env: &Env) {
    // A plain cache, then a ring of 40 slots that positions 60..96 wrap around.
    for (slots, pos0) in [(64, 20u32), (40, 60)] {
        let (tokens, kv_dim) = (37, 2 * 96);
        let src_stride = 3 * kv_dim;
        let src_offset = kv_dim; // the K slice of a [Q | K | V] row
        let sv = Rng::new(12).vec(tokens * src_stride, -4.0, 4.0);
        let (src, cache, step) = (
            env.upload_f32("src", &sv),
            env.gpu.storage("cache", (slots * kv_dim * 2) as u64).unwrap(),
            env.gpu.step_buffer(pos0),
        );
        let shape = KvAppendShape { tokens, kv_dim, src_stride, src_offset, slots, format: KvFormat::F16 };
        env.run(&[&env.kernels.kv_append(&step, &src, &cache, &shape).unwrap()]);
        let words = env.read_u32(&cache, slots * kv_dim / 2).await;
        let got: Vec<f32> = words
            .iter()
            .flat_map(|w| [f16::from_bits(*w as u16).to_f32(), f16::from_bits((*w >> 16) as u16).to_f32()])
            .collect();
        let mut expected = vec![0.0f64; slots * kv_dim];
        for t in 0..tokens {
            let slot = (pos0 as usize + t) % slots;
            for j in 0..kv_dim {
                expected[slot * kv_dim + j] = sv[t * src_stride + src_offset + j] as f64;
            }
        }
        // f32 -> f16 rounds to 11 significant bits.
        assert_close_rel(&format!("kv_append, {slots} slots"), &got, &expected, 0.0, 1.0 / 1024.0);
    }
    // More tokens than slots would race for a slot: an error, not a write.
    let shape = KvAppendShape { tokens: 9, kv_dim: 4, src_stride: 12, src_offset: 4, slots: 8, format: KvFormat::F16 };
    let buf = env.zeros("buf", 4096);
    let err = env.kernels.kv_append(&env.gpu.step_buffer(0), &buf, &buf, &shape).unwrap_err();
    assert!(err.to_string().contains("9 tokens would overwrite each other"), "{err}");
    // An 8-bit cache stores whole blocks of 32.
    let shape = KvAppendShape { tokens: 1, kv_dim: 48, src_stride: 48, src_offset: 0, slots: 8, format: KvFormat::Q8 };
    let err = env.kernels.kv_append(&env.gpu.step_buffer(0), &buf, &buf, &shape).unwrap_err();
    assert!(err.to_string().contains("a q8 KV cache cannot hold rows of 48 values"), "{err}");
}

/// The 8-bit cache: every value within half a step (scale / 127 / 2) of its
/// source, scale = the block's largest magnitude, slots not written stay 0.
pub async fn kv_append_q8_rounds_each_block_to_its_scale(env: &Env) {
    for (slots, pos0) in [(64, 20u32), (40, 60)] {
        let (tokens, kv_dim) = (37, 2 * 96);
        let (src_stride, src_offset) = (3 * kv_dim, kv_dim);
        let mut sv = Rng::new(14).vec(tokens * src_stride, -4.0, 4.0);
        sv[src_offset..src_offset + 32].fill(0.0); // an all-zero block: scale 0, no NaN
        let (src, step) = (env.upload_f32("src", &sv), env.gpu.step_buffer(pos0));
        let row_words = KvFormat::Q8.row_bytes(kv_dim) / 4;
        let cache = env.gpu.storage("cache", (slots * row_words * 4) as u64).unwrap();
        let shape = KvAppendShape { tokens, kv_dim, src_stride, src_offset, slots, format: KvFormat::Q8 };
        env.run(&[&env.kernels.kv_append(&step, &src, &cache, &shape).unwrap()]);
        let words = env.read_u32(&cache, slots * row_words).await;
        let written: Vec<usize> = (0..tokens).map(|t| (pos0 as usize + t) % slots).collect();
        for slot in (0..slots).filter(|s| !written.contains(s)) {
            assert!(words[slot * row_words..][..row_words].iter().all(|w| *w == 0), "slot {slot} was written");
        }
        for (t, &slot) in written.iter().enumerate() {
            let row = &words[slot * row_words..][..row_words];
            let codes: &[u8] = bytemuck::cast_slice(&row[..kv_dim / 4]);
            for (b, block) in sv[t * src_stride + src_offset..][..kv_dim].chunks(KvFormat::Q8_BLOCK).enumerate() {
                let scale = f32::from_bits(row[kv_dim / 4 + b]);
                let largest = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert_eq!(scale, largest, "token {t} block {b}: scale");
                for (i, &v) in block.iter().enumerate() {
                    let code = codes[b * KvFormat::Q8_BLOCK + i] as i8;
                    let decoded = code as f64 / 127.0 * scale as f64;
                    let half_step = scale as f64 / 127.0 / 2.0;
                    assert!(
                        (decoded - v as f64).abs() <= half_step * (1.0 + 1e-5) && code != i8::MIN,
                        "token {t} value {}: {v} stored as {code} (scale {scale})",
                        b * KvFormat::Q8_BLOCK + i
                    );
                }
            }
        }
    }
}

/// The f32 cache holds every value exactly, at its position's slot.
pub async fn kv_append_f32_is_exact(env: &Env) {
    for (slots, pos0) in [(64, 20u32), (40, 60)] {
        let (tokens, kv_dim) = (37, 2 * 36);
        let (src_stride, src_offset) = (3 * kv_dim, 2 * kv_dim); // the V slice of a [Q | K | V] row
        let sv = Rng::new(16).vec(tokens * src_stride, -4.0, 4.0);
        let (src, step) = (env.upload_f32("src", &sv), env.gpu.step_buffer(pos0));
        let cache = env.gpu.storage("cache", (slots * kv_dim * 4) as u64).unwrap();
        let shape = KvAppendShape { tokens, kv_dim, src_stride, src_offset, slots, format: KvFormat::F32 };
        env.run(&[&env.kernels.kv_append(&step, &src, &cache, &shape).unwrap()]);
        let mut expected = vec![0.0f64; slots * kv_dim];
        for t in 0..tokens {
            let slot = (pos0 as usize + t) % slots;
            for j in 0..kv_dim {
                expected[slot * kv_dim + j] = sv[t * src_stride + src_offset + j] as f64;
            }
        }
        let got = env.read_f32(&cache, slots * kv_dim).await;
        assert_close_rel(&format!("kv_append f32, {slots} slots"), &got, &expected, 0.0, 0.0);
    }
}

/// One cache row of `values` as the GPU stores it in `format`, and the values
/// it decodes to.
fn encode_kv_row(format: KvFormat, values: &[f32]) -> (Vec<u8>, Vec<f64>) {
    match format {
        KvFormat::F16 => {
            let half: Vec<f16> = values.iter().map(|v| f16::from_f32(*v)).collect();
            (bytemuck::cast_slice(&half).to_vec(), half.iter().map(|v| v.to_f64()).collect())
        }
        KvFormat::F32 => (bytemuck::cast_slice(values).to_vec(), values.iter().map(|v| *v as f64).collect()),
        KvFormat::Q8 => {
            let (mut bytes, mut scales, mut decoded) = (Vec::new(), Vec::new(), Vec::new());
            for block in values.chunks(KvFormat::Q8_BLOCK) {
                let scale = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                scales.extend(scale.to_le_bytes());
                for v in block {
                    let code = if scale > 0.0 { (v / scale * 127.0).round() as i8 } else { 0 };
                    bytes.push(code as u8);
                    decoded.push(code as f64 / 127.0 * scale as f64);
                }
            }
            bytes.extend(scales);
            (bytes, decoded)
        }
    }
}

struct Case {
    name: &'static str,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    tokens: usize,
    pos0: usize,
    window: usize,
    splits: usize,
    /// Keep only the last window + tokens positions, in a ring (key j in slot j % slots).
    ring: bool,
    kv: KvFormat,
}

/// Checks attention of `tokens` queries at positions pos0.. over a cache of
/// pos0 + tokens random keys and values, stored as `c.kv`.
async fn check_attention(env: &Env, c: &Case, seed: u64) {
    let kv_len = c.pos0 + c.tokens;
    let capacity = kv_len + 3;
    let slots = if c.ring { c.window + c.tokens } else { capacity };
    let kv_dim = c.kv_heads * c.head_dim;
    let q_stride = (c.heads + 2 * c.kv_heads) * c.head_dim; // a fused QKV row
    let mut rng = Rng::new(seed);
    let qv = rng.vec(c.tokens * q_stride, -1.0, 1.0);
    // Each position's row encoded as the GPU stores it, and what it decodes to.
    let mut cache_rows = || -> Vec<(Vec<u8>, Vec<f64>)> {
        (0..capacity).map(|_| encode_kv_row(c.kv, &rng.vec(kv_dim, -1.0, 1.0))).collect()
    };
    let (k_rows, v_rows) = (cache_rows(), cache_rows());
    let scale = 1.0 / (c.head_dim as f32).sqrt();
    let shape = AttentionShape {
        tokens: c.tokens,
        heads: c.heads,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        q_stride,
        slots,
        window: c.window,
        scale,
        splits: c.splits,
        kv_format: c.kv,
    };
    // The cache as the GPU holds it: position p in slot p % slots (the ring
    // keeps only the last `slots` positions).
    let row_bytes = c.kv.row_bytes(kv_dim);
    let cache_of = |rows: &[(Vec<u8>, Vec<f64>)]| -> Vec<u8> {
        let mut cache = vec![0u8; slots * row_bytes];
        for p in kv_len.saturating_sub(slots)..kv_len {
            cache[(p % slots) * row_bytes..][..row_bytes].copy_from_slice(&rows[p].0);
        }
        cache
    };

    let q = env.upload_f32("q", &qv);
    let k = env.gpu.storage_with("k", &cache_of(&k_rows)).unwrap();
    let v = env.gpu.storage_with("v", &cache_of(&v_rows)).unwrap();
    let out = env.zeros("out", c.tokens * c.heads * c.head_dim);
    let scratch = AttentionScratch::new(&env.gpu, &shape).unwrap();
    let step = env.gpu.step_buffer(c.pos0 as u32);
    let [split_pass, combine] = env.kernels.attention(&step, &q, &k, &v, &scratch, &out, &shape).unwrap();
    env.run(&[&split_pass, &combine]);

    let group = c.heads / c.kv_heads;
    let mut expected = vec![0.0f64; c.tokens * c.heads * c.head_dim];
    for t in 0..c.tokens {
        let pos = c.pos0 + t;
        let first = if c.window > 0 { (pos + 1).saturating_sub(c.window) } else { 0 };
        for h in 0..c.heads {
            let kvh = h / group;
            let qh = &qv[t * q_stride + h * c.head_dim..][..c.head_dim];
            let scores: Vec<f64> = (first..=pos)
                .map(|j| {
                    let kj = &k_rows[j].1[kvh * c.head_dim..][..c.head_dim];
                    qh.iter().zip(kj).map(|(a, b)| *a as f64 * b).sum::<f64>() * scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..c.head_dim {
                let acc: f64 = (first..=pos).zip(&weights).map(|(j, w)| w * v_rows[j].1[kvh * c.head_dim + d]).sum();
                expected[(t * c.heads + h) * c.head_dim + d] = acc / total;
            }
        }
    }
    let n = expected.len();
    // Outputs are convex combinations of values in [-1, 1]; f32 softmax and accumulation.
    assert_close(c.name, &env.read_f32(&out, n).await, &expected, &vec![1.0; n], 2e-5, 0.0);
}

pub async fn attention_decode_single_key(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 1, hd 96, group 1",
            heads: 4,
            kv_heads: 4,
            head_dim: 96,
            tokens: 1,
            pos0: 0,
            window: 0,
            splits: 4,
            ring: false,
            kv: KvFormat::F16,
        },
        1,
    )
    .await;
}

pub async fn attention_decode_long_context_split(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 4096, hd 128, group 3, 16 splits",
            heads: 6,
            kv_heads: 2,
            head_dim: 128,
            tokens: 1,
            pos0: 4095,
            window: 0,
            splits: 16,
            ring: false,
            kv: KvFormat::F16,
        },
        2,
    )
    .await;
}

pub async fn attention_decode_one_split_long_context(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 4096, hd 96, group 4, 1 split",
            heads: 4,
            kv_heads: 1,
            head_dim: 96,
            tokens: 1,
            pos0: 4095,
            window: 0,
            splits: 1,
            ring: false,
            kv: KvFormat::F16,
        },
        3,
    )
    .await;
}

pub async fn attention_decode_sliding_window(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 3000, window 2047, hd 96",
            heads: 4,
            kv_heads: 4,
            head_dim: 96,
            tokens: 1,
            pos0: 2999,
            window: 2047,
            splits: 12,
            ring: false,
            kv: KvFormat::F16,
        },
        4,
    )
    .await;
}

pub async fn attention_decode_sliding_window_ring(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 3000, window 2047, ring of 2048 slots",
            heads: 4,
            kv_heads: 2,
            head_dim: 96,
            tokens: 1,
            pos0: 2999,
            window: 2047,
            splits: 12,
            ring: true,
            kv: KvFormat::F16,
        },
        7,
    )
    .await;
}

pub async fn attention_prefill_from_empty_cache(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 37, hd 96, group 4",
            heads: 8,
            kv_heads: 2,
            head_dim: 96,
            tokens: 37,
            pos0: 0,
            window: 0,
            splits: 1,
            ring: false,
            kv: KvFormat::F16,
        },
        5,
    )
    .await;
}

pub async fn attention_prefill_after_a_prefix_with_window(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 37 after 100, window 16, hd 128, group 3",
            heads: 3,
            kv_heads: 1,
            head_dim: 128,
            tokens: 37,
            pos0: 100,
            window: 16,
            splits: 2,
            ring: false,
            kv: KvFormat::F16,
        },
        6,
    )
    .await;
}

pub async fn attention_prefill_with_window_in_a_ring(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 37 after 100, window 16, ring of 53 slots",
            heads: 3,
            kv_heads: 1,
            head_dim: 128,
            tokens: 37,
            pos0: 100,
            window: 16,
            splits: 2,
            ring: true,
            kv: KvFormat::F16,
        },
        8,
    )
    .await;
}

pub async fn attention_decode_long_context_q8_cache(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 4096, hd 96, group 4, 16 splits, q8 cache",
            heads: 8,
            kv_heads: 2,
            head_dim: 96,
            tokens: 1,
            pos0: 4095,
            window: 0,
            splits: 16,
            ring: false,
            kv: KvFormat::Q8,
        },
        9,
    )
    .await;
}

pub async fn attention_prefill_with_window_in_a_q8_ring(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 37 after 100, window 16, ring of 53 slots, q8 cache",
            heads: 3,
            kv_heads: 1,
            head_dim: 128,
            tokens: 37,
            pos0: 100,
            window: 16,
            splits: 2,
            ring: true,
            kv: KvFormat::Q8,
        },
        10,
    )
    .await;
}

pub async fn attention_rejects_bad_head_grouping(env: &Env) {
    let shape = AttentionShape {
        tokens: 1,
        heads: 5,
        kv_heads: 2,
        head_dim: 64,
        q_stride: 5 * 64,
        slots: 8,
        window: 0,
        scale: 0.125,
        splits: 1,
        kv_format: KvFormat::F16,
    };
    let buf = env.zeros("buf", 4096);
    let scratch = AttentionScratch::new(&env.gpu, &shape).unwrap();
    let step = env.gpu.step_buffer(0);
    let err = env.kernels.attention(&step, &buf, &buf, &buf, &scratch, &buf, &shape).unwrap_err();
    assert!(err.to_string().contains("5 query heads cannot share 2 KV heads"), "{err}");
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
            env.run(&[&env.kernels.linear_with_bias(&w, b, &x, &y, tokens, out).unwrap()]);
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
        env.run(&[&env.kernels.embedding(&table, &ids_buffer, &out, ids.len()).unwrap()]);
        let expected: Vec<f64> =
            ids.iter().flat_map(|&id| tf[id as usize * hidden..][..hidden].iter().map(|&v| v as f64)).collect();
        let what = format!("embedding {} [{vocab}x{hidden}]", format.name());
        assert_close_rel(&what, &env.read_f32(&out, ids.len() * hidden).await, &expected, 0.0, 0.0);
    }
}

pub async fn encoder_attention_within_packed_sequences(env: &Env) {
    // Three sequences packed back to back, one of them the longest allowed.
    let (heads, d) = (12, 32);
    let lengths = [5usize, 1, 512];
    let tokens: usize = lengths.iter().sum();
    let width = heads * d;
    let qkv_v = Rng::new(13).vec(tokens * 3 * width, -2.0, 2.0);
    let mut segments = Vec::new();
    let mut start = 0;
    for &len in &lengths {
        for _ in 0..len {
            segments.extend([start as u32, (start + len) as u32]);
        }
        start += len;
    }
    let (qkv, segs, out) =
        (env.upload_f32("qkv", &qkv_v), env.upload_u32("segments", &segments), env.zeros("out", tokens * width));
    env.run(&[&env.kernels.encoder_attention(&qkv, &segs, &out, tokens, heads, d).unwrap()]);
    let scale = 1.0 / (d as f64).sqrt();
    let at = |t: usize, part: usize, h: usize, i: usize| qkv_v[t * 3 * width + part * width + h * d + i] as f64;
    let mut expected = vec![0.0; tokens * width];
    for t in 0..tokens {
        let (s, e) = (segments[2 * t] as usize, segments[2 * t + 1] as usize);
        for h in 0..heads {
            let scores: Vec<f64> =
                (s..e).map(|j| (0..d).map(|i| at(t, 0, h, i) * at(j, 1, h, i)).sum::<f64>() * scale).collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for i in 0..d {
                expected[t * width + h * d + i] =
                    (s..e).zip(&weights).map(|(j, w)| w * at(j, 2, h, i)).sum::<f64>() / sum;
            }
        }
    }
    assert_close_rel("encoder_attention", &env.read_f32(&out, tokens * width).await, &expected, 1e-6, 1e-4);
}

pub async fn attention_decode_long_context_f32_cache(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 2048, hd 64, group 3, 4 splits, f32 cache",
            heads: 6,
            kv_heads: 2,
            head_dim: 64,
            tokens: 1,
            pos0: 2047,
            window: 0,
            splits: 4,
            ring: false,
            kv: KvFormat::F32,
        },
        11,
    )
    .await;
}

/// head_dim 36 (a tiny Llama of hidden size 144), in an f32 ring.
pub async fn attention_prefill_with_window_in_an_f32_ring(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 21 after 50, hd 36, window 8, ring of 29 slots, f32 cache",
            heads: 4,
            kv_heads: 2,
            head_dim: 36,
            tokens: 21,
            pos0: 50,
            window: 8,
            splits: 1,
            ring: true,
            kv: KvFormat::F32,
        },
        12,
    )
    .await;
}
