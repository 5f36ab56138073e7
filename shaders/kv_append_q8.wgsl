// Appends T tokens of K (or V) to an 8-bit KV cache (the layout kv_q8.wgsl
// reads): each block of 32 values is stored as four-value snorm8 words,
// value / scale rounded to 1/127, with scale = the block's largest magnitude
// after the row's kv_dim / 4 words. Position p goes to slot p % slots.

struct Params {
    tokens: u32,      // T
    kv_dim: u32,      // kv_heads * head_dim (a multiple of 32)
    src_stride: u32,  // floats per token in src
    src_offset: u32,  // float offset of K (or V) within a token's row
    slots: u32,       // positions the cache buffer holds
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;                     // token t goes to position step.pos + t
@group(0) @binding(2) var<storage, read> src: array<f32>;          // [T, src_stride]
@group(0) @binding(3) var<storage, read_write> cache: array<u32>;  // [slots, kv_dim / 4 + kv_dim / 32]

override WG: u32 = 64u;
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
    let s = t * p.src_stride + p.src_offset + b * BLOCK;
    var scale = 0.0;
    for (var k = 0u; k < BLOCK; k++) {
        scale = max(scale, abs(src[s + k]));
    }
    let inv = select(0.0, 1.0 / scale, scale > 0.0);
    let row = ((step.pos + t) % p.slots) * (p.kv_dim / 4u + blocks);
    for (var w = 0u; w < BLOCK / 4u; w++) {
        let v = vec4<f32>(src[s + 4u * w], src[s + 4u * w + 1u], src[s + 4u * w + 2u], src[s + 4u * w + 3u]);
        cache[row + b * (BLOCK / 4u) + w] = pack4x8snorm(v * inv);
    }
    cache[row + p.kv_dim / 4u + b] = bitcast<u32>(scale);
}
