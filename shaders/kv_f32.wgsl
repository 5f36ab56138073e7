// KV-cache reads for attention.wgsl, cache stored in f32 (kv_append_f32.wgsl):
// a row of kv_dim values is kv_dim words.

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim;
}

fn k_load4(w: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(k_cache[w], k_cache[w + 1u], k_cache[w + 2u], k_cache[w + 3u]));
}

// Scores of the group's queries (q_s) against K[first .. first + head_dim) of
// the four K rows starting at words `row`: [query][key]. Each K value is read
// once for every query of the group.
fn k_dot4(row: vec4<u32>, first: u32, head_dim: u32, kv_dim: u32, group: u32) -> array<vec4<f32>, MAX_GROUP> {
    var total: array<vec4<f32>, MAX_GROUP>;
    let w = row + first;
    let quads = head_dim / 4u;
    for (var i = 0u; i < quads; i++) {
        let o = 4u * i;
        let k0 = k_load4(w.x + o);
        let k1 = k_load4(w.y + o);
        let k2 = k_load4(w.z + o);
        let k3 = k_load4(w.w + o);
        for (var g = 0u; g < group; g++) {
            let qi = q_s[g * quads + i];
            total[g] += vec4<f32>(dot(qi, k0), dot(qi, k1), dot(qi, k2), dot(qi, k3));
        }
    }
    return total;
}

// Values d..d+3 (d a multiple of 4) of the V row starting at word `row`.
fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let w = row + d;
    return bitcast<vec4<f32>>(vec4<u32>(v_cache[w], v_cache[w + 1u], v_cache[w + 2u], v_cache[w + 3u]));
}
