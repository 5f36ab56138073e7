// Index of the largest value of each row (the first one on ties, as torch):
// greedy decoding picks its token on the GPU. Concatenated after reduce.wgsl.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [rows, cols]
@group(0) @binding(2) var<storage, read_write> out: array<u32>;  // [rows]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_workgroup(wid, nwg);
    if (row >= p.rows) {
        return;  // uniform per workgroup
    }
    let base = row * p.cols;
    var v = NEG_BIG;
    var idx = NO_INDEX;
    for (var i = lid; i < p.cols; i += WG) {
        let xi = x[base + i];
        if (idx == NO_INDEX || xi > v) {  // ascending: keeps this thread's first maximum
            v = xi;
            idx = i;
        }
    }
    let best = workgroup_argmax(v, idx, lid);
    if (lid == 0u) {
        out[row] = select(0u, best, best != NO_INDEX);
    }
}
