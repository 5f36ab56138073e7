// y = W x for one token (decode), reducing with subgroup operations instead
// of workgroup memory. Chosen at run time when the device has subgroups
// (natively, and in browsers through the vendored wgpu: vendor/wgpu). Concatenated
// after a weights_{format}.wgsl file that provides weight_block(), a bias_*.wgsl,
// an input reader (x_block(): input_f32.wgsl or input_silu_mul.wgsl) and
// matrix.wgsl (Params).
//
// WGSL promises nothing about which invocations form a subgroup, nor that
// all subgroups are full, so row groups are handed out per subgroup: each
// subgroup takes a slot from a workgroup counter and walks the workgroup's
// groups of ROWS_PER_THREAD rows slot, slot + subgroups, ...; its lanes split
// the blocks, each reading a block of x once for all the group's rows.
// Browsers need `enable subgroups;`, which src/gpu/kernels/mod.rs puts first
// on wasm32 (naga has not implemented the directive and needs none).

@group(0) @binding(0) var<uniform> p: Params;
// binding 1, x: declared by the input reader (input_f32.wgsl or input_silu_mul.wgsl)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [y_offset + N]

override WG: u32;  // workgroup size: Tuning::matvec_wg (src/gpu/tuning.rs)
override ROWS_PER_WG: u32 = 64u;    // rows per workgroup (a multiple of ROWS_PER_THREAD)
// ROWS_PER_THREAD: a tuning constant put in front (src/gpu/tuning.rs)

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
    // The pass loop's bounds are workgroup-uniform (`count` is), so that
    // subgroupAdd below runs in uniform control flow as browsers' WGSL
    // compilers check; in the last pass, subgroups past the rows read rows
    // they do not store.
    for (var pass_rows = 0u; pass_rows < ROWS_PER_WG; pass_rows += count * ROWS_PER_THREAD) {
        let g = pass_rows + slot * ROWS_PER_THREAD;
        let first = row0 + g;
        var acc: array<f32, ROWS_PER_THREAD>;
        for (var j = lane; j < blocks; j += lanes) {
            let xb = x_block(j);
            for (var r = 0u; r < ROWS_PER_THREAD; r++) {
                // Rows past the end repeat the last row; they are not stored.
                let row = min(first + r, p.rows - 1u);
                let w = weight_block(row * blocks + j);
                acc[r] += dot(w[0], xb[0]) + dot(w[1], xb[1]) + dot(w[2], xb[2]) + dot(w[3], xb[3])
                        + dot(w[4], xb[4]) + dot(w[5], xb[5]) + dot(w[6], xb[6]) + dot(w[7], xb[7]);
            }
        }
        for (var r = 0u; r < ROWS_PER_THREAD; r++) {
            let total = subgroupAdd(acc[r]);
            if (lane == 0u && g < ROWS_PER_WG && first + r < p.rows) {
                y[p.y_offset + first + r] = total + bias(p.bias_offset + first + r);
            }
        }
    }
}
