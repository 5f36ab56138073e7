// Appends T tokens of K and V (workgroup z) to 8-bit KV caches (the layout kv_q8.wgsl
// reads): each block of 32 values is stored as four-value snorm8 words,
// value / scale rounded to 1/127, with scale = the block's largest magnitude
// after the row's kv_dim / 4 words. Concatenated after kv_append_params.wgsl.

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs
const BLOCK: u32 = 32u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let blocks = p.kv_dim / BLOCK;
    let i = flat_workgroup(wid, nwg) * WG + lid;
    let t = i / blocks;
    if (t >= p.tokens) {
        return;
    }
    let b = i % blocks;
    let s = t * p.src_stride + src_start(wid.z) + b * BLOCK;
    var scale = 0.0;
    for (var k = 0u; k < BLOCK; k++) {
        scale = max(scale, abs(src[s + k]));
    }
    let inv = select(0.0, 1.0 / scale, scale > 0.0);
    let row = ((step.pos + t) % p.slots) * (p.kv_dim / 4u + blocks);
    for (var w = 0u; w < BLOCK / 4u; w++) {
        let v = vec4<f32>(src[s + 4u * w], src[s + 4u * w + 1u], src[s + 4u * w + 2u], src[s + 4u * w + 3u]);
        store(wid.z, row + b * (BLOCK / 4u) + w, pack4x8snorm(v * inv));
    }
    store(wid.z, row + p.kv_dim / 4u + b, bitcast<u32>(scale));
}
