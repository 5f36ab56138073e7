// Y[p] = W[e] X[row(p)] for the pairs grouped under expert e = workgroup z
// (moe_group.wgsl's order): the expert matrices of a prefill chunk, where each
// expert's weights are read once per tile of its tokens, not once per token.
// Concatenated after a weights_{format}.wgsl file (weight_block) and moe.wgsl
// (Route, ExpertParams, x_row). The tiling is matmul_workgroup.wgsl's: a tile
// of TILE_ROWS features x TILE_TOKENS pairs, K stepped one 32-column block at
// a time through workgroup memory. Workgroups past an expert's pairs return.

@group(0) @binding(0) var<uniform> p: ExpertParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;      // [T or P, K / 4]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;      // [P, y_stride]
@group(0) @binding(3) var<storage, read> groups: array<vec2<u32>>; // [E] (first slot in order, pairs)
@group(0) @binding(4) var<storage, read> order: array<u32>;        // [P] pair indices, by expert

override WG: u32;                        // workgroup size: Shader::wg in src/gpu/kernels/mod.rs
override WG_ROWS: u32 = 16u;             // threads along N; each computes ROWS_PER_THREAD features
override WG_TOKENS: u32 = WG / WG_ROWS;  // threads along the pairs; each computes TOKENS_PER_THREAD
const ROWS_PER_THREAD: u32 = 4u;         // acc0 .. acc3 below
const TOKENS_PER_THREAD: u32 = 2u;       // the two lanes of each acc
override TILE_ROWS: u32 = WG_ROWS * ROWS_PER_THREAD;
override TILE_TOKENS: u32 = WG_TOKENS * TOKENS_PER_THREAD;
const NO_PAIR: u32 = 0xffffffffu;

var<workgroup> w_tile: array<array<vec4<f32>, 8>, TILE_ROWS>;    // [TILE_ROWS, 32]
var<workgroup> x_tile: array<array<vec4<f32>, 8>, TILE_TOKENS>;  // [TILE_TOKENS, 32]
var<workgroup> tile_pairs: array<u32, TILE_TOKENS>;              // the tile's pairs (NO_PAIR past the end)
var<workgroup> group: vec2<u32>;

fn store(row: u32, slot: u32, value: f32) {
    let pair = tile_pairs[slot];
    if (row < p.rows && pair != NO_PAIR) {
        y[pair * p.y_stride + p.y_offset + row] = value;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let expert = wid.z;
    if (lid == 0u) {
        group = groups[expert];
    }
    let g = workgroupUniformLoad(&group);
    let slot0 = wid.y * TILE_TOKENS;
    if (slot0 >= g.y) {
        return;
    }
    for (var i = lid; i < TILE_TOKENS; i += WG) {
        tile_pairs[i] = select(NO_PAIR, order[g.x + slot0 + i], slot0 + i < g.y);
    }
    workgroupBarrier();

    let row0 = wid.x * TILE_ROWS;
    let expert_row = expert * p.rows;
    let tx = lid % WG_ROWS;
    let ty = lid / WG_ROWS;
    let blocks = p.cols / 32u;
    var acc0 = vec2<f32>(0.0);
    var acc1 = vec2<f32>(0.0);
    var acc2 = vec2<f32>(0.0);
    var acc3 = vec2<f32>(0.0);
    for (var kb = 0u; kb < blocks; kb++) {
        for (var r = lid; r < TILE_ROWS; r += WG) {
            let row = row0 + r;
            if (row < p.rows) {
                w_tile[r] = weight_block((expert_row + row) * blocks + kb);
            } else {
                w_tile[r] = array<vec4<f32>, 8>();
            }
        }
        for (var i = lid; i < TILE_TOKENS * 8u; i += WG) {
            let pair = tile_pairs[i / 8u];
            var v = vec4<f32>(0.0);
            if (pair != NO_PAIR) {
                v = x[x_row(pair, p.per_token, p.x_per_pair) * blocks * 8u + kb * 8u + i % 8u];
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
    let accs = array<vec2<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r++) {
        store(row0 + tx + r * WG_ROWS, ty, accs[r].x);
        store(row0 + tx + r * WG_ROWS, ty + WG_TOKENS, accs[r].y);
    }
}
