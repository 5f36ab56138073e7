// Appends T tokens of K and V (workgroup z) to KV caches in f32 (kv_f32.wgsl reads
// it): exact, for parity checks and where memory is no concern. Rows of
// kv_dim words. Concatenated after kv_append_params.wgsl.

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    let t = i / p.kv_dim;
    if (t >= p.tokens) {
        return;
    }
    let j = i % p.kv_dim;
    store(wid.z, ((step.pos + t) % p.slots) * p.kv_dim + j, bitcast<u32>(src[t * p.src_stride + src_start(wid.z) + j]));
}
