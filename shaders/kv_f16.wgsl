// KV-cache reads for attention.wgsl, cache stored as f16 pairs packed in u32
// (pack2x16float: no shader-f16 needed). A row of kv_dim values is kv_dim / 2 words.

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim / 2u;
}

// Scores of the group's queries (q_s) against K[first .. first + head_dim) of
// the four K rows starting at words `row`: [query][key]. Each K value is read
// once for every query of the group.
fn k_dot4(row: vec4<u32>, first: u32, head_dim: u32, kv_dim: u32, group: u32) -> array<vec4<f32>, MAX_GROUP> {
    var total: array<vec4<f32>, MAX_GROUP>;
    let w = row + first / 2u;
    let quads = head_dim / 4u;
    for (var i = 0u; i < quads; i++) {
        let o = 2u * i;
        let k0 = vec4<f32>(unpack2x16float(k_cache[w.x + o]), unpack2x16float(k_cache[w.x + o + 1u]));
        let k1 = vec4<f32>(unpack2x16float(k_cache[w.y + o]), unpack2x16float(k_cache[w.y + o + 1u]));
        let k2 = vec4<f32>(unpack2x16float(k_cache[w.z + o]), unpack2x16float(k_cache[w.z + o + 1u]));
        let k3 = vec4<f32>(unpack2x16float(k_cache[w.w + o]), unpack2x16float(k_cache[w.w + o + 1u]));
        for (var g = 0u; g < group; g++) {
            let qi = q_s[g * quads + i];
            total[g] += vec4<f32>(dot(qi, k0), dot(qi, k1), dot(qi, k2), dot(qi, k3));
        }
    }
    return total;
}

// Values d..d+3 (d a multiple of 4) of the V row starting at word `row`.
fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let w = row + d / 2u;
    return vec4<f32>(unpack2x16float(v_cache[w]), unpack2x16float(v_cache[w + 1u]));
}
