// f32 weights: W [rows, cols], read in 32-column blocks.
@group(0) @binding(10) var<storage, read> w_data: array<vec4<f32>>;  // [rows * cols / 4]

// The 32 values of block b (block b covers columns 32*(b % blocks_per_row) .. +32
// of row b / blocks_per_row); out[i] holds columns 4i .. 4i+3 of the block.
fn weight_block(b: u32) -> array<vec4<f32>, 8> {
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        out[i] = w_data[b * 8u + i];
    }
    return out;
}

// Element i of W in row-major order (matmul_any.wgsl, embedding_any.wgsl:
// matrices whose rows are not whole 32-column blocks).
fn weight_at(i: u32) -> f32 {
    return w_data[i / 4u][i % 4u];
}
