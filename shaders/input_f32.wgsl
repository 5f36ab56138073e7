// The matvec kernels' input reader: x as it is. Concatenated before
// matvec*.wgsl, which read x only through x_block.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;     // [K / 4]

// Columns 32j .. 32j + 31 of x; out[i] holds columns 32j + 4i .. 32j + 4i + 3.
fn x_block(j: u32) -> array<vec4<f32>, 8> {
    let b = j * 8u;
    return array<vec4<f32>, 8>(x[b], x[b + 1u], x[b + 2u], x[b + 3u], x[b + 4u], x[b + 5u], x[b + 6u], x[b + 7u]);
}
