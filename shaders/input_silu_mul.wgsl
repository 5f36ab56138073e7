// The matvec kernels' input reader for a down projection on the GPU tiles:
// x = silu(gate) * up computed while it is read, from the fused gate_up
// buffer (gate first, then up, K values each), so the MLP's activation needs
// no dispatch of its own (silu_mul.wgsl's formula, value for value).
// Every workgroup recomputes the activations it reads: cheap beside the
// weight reads on a GPU, not on a CPU adapter, which keeps silu_mul.wgsl.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;     // [2K / 4]: gate, then up

fn silu_mul4(g: vec4<f32>, u: vec4<f32>) -> vec4<f32> {
    // exp argument clamped: no infinities for very negative gates.
    return g / (1.0 + exp(min(-g, vec4<f32>(80.0)))) * u;
}

// Columns 32j .. 32j + 31 of silu(gate) * up, as input_f32.wgsl's x_block.
fn x_block(j: u32) -> array<vec4<f32>, 8> {
    let b = j * 8u;
    let u = p.cols / 4u + b;
    return array<vec4<f32>, 8>(
        silu_mul4(x[b], x[u]), silu_mul4(x[b + 1u], x[u + 1u]), silu_mul4(x[b + 2u], x[u + 2u]),
        silu_mul4(x[b + 3u], x[u + 3u]), silu_mul4(x[b + 4u], x[u + 4u]), silu_mul4(x[b + 5u], x[u + 5u]),
        silu_mul4(x[b + 6u], x[u + 6u]), silu_mul4(x[b + 7u], x[u + 7u]),
    );
}
