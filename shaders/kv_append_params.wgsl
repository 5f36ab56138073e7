// The Params and bindings of kv_append_{f16,q8,f32}.wgsl, concatenated in front
// of them. The source may be a slice of a fused QKV buffer: `src_offset`
// floats into rows of `src_stride`. Position p goes to slot p % slots: with a
// sliding window the cache is a ring.

struct Params {
    tokens: u32,      // T
    kv_dim: u32,      // kv_heads * head_dim (even; a multiple of 32 for q8)
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
@group(0) @binding(3) var<storage, read_write> cache: array<u32>;  // [slots, words per row of the format]
