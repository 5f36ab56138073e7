// KV-cache reads for attention.wgsl, cache stored as f16 pairs packed in u32
// (pack2x16float: no shader-f16 needed). A row of kv_dim values is kv_dim / 2 words.

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim / 2u;
}

// q_s · K[first .. first + head_dim) for the four K rows starting at words `row`.
fn k_dot4(row: vec4<u32>, first: u32, head_dim: u32, kv_dim: u32) -> vec4<f32> {
    var total = vec4<f32>(0.0);
    let w = row + first / 2u;
    for (var i = 0u; i < head_dim / 4u; i++) {
        let qi = q_s[i];
        let o = 2u * i;
        total += vec4<f32>(
            dot(qi, vec4<f32>(unpack2x16float(k_cache[w.x + o]), unpack2x16float(k_cache[w.x + o + 1u]))),
            dot(qi, vec4<f32>(unpack2x16float(k_cache[w.y + o]), unpack2x16float(k_cache[w.y + o + 1u]))),
            dot(qi, vec4<f32>(unpack2x16float(k_cache[w.z + o]), unpack2x16float(k_cache[w.z + o + 1u]))),
            dot(qi, vec4<f32>(unpack2x16float(k_cache[w.w + o]), unpack2x16float(k_cache[w.w + o + 1u]))),
        );
    }
    return total;
}

fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let w = row + d / 2u;
    return vec4<f32>(unpack2x16float(v_cache[w]), unpack2x16float(v_cache[w + 1u]));
}
