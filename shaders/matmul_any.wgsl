// Y = X W^T + b for matrices of any shape (K not a multiple of 32: tiny or
// odd-sized models), f32 or f16 weights only. Concatenated after a
// weights_{f32,f16}.wgsl file that provides weight_at(), a bias_*.wgsl and
// matrix.wgsl (Params). One invocation per output value: simple, not fast;
// real models' matrices take the blocked kernels.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;           // [T, K]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [T, y_stride]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= p.tokens * p.rows) {
        return;
    }
    let t = i / p.rows;
    let row = i % p.rows;
    var acc = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        acc += weight_at(row * p.cols + c) * x[t * p.cols + c];
    }
    y[t * p.y_stride + p.y_offset + row] = acc + bias(p.bias_offset + row);
}
