// Y[p] = W[expert(p)] X[row(p)] for each routed pair: the expert matrices of a
// decode step, reading only the selected experts' rows of the stack.
// Concatenated after a weights_{format}.wgsl file (weight_block) and moe.wgsl
// (Route, ExpertParams, x_row). matvec.wgsl's scheme: LANES invocations share
// ROWS_PER_THREAD consecutive rows and split the 32-column blocks; workgroup
// y is the pair.

@group(0) @binding(0) var<uniform> p: ExpertParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;      // [T or P, K / 4]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;      // [P, y_stride]
@group(0) @binding(3) var<storage, read> routes: array<Route>;     // [P]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs
override LANES: u32 = 4u;  // invocations per row group (divides WG; src/gpu/tuning.rs)
// ROWS_PER_THREAD: a tuning constant put in front (src/gpu/tuning.rs)

var<workgroup> partial: array<array<f32, ROWS_PER_THREAD>, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pair = wid.y;
    let lane = lid % LANES;
    let first = (wid.x * (WG / LANES) + lid / LANES) * ROWS_PER_THREAD;
    let blocks = p.cols / 32u;
    let expert_row = routes[pair].expert * p.rows;
    let xb = x_row(pair, p.per_token, p.x_per_pair) * blocks * 8u;

    var acc: array<f32, ROWS_PER_THREAD>;
    for (var j = lane; j < blocks; j += LANES) {
        let xj = xb + j * 8u;
        let x0 = x[xj];
        let x1 = x[xj + 1u];
        let x2 = x[xj + 2u];
        let x3 = x[xj + 3u];
        let x4 = x[xj + 4u];
        let x5 = x[xj + 5u];
        let x6 = x[xj + 6u];
        let x7 = x[xj + 7u];
        for (var r = 0u; r < ROWS_PER_THREAD; r++) {
            // Rows past the end repeat the last row (no divergent branch); not stored.
            let row = expert_row + min(first + r, p.rows - 1u);
            let w = weight_block(row * blocks + j);
            acc[r] += dot(w[0], x0) + dot(w[1], x1) + dot(w[2], x2) + dot(w[3], x3)
                    + dot(w[4], x4) + dot(w[5], x5) + dot(w[6], x6) + dot(w[7], x7);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    if (lane == 0u) {
        for (var r = 0u; r < ROWS_PER_THREAD; r++) {
            var total = 0.0;
            for (var l = 0u; l < LANES; l++) {
                total += partial[lid + l][r];
            }
            if (first + r < p.rows) {
                y[pair * p.y_stride + p.y_offset + first + r] = total;
            }
        }
    }
}
