// KV-cache reader for attention kernels, 8-bit cache (kv_append_q8.wgsl
// writes it): a row of kv_dim values is kv_dim / 4 words of four snorm8
// values, then one f32 scale per block of 32 values (value = snorm * scale,
// scale = the block's largest magnitude). Self-contained: it declares the
// cache bindings (3 and 4) and reads nothing of its includer.

@group(0) @binding(3) var<storage, read> k_cache: array<u32>;  // [slots, kv_row_words(kv_dim)]
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;  // [slots, kv_row_words(kv_dim)]

// Values that share one scale (k_scales4): a head's dims must be whole blocks.
const KV_SCALE_BLOCK: u32 = 32u;

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim / 4u + kv_dim / KV_SCALE_BLOCK;
}

// Dims d..d+3 (d a multiple of 4) of the four K rows starting at words
// `row`, unscaled (snorm in [-1, 1]): column c is key c.
fn k_quads4(row: vec4<u32>, d: u32, kv_dim: u32) -> mat4x4<f32> {
    let w = row + d / 4u;
    return mat4x4<f32>(unpack4x8snorm(k_cache[w.x]), unpack4x8snorm(k_cache[w.y]),
                       unpack4x8snorm(k_cache[w.z]), unpack4x8snorm(k_cache[w.w]));
}

// The four keys' scales for the block holding dim d.
fn k_scales4(row: vec4<u32>, d: u32, kv_dim: u32) -> vec4<f32> {
    let s = row + kv_dim / 4u + d / KV_SCALE_BLOCK;
    return bitcast<vec4<f32>>(vec4<u32>(k_cache[s.x], k_cache[s.y], k_cache[s.z], k_cache[s.w]));
}

// Values d..d+3 (d a multiple of 4) of the V row starting at word `row`.
fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let scale = bitcast<f32>(v_cache[row + kv_dim / 4u + d / KV_SCALE_BLOCK]);
    return unpack4x8snorm(v_cache[row + d / 4u]) * scale;
}
