// y = W x for one token (decode). Concatenated after a weights_{format}.wgsl
// file that provides weight_block(). Accumulates in f32.

struct Params {
    rows: u32,  // N, output features
    cols: u32,  // K, input features (multiple of 32)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;     // [K / 4]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [N]

override WG: u32 = 256;           // threads per workgroup
override ROWS_PER_WG: u32 = 4u;   // WG / ROWS_PER_WG threads (a power of two) share a row

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
            for (var i = 0u; i < 8u; i++) {
                acc += dot(w[i], x[j * 8u + i]);
            }
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
        y[row] = partial[lid];
    }
}
