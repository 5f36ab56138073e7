// y = (x - mean) * rsqrt(var + eps) * w + b, row by row, in f32 (biased
// variance, as torch.nn.LayerNorm). Two passes over the row for accuracy.
// Concatenated after reduce.wgsl.

struct Params {
    rows: u32,  // T
    cols: u32,  // D
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [T, D]
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [D]
@group(0) @binding(3) var<storage, read> b: array<f32>;          // [D]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // [T, D]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_workgroup(wid, nwg);
    if (row >= p.rows) {
        return;  // uniform per workgroup
    }
    let base = row * p.cols;
    var sum = 0.0;
    for (var i = lid; i < p.cols; i += WG) {
        sum += x[base + i];
    }
    let mean = workgroup_sum(sum, lid) / f32(p.cols);
    var sq = 0.0;
    for (var i = lid; i < p.cols; i += WG) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(sq, lid) / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += WG) {
        y[base + i] = (x[base + i] - mean) * rstd * w[i] + b[i];
    }
}
