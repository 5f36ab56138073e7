//! Norms, activations, residual add, softmax and argmax against scalar f64 references.

mod common;

use common::{assert_close, assert_close_rel, env, Rng};
use phi_web::gpu::GeluKind;

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn rms_norm_rows() {
    let env = env();
    for &(rows, cols) in &[(1usize, 3072usize), (37, 576), (3, 5)] {
        let mut rng = Rng::new(cols as u64);
        let (xv, wv) = (rng.vec(rows * cols, -3.0, 3.0), rng.vec(cols, 0.5, 1.5));
        let (x, w, y) = (
            env.upload_f32("x", &xv),
            env.upload_f32("w", &wv),
            env.zeros("y", rows * cols),
        );
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
            &env.read_f32(&y, rows * cols),
            &expected,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn layer_norm_rows() {
    let env = env();
    for &(rows, cols) in &[(1usize, 4096usize), (37, 384), (2, 7)] {
        let mut rng = Rng::new(cols as u64 + 1);
        // An offset mean exercises the two-pass variance.
        let xv: Vec<f32> = rng.vec(rows * cols, -1.0, 1.0).iter().map(|v| v + 20.0).collect();
        let (wv, bv) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -0.5, 0.5));
        let (x, w, b, y) = (
            env.upload_f32("x", &xv),
            env.upload_f32("w", &wv),
            env.upload_f32("b", &bv),
            env.zeros("y", rows * cols),
        );
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
            &env.read_f32(&y, rows * cols),
            &expected,
            2e-5,
            1e-5,
        );
    }
}

#[test]
fn silu_mul_over_fused_gate_up() {
    let env = env();
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
    assert_close_rel("silu_mul", &env.read_f32(&out, tokens * inter), &expected, 1e-6, 1e-5);
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

#[test]
fn gelu_erf_and_tanh() {
    let env = env();
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
        assert_close(
            &format!("gelu {kind:?}"),
            &env.read_f32(&x, n),
            &expected,
            &scale,
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn add_in_place() {
    let env = env();
    let n = 1027;
    let mut rng = Rng::new(4);
    let (av, bv) = (rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0));
    let (a, b) = (env.upload_f32("a", &av), env.upload_f32("b", &bv));
    env.run(&[&env.kernels.add(&a, &b, n).unwrap()]);
    let expected: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| (x + y) as f64).collect();
    assert_close_rel("add", &env.read_f32(&a, n), &expected, 0.0, 0.0);
}

#[test]
fn softmax_rows() {
    let env = env();
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
    assert_close_rel("softmax", &env.read_f32(&x, rows * cols), &expected, 1e-9, 2e-5);
}

#[test]
fn argmax_rows_first_maximum_wins() {
    let env = env();
    for &cols in &[7usize, 32064, 200064] {
        let rows = 3;
        let mut xv = Rng::new(cols as u64).vec(rows * cols, -10.0, 10.0);
        // Row 0: a tie between two positions; the first must win.
        xv[cols - 1] = 50.0;
        xv[cols / 2] = 50.0;
        // Row 1: every value very negative (below the kernel's sentinel).
        xv[cols..2 * cols].iter_mut().for_each(|v| *v = -3.0e38);
        xv[cols + cols / 3] = -1.0e38;
        let (x, out) = (
            env.upload_f32("x", &xv),
            env.gpu.storage("out", 4 * rows as u64).unwrap(),
        );
        env.run(&[&env.kernels.argmax(&x, &out, rows, cols).unwrap()]);
        let expected: Vec<u32> = (0..rows)
            .map(|r| {
                let row = &xv[r * cols..][..cols];
                (0..cols).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32
            })
            .collect();
        assert_eq!(env.read_u32(&out, rows), expected, "argmax over {cols} columns");
    }
}
