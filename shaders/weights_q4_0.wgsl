// q4_0 weights (GGUF block_q4_0 split in two arrays): W [rows, cols], blocks of
// 32 columns, value = (q - 8) * d.
@group(0) @binding(10) var<storage, read> w_nibbles: array<vec4<u32>>;  // [rows * cols / 32] 16 bytes a block: byte j = element j (low nibble) | element j + 16 (high nibble)
@group(0) @binding(11) var<storage, read> w_scales: array<u32>;         // [ceil(rows * cols / 64)] f16 d, two blocks per u32

// The 32 values of block b; out[i] holds columns 4i .. 4i+3 of the block.
fn nibbles_lo(word: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(15u));
}

fn nibbles_hi(word: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(word >> 4u, word >> 12u, word >> 20u, word >> 28u) & vec4<u32>(15u));
}

// The 32 values of block b; out[i] holds columns 4i .. 4i+3 of the block.
// Written out without loops so that compilers keep it in registers.
fn weight_block(b: u32) -> array<vec4<f32>, 8> {
    let q = w_nibbles[b];
    let pair = unpack2x16float(w_scales[b >> 1u]);
    let d = select(pair.x, pair.y, (b & 1u) == 1u);
    return array<vec4<f32>, 8>(
        (nibbles_lo(q.x) - 8.0) * d, (nibbles_lo(q.y) - 8.0) * d, (nibbles_lo(q.z) - 8.0) * d, (nibbles_lo(q.w) - 8.0) * d,
        (nibbles_hi(q.x) - 8.0) * d, (nibbles_hi(q.y) - 8.0) * d, (nibbles_hi(q.z) - 8.0) * d, (nibbles_hi(q.w) - 8.0) * d,
    );
}
