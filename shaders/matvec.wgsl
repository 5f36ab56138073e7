// y = W x for one token (decode). Concatenated after a weights_{format}.wgsl
// file that provides weight_block(). Accumulates in f32.

struct Params {
    rows: u32,      // N, output features
    cols: u32,      // K, input features (multiple of 32)
    y_offset: u32,  // where output feature 0 goes in y (a slice of a fused buffer)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;     // [K / 4]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [y_offset + N]

override WG: u32 = 256;           // threads per workgroup
override ROWS_PER_WG: u32 = 32u;    // WG / ROWS_PER_WG threads (a power of two) share a row

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lanes = WG / ROWS_PER_WG;
    let row = flat_workgroup(wid, nwg) * ROWS_PER_WG + lid / lanes;
    let lane = lid % lanes;
    let blocks = p.cols / 32u;

    var acc = 0.0;
    if (row < p.rows) {
        for (var j = lane; j < blocks; j += lanes) {
            let w = weight_block(row * blocks + j);
            let xj = j * 8u;
            acc += dot(w[0], x[xj]) + dot(w[1], x[xj + 1u]) + dot(w[2], x[xj + 2u]) + dot(w[3], x[xj + 3u])
                 + dot(w[4], x[xj + 4u]) + dot(w[5], x[xj + 5u]) + dot(w[6], x[xj + 6u]) + dot(w[7], x[xj + 7u]);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = lanes / 2u; stride > 0u; stride >>= 1u) {
        if (lane < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.rows) {
        y[p.y_offset + row] = partial[lid];
    }
}
