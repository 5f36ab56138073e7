// q8_0 weights (GGUF block_q8_0 split in two arrays): W [rows, cols], blocks of
// 32 columns, value = q * d with q a signed byte.
@group(0) @binding(10) var<storage, read> w_bytes: array<vec4<u32>>;  // [rows * cols / 16] 32 bytes a block, element j in byte j
@group(0) @binding(11) var<storage, read> w_scales: array<u32>;       // [ceil(rows * cols / 64)] f16 d, two blocks per u32

fn signed_bytes(word: u32) -> vec4<f32> {
    // Shift each byte to the top, then arithmetic-shift back down to sign-extend.
    let v = bitcast<vec4<i32>>(vec4<u32>(word << 24u, word << 16u, word << 8u, word));
    return vec4<f32>(v >> vec4<u32>(24u));
}

// The 32 values of block b; out[i] holds columns 4i .. 4i+3 of the block.
fn weight_block(b: u32) -> array<vec4<f32>, 8> {
    let pair = unpack2x16float(w_scales[b >> 1u]);
    let d = select(pair.x, pair.y, (b & 1u) == 1u);
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 2u; i++) {
        let q = w_bytes[b * 2u + i];
        out[4u * i] = signed_bytes(q.x) * d;
        out[4u * i + 1u] = signed_bytes(q.y) * d;
        out[4u * i + 2u] = signed_bytes(q.z) * d;
        out[4u * i + 3u] = signed_bytes(q.w) * d;
    }
    return out;
}
