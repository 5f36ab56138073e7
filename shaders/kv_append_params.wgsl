// The Params and bindings of kv_append_{f16,q8,f32}.wgsl, concatenated in front
// of them. One dispatch appends a layer's keys and values: workgroups with
// z = 0 write K, z = 1 write V. The source is a fused [Q | K | V] buffer: K
// `src_offset` floats into rows of `src_stride`, V `kv_dim` floats after it.
// Position p goes to slot p % slots: with a sliding window the cache is a ring.

struct Params {
    tokens: u32,      // T
    kv_dim: u32,      // kv_heads * head_dim (even; a multiple of 32 for q8)
    src_stride: u32,  // floats per token in src
    src_offset: u32,  // float offset of K within a token's row (V follows it)
    slots: u32,       // positions the cache buffer holds
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;                     // token t goes to position step.pos + t
@group(0) @binding(2) var<storage, read> src: array<f32>;          // [T, src_stride]
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;  // [slots, words per row of the format]
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;  // [slots, words per row of the format]

// Where cache `which` (0: K, 1: V) takes its values from in a row of src.
fn src_start(which: u32) -> u32 {
    return p.src_offset + which * p.kv_dim;
}

// Word i of cache `which`.
fn store(which: u32, i: u32, word: u32) {
    if (which == 0u) {
        k_cache[i] = word;
    } else {
        v_cache[i] = word;
    }
}
