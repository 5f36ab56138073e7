// y = w * x * rsqrt(mean(x^2) + eps), row by row, in f32 (HF Phi3RMSNorm).
// With RESIDUAL, a block's residual add is folded in first (one dispatch
// instead of add.wgsl then this): x += y, then y = norm(x); y holds the
// block's output on entry and the normed rows on exit. Every invocation reads
// back only the values it wrote itself. Concatenated after reduce.wgsl.

struct Params {
    rows: u32,  // T
    cols: u32,  // D
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;    // [T, D] (RESIDUAL: the residual stream, updated)
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [D]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // [T, D] (RESIDUAL: the block output in)

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs
override RESIDUAL: bool = false;

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
        var v = x[base + i];
        if (RESIDUAL) {
            v += y[base + i];
            x[base + i] = v;
        }
        sum += v * v;
    }
    let scale = inverseSqrt(workgroup_sum(sum, lid) / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += WG) {
        y[base + i] = w[i] * (x[base + i] * scale);
    }
}
