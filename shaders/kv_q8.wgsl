// KV-cache reads for attention.wgsl, 8-bit cache (kv_append_q8.wgsl): a row
// of kv_dim values is kv_dim / 4 words of four snorm8 values, then one f32
// scale per block of 32 values (value = snorm * scale, scale = the block's
// largest magnitude).

const KV_BLOCK: u32 = 32u;

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim / 4u + kv_dim / KV_BLOCK;
}

// Scores of the group's queries (q_s) against K[first .. first + head_dim) of
// the four K rows starting at words `row` (first a multiple of KV_BLOCK):
// [query][key], each block's four scales read once.
fn k_dot4(row: vec4<u32>, first: u32, head_dim: u32, kv_dim: u32, group: u32) -> array<vec4<f32>, MAX_GROUP> {
    var total: array<vec4<f32>, MAX_GROUP>;
    let quads = head_dim / 4u;
    for (var b = 0u; b < head_dim / KV_BLOCK; b++) {
        let w = row + (first + b * KV_BLOCK) / 4u;
        let s = row + kv_dim / 4u + first / KV_BLOCK + b;
        let scales = bitcast<vec4<f32>>(vec4<u32>(k_cache[s.x], k_cache[s.y], k_cache[s.z], k_cache[s.w]));
        for (var i = 0u; i < KV_BLOCK / 4u; i++) {
            let k0 = unpack4x8snorm(k_cache[w.x + i]) * scales.x;
            let k1 = unpack4x8snorm(k_cache[w.y + i]) * scales.y;
            let k2 = unpack4x8snorm(k_cache[w.z + i]) * scales.z;
            let k3 = unpack4x8snorm(k_cache[w.w + i]) * scales.w;
            for (var g = 0u; g < group; g++) {
                let qi = q_s[g * quads + b * (KV_BLOCK / 4u) + i];
                total[g] += vec4<f32>(dot(qi, k0), dot(qi, k1), dot(qi, k2), dot(qi, k3));
            }
        }
    }
    return total;
}

// Values d..d+3 (d a multiple of 4) of the V row starting at word `row`.
fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let scale = bitcast<f32>(v_cache[row + kv_dim / 4u + d / KV_BLOCK]);
    return unpack4x8snorm(v_cache[row + d / 4u]) * scale;
}
