// KV-cache reader for attention kernels, cache stored in f32
// (kv_append_f32.wgsl writes it): a row of kv_dim values is kv_dim words.
// Self-contained: it declares the cache bindings (3 and 4) and reads nothing
// of its includer.

@group(0) @binding(3) var<storage, read> k_cache: array<u32>;  // [slots, kv_dim]
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;  // [slots, kv_dim]

// Values that share one scale (k_scales4); a multiple of 4.
const KV_SCALE_BLOCK: u32 = 4u;

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim;
}

fn k_word4(w: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(k_cache[w], k_cache[w + 1u], k_cache[w + 2u], k_cache[w + 3u]));
}

// Dims d..d+3 (d a multiple of 4) of the four K rows starting at words
// `row`, unscaled: column c is key c.
fn k_quads4(row: vec4<u32>, d: u32, kv_dim: u32) -> mat4x4<f32> {
    let w = row + d;
    return mat4x4<f32>(k_word4(w.x), k_word4(w.y), k_word4(w.z), k_word4(w.w));
}

// The four keys' scales for the block holding dim d: none for f32.
fn k_scales4(row: vec4<u32>, d: u32, kv_dim: u32) -> vec4<f32> {
    return vec4<f32>(1.0);
}

// Values d..d+3 (d a multiple of 4) of the V row starting at word `row`.
fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let w = row + d;
    return bitcast<vec4<f32>>(vec4<u32>(v_cache[w], v_cache[w + 1u], v_cache[w + 2u], v_cache[w + 3u]));
}
