// Y = X W^T for T tokens (prefill). Concatenated after a weights_{format}.wgsl
// file that provides weight_block(), a bias_*.wgsl, matrix.wgsl (Params) and
// the tuning constants ROWS_PER_THREAD and TOKENS_PER_THREAD (src/gpu/tuning.rs).
//
// Register blocking, no workgroup memory: each invocation computes a tile of
// ROWS_PER_THREAD output features x TOKENS_PER_THREAD tokens. Per 32-column
// block it keeps the tokens' x in registers, dequantizes each of its rows'
// weight blocks once and uses it for every token: loads per multiply-add
// fall by the tile's size, which is what counts where every buffer load is a
// per-lane gather (lavapipe). The CPU-adapter prefill kernel;
// matmul_workgroup.wgsl is the GPU one.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;     // [T, K / 4]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [T, y_stride]

override WG: u32;                       // workgroup size: Shader::wg in src/gpu/kernels/mod.rs
override WG_ROWS: u32;                  // invocations along N (src/gpu/tuning.rs)
override WG_TOKENS: u32 = WG / WG_ROWS;  // invocations along T

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = (wid.x * WG_ROWS + lid % WG_ROWS) * ROWS_PER_THREAD;
    let token0 = (wid.y * WG_TOKENS + lid / WG_ROWS) * TOKENS_PER_THREAD;
    let blocks = p.cols / 32u;

    var acc: array<array<f32, TOKENS_PER_THREAD>, ROWS_PER_THREAD>;
    for (var j = 0u; j < blocks; j++) {
        // Tokens and rows past the end repeat the last one; they are not stored.
        var xs: array<array<vec4<f32>, 8>, TOKENS_PER_THREAD>;
        for (var t = 0u; t < TOKENS_PER_THREAD; t++) {
            let base = (min(token0 + t, p.tokens - 1u) * blocks + j) * 8u;
            for (var i = 0u; i < 8u; i++) {
                xs[t][i] = x[base + i];
            }
        }
        for (var r = 0u; r < ROWS_PER_THREAD; r++) {
            let w = weight_block(min(row0 + r, p.rows - 1u) * blocks + j);
            for (var t = 0u; t < TOKENS_PER_THREAD; t++) {
                acc[r][t] += dot(w[0], xs[t][0]) + dot(w[1], xs[t][1]) + dot(w[2], xs[t][2]) + dot(w[3], xs[t][3])
                           + dot(w[4], xs[t][4]) + dot(w[5], xs[t][5]) + dot(w[6], xs[t][6]) + dot(w[7], xs[t][7]);
            }
        }
    }
    for (var r = 0u; r < ROWS_PER_THREAD; r++) {
        for (var t = 0u; t < TOKENS_PER_THREAD; t++) {
            if (row0 + r < p.rows && token0 + t < p.tokens) {
                y[(token0 + t) * p.y_stride + p.y_offset + row0 + r] = acc[r][t] + bias(p.bias_offset + row0 + r);
            }
        }
    }
}
