// The residual add of a block folded into the next RMSNorm (one dispatch
// instead of add.wgsl then rms_norm.wgsl): x += h, then h = w * x *
// rsqrt(mean(x^2) + eps), row by row, in f32. Concatenated after reduce.wgsl.
// Every invocation reads back only the values it wrote itself, so h can be
// both the block's output and the norm's.

struct Params {
    rows: u32,  // T
    cols: u32,  // D
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;    // [T, D] residual stream
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [D]
@group(0) @binding(3) var<storage, read_write> h: array<f32>;    // [T, D] block output in, normed out

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
        let v = x[base + i] + h[base + i];
        x[base + i] = v;
        sum += v * v;
    }
    let scale = inverseSqrt(workgroup_sum(sum, lid) / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += WG) {
        h[base + i] = w[i] * (x[base + i] * scale);
    }
}
