// f16 weights: W [rows, cols], two halves per u32, read in 32-column blocks.
// Needs no shader-f16: unpack2x16float converts to f32.
@group(0) @binding(10) var<storage, read> w_data: array<vec4<u32>>;  // [rows * cols / 8]

// The 32 values of block b; out[i] holds columns 4i .. 4i+3 of the block.
fn weight_block(b: u32) -> array<vec4<f32>, 8> {
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let q = w_data[b * 4u + i];
        out[2u * i] = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
        out[2u * i + 1u] = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
    }
    return out;
}

// Element i of W in row-major order (matmul_any.wgsl, embedding_any.wgsl:
// matrices whose rows are not whole 32-column blocks).
fn weight_at(i: u32) -> f32 {
    let word = w_data[i / 8u][(i % 8u) / 2u];
    return unpack2x16float(word)[i % 2u];
}
