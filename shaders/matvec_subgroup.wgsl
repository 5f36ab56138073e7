// y = W x for one token (decode), reducing with subgroup operations instead
// of workgroup memory. Chosen at run time when the device has subgroups
// (natively; wgpu's browser backend does not expose them yet). Concatenated
// after a weights_{format}.wgsl file that provides weight_block().
//
// WGSL promises nothing about which invocations form a subgroup, nor that
// all subgroups are full, so rows are handed out per subgroup: each subgroup
// takes a slot from a workgroup counter and walks the workgroup's rows
// slot, slot + subgroups, ...; its lanes split the row's blocks.

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
override ROWS_PER_WG: u32 = 32u;  // rows per workgroup

var<workgroup> subgroups: atomic<u32>;  // zero-initialised by the API

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) lanes: u32) {
    var slot = 0u;
    if (lane == 0u) {
        slot = atomicAdd(&subgroups, 1u);
    }
    slot = subgroupBroadcast(slot, 0u);
    let count = workgroupUniformLoad(&subgroups);

    let row0 = flat_workgroup(wid, nwg) * ROWS_PER_WG;
    let blocks = p.cols / 32u;
    for (var r = slot; r < ROWS_PER_WG; r += count) {
        let row = row0 + r;
        var acc = 0.0;
        if (row < p.rows) {
            for (var j = lane; j < blocks; j += lanes) {
                let w = weight_block(row * blocks + j);
                let xj = j * 8u;
                acc += dot(w[0], x[xj]) + dot(w[1], x[xj + 1u]) + dot(w[2], x[xj + 2u]) + dot(w[3], x[xj + 3u])
                     + dot(w[4], x[xj + 4u]) + dot(w[5], x[xj + 5u]) + dot(w[6], x[xj + 6u]) + dot(w[7], x[xj + 7u]);
            }
        }
        let total = subgroupAdd(acc);
        if (lane == 0u && row < p.rows) {
            y[p.y_offset + row] = total;
        }
    }
}
