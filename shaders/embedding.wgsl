// out[t] = row ids[t] of the embedding table, dequantized. Concatenated after
// a weights_{format}.wgsl file that provides weight_block() and
// embedding_params.wgsl (Params). One invocation per (token, 32-column
// block). A table stored as row chunks (a 200k-row vocabulary exceeds one
// storage binding) runs once per chunk: each run writes only the tokens
// whose ids fall in its rows.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;            // [T]
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>; // [T, cols / 4]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs


@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let blocks = p.cols / 32u;
    let i = flat_workgroup(wid, nwg) * WG + lid;
    let t = i / blocks;
    let j = i % blocks;
    if (t >= p.tokens) {
        return;
    }
    let id = ids[t];
    if (id < p.first_row || id - p.first_row >= p.rows) {
        return;  // another chunk's row (the host validated the ids)
    }
    let w = weight_block((id - p.first_row) * blocks + j);
    for (var k = 0u; k < 8u; k++) {
        out[t * blocks * 8u + j * 8u + k] = w[k];
    }
}
