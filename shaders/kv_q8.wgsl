// KV-cache reads for attention.wgsl, 8-bit cache (kv_append_q8.wgsl): a row
// of kv_dim values is kv_dim / 4 words of four snorm8 values, then one f32
// scale per block of 32 values (value = snorm * scale, scale = the block's
// largest magnitude).

const KV_BLOCK: u32 = 32u;

fn kv_row_words(kv_dim: u32) -> u32 {
    return kv_dim / 4u + kv_dim / KV_BLOCK;
}

// q_s · K[first .. first + head_dim) for the four K rows starting at words
// `row` (first a multiple of KV_BLOCK): one scale per block and row.
fn k_dot4(row: vec4<u32>, first: u32, head_dim: u32, kv_dim: u32) -> vec4<f32> {
    var total = vec4<f32>(0.0);
    for (var b = 0u; b < head_dim / KV_BLOCK; b++) {
        let w = row + (first + b * KV_BLOCK) / 4u;
        var block = vec4<f32>(0.0);
        for (var i = 0u; i < KV_BLOCK / 4u; i++) {
            let qi = q_s[b * (KV_BLOCK / 4u) + i];
            block += vec4<f32>(
                dot(qi, unpack4x8snorm(k_cache[w.x + i])),
                dot(qi, unpack4x8snorm(k_cache[w.y + i])),
                dot(qi, unpack4x8snorm(k_cache[w.z + i])),
                dot(qi, unpack4x8snorm(k_cache[w.w + i])),
            );
        }
        let scales = row + kv_dim / 4u + first / KV_BLOCK + b;
        total += block * bitcast<vec4<f32>>(
            vec4<u32>(k_cache[scales.x], k_cache[scales.y], k_cache[scales.z], k_cache[scales.w]));
    }
    return total;
}

fn load_v4(row: u32, d: u32, kv_dim: u32) -> vec4<f32> {
    let scale = bitcast<f32>(v_cache[row + kv_dim / 4u + d / KV_BLOCK]);
    return unpack4x8snorm(v_cache[row + d / 4u]) * scale;
}
