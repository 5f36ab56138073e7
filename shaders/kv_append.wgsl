// Appends T tokens of K (or V) to a KV cache stored as f16 pairs packed in
// u32 (pack2x16float: no shader-f16 needed). The source may be a slice of a
// fused QKV buffer: `src_offset` floats into rows of `src_stride`. Position p
// goes to slot p % slots: with a sliding window the cache is a ring.

struct Params {
    tokens: u32,      // T
    kv_dim: u32,      // kv_heads * head_dim (even)
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
@group(0) @binding(3) var<storage, read_write> cache: array<u32>;  // [slots, kv_dim / 2]

override WG: u32 = 64u;

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
    let s = t * p.src_stride + p.src_offset + 2u * j;
    cache[(pos % p.slots) * pairs + j] = pack2x16float(vec2<f32>(src[s], src[s + 1u]));
}
