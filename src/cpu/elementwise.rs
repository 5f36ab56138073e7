//! Norms, activations and the argmax on the CPU, written as their WGSL
//! kernels compute them (same clamps, same order of operations per value).

use crate::gpu::GeluKind;

/// y = w · x / sqrt(mean(x²) + eps), row by row (rms_norm.wgsl).
pub fn rms_norm(x: &[f32], w: &[f32], y: &mut [f32], rows: usize, cols: usize, eps: f32) {
    for r in 0..rows {
        let (x, y) = (&x[r * cols..(r + 1) * cols], &mut y[r * cols..(r + 1) * cols]);
        let sum: f32 = x.iter().map(|v| v * v).sum();
        let scale = 1.0 / (sum / cols as f32 + eps).sqrt();
        for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
            *y = w * (x * scale);
        }
    }
}

/// x += h, then h = rms_norm(x) (rms_norm.wgsl with RESIDUAL).
pub fn add_rms_norm(x: &mut [f32], h: &mut [f32], w: &[f32], rows: usize, cols: usize, eps: f32) {
    x[..rows * cols].iter_mut().zip(&h[..rows * cols]).for_each(|(x, h)| *x += h);
    rms_norm(x, w, h, rows, cols, eps);
}

/// y = (x - mean) / sqrt(var + eps) · w + b, row by row (layer_norm.wgsl).
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], rows: usize, cols: usize, eps: f32) {
    for r in 0..rows {
        let (x, y) = (&x[r * cols..(r + 1) * cols], &mut y[r * cols..(r + 1) * cols]);
        // Sums in f64: a sequential f32 sum of thousands of values with a
        // large mean drifts (the GPU kernel sums as a tree instead).
        let mean = (x.iter().map(|&v| v as f64).sum::<f64>() / cols as f64) as f32;
        let var = x.iter().map(|&v| ((v - mean) as f64).powi(2)).sum::<f64>() / cols as f64;
        let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
        for (i, y) in y.iter_mut().enumerate() {
            *y = (x[i] - mean) * rstd * w[i] + b[i];
        }
    }
}

/// out [T, I] = silu(gate) · up of gate_up [T, 2I] (silu_mul.wgsl).
pub fn silu_mul(gate_up: &[f32], out: &mut [f32], tokens: usize, i: usize) {
    for t in 0..tokens {
        let (gate, up) = gate_up[t * 2 * i..(t + 1) * 2 * i].split_at(i);
        for ((o, g), u) in out[t * i..(t + 1) * i].iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).min(80.0).exp()) * u;
        }
    }
}

/// Phi-3-small's gegelu: quick_gelu(min(a, limit)) · (clamp(b, ±limit) + 1) (gegelu.wgsl).
pub fn gegelu(gate_up: &[f32], out: &mut [f32], tokens: usize, i: usize, limit: Option<f32>) {
    let limit = limit.unwrap_or(f32::MAX);
    for t in 0..tokens {
        let (a, b) = gate_up[t * 2 * i..(t + 1) * 2 * i].split_at(i);
        for ((o, a), b) in out[t * i..(t + 1) * i].iter_mut().zip(a).zip(b) {
            let a = a.min(limit);
            let b = b.clamp(-limit, limit);
            *o = a / (1.0 + (-1.702 * a).min(80.0).exp()) * (b + 1.0);
        }
    }
}

/// GELU in place (gelu.wgsl: erf by Abramowitz–Stegun 7.1.26, tanh, or quick).
#[allow(clippy::excessive_precision)] // the constants as gelu.wgsl writes them
pub fn gelu(x: &mut [f32], kind: GeluKind) {
    for v in x.iter_mut() {
        let x = *v;
        *v = match kind {
            GeluKind::Erf => {
                let z = x * std::f32::consts::FRAC_1_SQRT_2;
                let a = z.abs();
                let t = 1.0 / (1.0 + 0.3275911 * a);
                let poly =
                    t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
                let erf = (1.0 - poly * (-a * a).exp()).copysign(z);
                0.5 * x * (1.0 + if z == 0.0 { 0.0 } else { erf })
            }
            GeluKind::Tanh => {
                let u = (0.7978845608028654 * (x + 0.044715 * x * x * x)).clamp(-10.0, 10.0);
                0.5 * x * (1.0 + u.tanh())
            }
            GeluKind::Quick => x / (1.0 + (-1.702 * x).exp()),
        };
    }
}

/// The index of the largest value (the first on ties; 0 for an empty row).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
