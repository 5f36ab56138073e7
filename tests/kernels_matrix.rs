//! matvec, matmul and embedding for every weight format against a scalar
//! reference that uses the CPU dequantizer on the same quantized bytes.

mod common;

use common::{assert_close, env, every_variant, Env, Rng};
use phi_web::gpu::Matrix;
use phi_web::quant::{self, WeightFormat};

/// Random weights [rows, cols] quantized to `format`: the GPU matrix and the
/// dequantized values the reference uses.
fn weights(env: &Env, format: WeightFormat, rows: usize, cols: usize, seed: u64) -> (Matrix, Vec<f32>) {
    let values = Rng::new(seed).vec(rows * cols, -1.0, 1.0);
    let gguf = quant::quantize(format, &values).unwrap();
    let dequantized = quant::dequantize(format, &gguf).unwrap();
    let layout = quant::to_gpu_layout(format, &gguf).unwrap();
    (
        Matrix::upload(&env.gpu, "w", format, rows, cols, &layout).unwrap(),
        dequantized,
    )
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

#[test]
fn matvec_every_format_and_variant() {
    for env in every_variant() {
        for (f, format) in WeightFormat::ALL.into_iter().enumerate() {
            for (s, &(rows, cols)) in SHAPES.iter().enumerate() {
                let (w, wf) = weights(env, format, rows, cols, 100 + f as u64 * 10 + s as u64);
                let xv = Rng::new(7 + s as u64).vec(cols, -1.0, 1.0);
                let x = env.upload_f32("x", &xv);
                let y = env.zeros("y", rows);
                env.run(&[&env.kernels.matvec(&w, &x, &y).unwrap()]);
                let (expected, scale) = reference(&wf, &xv, rows, cols, 1);
                let what = format!("matvec {} {} [{rows}x{cols}]", env.kernels.variant(), format.name());
                assert_close(&what, &env.read_f32(&y, rows), &expected, &scale, 1e-6, 2e-6);
            }
        }
    }
}

#[test]
fn matmul_every_format() {
    let env = env();
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
                assert_close(&what, &env.read_f32(&y, tokens * rows), &expected, &scale, 1e-6, 2e-6);
            }
        }
    }
}

#[test]
fn embedding_every_format() {
    let env = env();
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
        let expected: Vec<f64> = ids
            .iter()
            .flat_map(|&id| tf[id as usize * hidden..][..hidden].iter().map(|&v| v as f64))
            .collect();
        let scale: Vec<f64> = expected.iter().map(|v| v.abs()).collect();
        // Dequantization is one multiply (and one add for q4_1): equal up to FMA contraction.
        assert_close(
            &format!("embedding {}", format.name()),
            &env.read_f32(&out, ids.len() * hidden),
            &expected,
            &scale,
            1e-7,
            1.2e-7,
        );
    }
}

#[test]
fn wrong_shapes_are_errors_not_out_of_bounds_reads() {
    let env = env();
    let (w, _) = weights(env, WeightFormat::Q4_0, 64, 64, 1);
    let short = env.zeros("short", 32);
    let y = env.zeros("y", 64);
    let err = env.kernels.matvec(&w, &short, &y).unwrap_err();
    assert!(
        err.to_string().contains("matvec") && err.to_string().contains("x holds 128 bytes"),
        "{err}"
    );
    let err = Matrix::from_f32(&env.gpu, "odd", WeightFormat::Q4_0, 2, 48, &[0.0; 96]).unwrap_err();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
    let err = env.gpu.storage("huge", env.gpu.limits.max_buffer_size + 4).unwrap_err();
    assert!(err.to_string().contains("maxBufferSize"), "{err}");
}
