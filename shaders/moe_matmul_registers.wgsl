// Y[p] = W[e] X[row(p)] for the pairs grouped under expert e = workgroup z
// (moe_group.wgsl's order): the CPU-adapter twin of moe_matmul.wgsl, tiled
// like matmul_registers.wgsl. Each invocation computes ROWS_PER_THREAD of the
// expert's features x TOKENS_PER_THREAD of its pairs, dequantizing each weight
// block once for all of them, with no workgroup memory (every buffer load is a
// per-lane gather on lavapipe, so loads are what counts). Concatenated after a
// weights_{format}.wgsl file (weight_block), moe.wgsl (ExpertParams, x_row)
// and the tuning constants ROWS_PER_THREAD and TOKENS_PER_THREAD.

@group(0) @binding(0) var<uniform> p: ExpertParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;      // [T or P, K / 4]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;      // [P, y_stride]
@group(0) @binding(3) var<storage, read> groups: array<vec2<u32>>; // [E] (first slot in order, pairs)
@group(0) @binding(4) var<storage, read> order: array<u32>;        // [P] pair indices, by expert

override WG: u32;                        // workgroup size: Shader::wg in src/gpu/kernels/mod.rs
override WG_ROWS: u32;                   // invocations along N (src/gpu/tuning.rs)
override WG_TOKENS: u32 = WG / WG_ROWS;  // invocations along the expert's pairs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let expert = wid.z;
    let g = groups[expert];
    let slot0 = (wid.y * WG_TOKENS + lid / WG_ROWS) * TOKENS_PER_THREAD;
    let row0 = (wid.x * WG_ROWS + lid % WG_ROWS) * ROWS_PER_THREAD;
    // No barriers below: invocations past the expert's pairs or rows just leave.
    if (slot0 >= g.y || row0 >= p.rows) {
        return;
    }
    let blocks = p.cols / 32u;
    // The invocation's pairs; past the group's end the last one repeats, unstored.
    var pairs: array<u32, TOKENS_PER_THREAD>;
    var x_base: array<u32, TOKENS_PER_THREAD>;
    for (var t = 0u; t < TOKENS_PER_THREAD; t++) {
        pairs[t] = order[g.x + min(slot0 + t, g.y - 1u)];
        x_base[t] = x_row(pairs[t], p.per_token, p.x_per_pair) * blocks * 8u;
    }
    let expert_row = expert * p.rows;

    var acc: array<array<f32, TOKENS_PER_THREAD>, ROWS_PER_THREAD>;
    for (var j = 0u; j < blocks; j++) {
        var xs: array<array<vec4<f32>, 8>, TOKENS_PER_THREAD>;
        for (var t = 0u; t < TOKENS_PER_THREAD; t++) {
            for (var i = 0u; i < 8u; i++) {
                xs[t][i] = x[x_base[t] + j * 8u + i];
            }
        }
        for (var r = 0u; r < ROWS_PER_THREAD; r++) {
            let w = weight_block((expert_row + min(row0 + r, p.rows - 1u)) * blocks + j);
            for (var t = 0u; t < TOKENS_PER_THREAD; t++) {
                acc[r][t] += dot(w[0], xs[t][0]) + dot(w[1], xs[t][1]) + dot(w[2], xs[t][2]) + dot(w[3], xs[t][3])
                           + dot(w[4], xs[t][4]) + dot(w[5], xs[t][5]) + dot(w[6], xs[t][6]) + dot(w[7], xs[t][7]);
            }
        }
    }
    for (var r = 0u; r < ROWS_PER_THREAD; r++) {
        for (var t = 0u; t < TOKENS_PER_THREAD; t++) {
            if (row0 + r < p.rows && slot0 + t < g.y) {
                y[pairs[t] * p.y_stride + p.y_offset + row0 + r] = acc[r][t];
            }
        }
    }
}
