// x[t] = rows[t] for the tokens whose flag is set, in place: a vision
// model's image features over the token embeddings of its image positions
// (the rows of other tokens are left as the embedding lookup wrote them).

struct Params {
    tokens: u32,
    width: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> flags: array<u32>;        // [T]: 1 = an image row
@group(0) @binding(2) var<storage, read> rows: array<f32>;         // [T, width]
@group(0) @binding(3) var<storage, read_write> x: array<f32>;      // [T, width]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i < p.tokens * p.width && flags[i / p.width] != 0u) {
        x[i] = rows[i];
    }
}
