// KV-cache reader for attention kernels, cache stored as f16 pairs packed in
// u32 (pack2x16float: no shader-f16 needed; kv_append_f16.wgsl writes it). A row
// of kv_dim values is kv_dim / 2 words. Self-contained: it declares the cache
// bindings (3 and 4) and reads nothing of its includer.

@group(0) @binding(3) var<storage, read> k_cache: array<u32>;  // [slots, kv_row_words(kv_dim)]
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;  // [slots, kv_row_words(kv_dim)]

// Values that share one scale (k_scales4); a multiple of 4.
const KV_SCALE_BLOCK: u32 = 4u;

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim / 2u;
}

// Dims d..d+3 (d a multiple of 4) of the four K rows starting at words
// `row`, unscaled: column c is key c.
fn k_quads4(row: vec4<u32>, d: u32, kv_dim: u32) -> mat4x4<f32> {
    let w = row + d / 2u;
    return mat4x4<f32>(
        vec4<f32>(unpack2x16float(k_cache[w.x]), unpack2x16float(k_cache[w.x + 1u])),
        vec4<f32>(unpack2x16float(k_cache[w.y]), unpack2x16float(k_cache[w.y + 1u])),
        vec4<f32>(unpack2x16float(k_cache[w.z]), unpack2x16float(k_cache[w.z + 1u])),
        vec4<f32>(unpack2x16float(k_cache[w.w]), unpack2x16float(k_cache[w.w + 1u])));
}

// The four keys' scales for the block holding dim d: none for f16.
fn k_scales4(row: vec4<u32>, d: u32, kv_dim: u32) -> vec4<f32> {
    return vec4<f32>(1.0);
}

// Values d..d+3 (d a multiple of 4) of the V row starting at word `row`.
fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let w = row + d / 2u;
    return vec4<f32>(unpack2x16float(v_cache[w]), unpack2x16float(v_cache[w + 1u]));
}
