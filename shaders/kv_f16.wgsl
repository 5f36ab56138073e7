// KV-cache reads for attention.wgsl, cache stored as f16 pairs packed in u32
// (pack2x16float: no shader-f16 needed). A row of kv_dim values is kv_dim / 2 words.

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim / 2u;
}

// Values d..d+3 (d a multiple of 4) of the K row starting at word `row`.
fn load_k4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let w = row + d / 2u;
    return vec4<f32>(unpack2x16float(k_cache[w]), unpack2x16float(k_cache[w + 1u]));
}

fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let w = row + d / 2u;
    return vec4<f32>(unpack2x16float(v_cache[w]), unpack2x16float(v_cache[w + 1u]));
}
