// Y = X W^T for T tokens (prefill). Concatenated after a weights_{format}.wgsl
// file that provides weight_block(). Each workgroup computes a tile of
// TILE_ROWS output features x TILE_TOKENS tokens, stepping K one 32-column
// block at a time through workgroup memory; each weight block is dequantized
// once per tile and reused for every token of the tile.

struct Params {
    rows: u32,    // N, output features
    cols: u32,    // K, input features (multiple of 32)
    tokens: u32,  // T
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;     // [T, K / 4]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [T, N]

override WG_ROWS: u32 = 16u;     // threads along N; each computes ROWS_PER_THREAD features
override WG_TOKENS: u32 = 16u;   // threads along T; each computes TOKENS_PER_THREAD tokens
const ROWS_PER_THREAD: u32 = 4u;
const TOKENS_PER_THREAD: u32 = 2u;
override TILE_ROWS: u32 = WG_ROWS * ROWS_PER_THREAD;
override TILE_TOKENS: u32 = WG_TOKENS * TOKENS_PER_THREAD;

var<workgroup> w_tile: array<array<vec4<f32>, 8>, TILE_ROWS>;    // [TILE_ROWS, 32]
var<workgroup> x_tile: array<array<vec4<f32>, 8>, TILE_TOKENS>;  // [TILE_TOKENS, 32]

@compute @workgroup_size(WG_ROWS * WG_TOKENS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.x * TILE_ROWS;
    let token0 = wid.y * TILE_TOKENS;
    let tx = lid % WG_ROWS;
    let ty = lid / WG_ROWS;
    let blocks = p.cols / 32u;
    let threads = WG_ROWS * WG_TOKENS;

    var acc: array<array<f32, TOKENS_PER_THREAD>, ROWS_PER_THREAD>;
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
        for (var r = 0u; r < ROWS_PER_THREAD; r++) {
            for (var t = 0u; t < TOKENS_PER_THREAD; t++) {
                let wr = tx + r * WG_ROWS;
                let xt = ty + t * WG_TOKENS;
                var s = 0.0;
                for (var i = 0u; i < 8u; i++) {
                    s += dot(w_tile[wr][i], x_tile[xt][i]);
                }
                acc[r][t] += s;
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < ROWS_PER_THREAD; r++) {
        for (var t = 0u; t < TOKENS_PER_THREAD; t++) {
            let row = row0 + tx + r * WG_ROWS;
            let token = token0 + ty + t * WG_TOKENS;
            if (row < p.rows && token < p.tokens) {
                y[token * p.rows + row] = acc[r][t];
            }
        }
    }
}
