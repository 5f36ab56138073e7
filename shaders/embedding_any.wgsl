// out[t] = row ids[t] of an f32 or f16 embedding table whose rows are not
// whole 32-column blocks (tiny or odd-sized models). Concatenated after a
// weights_{f32,f16}.wgsl file that provides weight_at() and
// embedding_params.wgsl (Params). One invocation per output value.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;         // [T]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;   // [T, cols]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    let t = i / p.cols;
    if (t >= p.tokens) {
        return;
    }
    let id = ids[t];
    if (id < p.first_row || id - p.first_row >= p.rows) {
        return;  // another chunk's row (the host validated the ids)
    }
    let c = i % p.cols;
    out[i] = weight_at((id - p.first_row) * p.cols + c);
}
