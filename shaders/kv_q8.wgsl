// KV-cache reads for attention.wgsl, 8-bit cache (kv_append_q8.wgsl): a row
// of kv_dim values is kv_dim / 4 words of four snorm8 values, then one f32
// scale per block of 32 values (value = snorm * scale, scale = the block's
// largest magnitude).

const KV_BLOCK: u32 = 32u;

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim / 4u + kv_dim / KV_BLOCK;
}

// Values d..d+3 (d a multiple of 4) of the K row starting at word `row`.
fn load_k4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let scale = bitcast<f32>(k_cache[row + kv_dim / 4u + d / KV_BLOCK]);
    return unpack4x8snorm(k_cache[row + d / 4u]) * scale;
}

fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let scale = bitcast<f32>(v_cache[row + kv_dim / 4u + d / KV_BLOCK]);
    return unpack4x8snorm(v_cache[row + d / 4u]) * scale;
}
