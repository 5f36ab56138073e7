// Appends T tokens of K and V (workgroup z) to KV caches stored as f16 pairs
// packed in u32 (pack2x16float: no shader-f16 needed): rows of kv_dim / 2 words.
// Concatenated after kv_append_params.wgsl.

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let pairs = p.kv_dim / 2u;
    let i = flat_workgroup(wid, nwg) * WG + lid;
    let t = i / pairs;
    let pos = step.pos + t;
    if (t >= p.tokens) {
        return;
    }
    let j = i % pairs;
    let s = t * p.src_stride + src_start(wid.z) + 2u * j;
    store(wid.z, (pos % p.slots) * pairs + j, pack2x16float(vec2<f32>(src[s], src[s + 1u])));
}
