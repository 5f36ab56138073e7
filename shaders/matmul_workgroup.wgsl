// Y = X W^T for T tokens (prefill). Concatenated after a weights_{format}.wgsl
// file that provides weight_block(), a bias_*.wgsl and matrix.wgsl (Params).
// Each workgroup computes a tile of
// TILE_ROWS output features x TILE_TOKENS tokens, stepping K one 32-column
// block at a time through workgroup memory; each weight block is dequantized
// once per tile and reused for every token of the tile. The prefill kernel of
// GPUs and SwiftShader; matmul_registers.wgsl is lavapipe's.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;     // [T, K / 4]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [T, y_stride]

override WG: u32;                       // workgroup size: Shader::wg in src/gpu/kernels/mod.rs
override WG_ROWS: u32 = 16u;            // threads along N; each computes ROWS_PER_THREAD features
override WG_TOKENS: u32 = WG / WG_ROWS;  // threads along T; each computes TOKENS_PER_THREAD tokens
const ROWS_PER_THREAD: u32 = 4u;    // acc0 .. acc3 below
const TOKENS_PER_THREAD: u32 = 2u;  // the two lanes of each acc
override TILE_ROWS: u32 = WG_ROWS * ROWS_PER_THREAD;
override TILE_TOKENS: u32 = WG_TOKENS * TOKENS_PER_THREAD;

var<workgroup> w_tile: array<array<vec4<f32>, 8>, TILE_ROWS>;    // [TILE_ROWS, 32]
var<workgroup> x_tile: array<array<vec4<f32>, 8>, TILE_TOKENS>;  // [TILE_TOKENS, 32]

// Writes tokens (token, token + WG_TOKENS) of output feature `row`.
fn store(row: u32, token: u32, acc: vec2<f32>) {
    if (row >= p.rows) {
        return;
    }
    let b = bias(p.bias_offset + row);
    if (token < p.tokens) {
        y[token * p.y_stride + p.y_offset + row] = acc.x + b;
    }
    if (token + WG_TOKENS < p.tokens) {
        y[(token + WG_TOKENS) * p.y_stride + p.y_offset + row] = acc.y + b;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.x * TILE_ROWS;
    let token0 = wid.y * TILE_TOKENS;
    let tx = lid % WG_ROWS;
    let ty = lid / WG_ROWS;
    let blocks = p.cols / 32u;
    let threads = WG;

    // acc[r] holds tokens (ty, ty + WG_TOKENS) of row tx + r * WG_ROWS; named, not
    // indexed, so that compilers keep them in registers.
    var acc0 = vec2<f32>(0.0);
    var acc1 = vec2<f32>(0.0);
    var acc2 = vec2<f32>(0.0);
    var acc3 = vec2<f32>(0.0);
    for (var kb = 0u; kb < blocks; kb++) {
        for (var r = lid; r < TILE_ROWS; r += threads) {
            let row = row0 + r;
            if (row < p.rows) {
                w_tile[r] = weight_block(row * blocks + kb);
            } else {
                w_tile[r] = array<vec4<f32>, 8>();
            }
        }
        for (var i = lid; i < TILE_TOKENS * 8u; i += threads) {
            let t = token0 + i / 8u;
            var v = vec4<f32>(0.0);
            if (t < p.tokens) {
                v = x[t * blocks * 8u + kb * 8u + i % 8u];
            }
            x_tile[i / 8u][i % 8u] = v;
        }
        workgroupBarrier();
        let xa = ty;
        let xb = ty + WG_TOKENS;
        for (var i = 0u; i < 8u; i++) {
            let x_a = x_tile[xa][i];
            let x_b = x_tile[xb][i];
            let w0 = w_tile[tx][i];
            let w1 = w_tile[tx + WG_ROWS][i];
            let w2 = w_tile[tx + 2u * WG_ROWS][i];
            let w3 = w_tile[tx + 3u * WG_ROWS][i];
            acc0 += vec2<f32>(dot(w0, x_a), dot(w0, x_b));
            acc1 += vec2<f32>(dot(w1, x_a), dot(w1, x_b));
            acc2 += vec2<f32>(dot(w2, x_a), dot(w2, x_b));
            acc3 += vec2<f32>(dot(w3, x_a), dot(w3, x_b));
        }
        workgroupBarrier();
    }
    store(row0 + tx, token0 + ty, acc0);
    store(row0 + tx + WG_ROWS, token0 + ty, acc1);
    store(row0 + tx + 2u * WG_ROWS, token0 + ty, acc2);
    store(row0 + tx + 3u * WG_ROWS, token0 + ty, acc3);
}
