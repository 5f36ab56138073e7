// Softmax in place, row by row: x = exp(x - max) / sum(exp(x - max)).
// Concatenated after reduce.wgsl.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;  // [rows, cols]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_workgroup(wid, nwg);
    if (row >= p.rows) {
        return;  // uniform per workgroup
    }
    let base = row * p.cols;

    var m = NEG_BIG;
    for (var i = lid; i < p.cols; i += WG) {
        m = max(m, x[base + i]);
    }
    let row_max = workgroup_max(m, lid);

    var sum = 0.0;
    for (var i = lid; i < p.cols; i += WG) {
        let e = exp(x[base + i] - row_max);
        x[base + i] = e;
        sum += e;
    }
    let inv = 1.0 / workgroup_sum(sum, lid);
    for (var i = lid; i < p.cols; i += WG) {
        x[base + i] *= inv;
    }
}
