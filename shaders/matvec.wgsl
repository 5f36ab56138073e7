// y = W x + b for one token (decode). Concatenated after a weights_{format}.wgsl
// file that provides weight_block(), a bias_*.wgsl that provides bias(), an
// input reader that provides x_block() (input_f32.wgsl, or input_silu_mul.wgsl:
// x = silu(gate) * up) and matrix.wgsl (Params). Accumulates in f32.
//
// LANES invocations share a group of ROWS_PER_THREAD consecutive rows: lane l
// takes the row group's 32-column blocks l, l + LANES, ... and reads each
// block of x once for all the group's rows. Reusing x from registers is what
// makes this fast where every buffer load is a per-lane gather (CPU adapters:
// lavapipe, SwiftShader); LANES > 1 keeps enough invocations busy on GPUs.
// The lanes' partial sums meet in workgroup memory once, behind one barrier.

@group(0) @binding(0) var<uniform> p: Params;
// binding 1, x: declared by the input reader (input_f32.wgsl or input_silu_mul.wgsl)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // [y_offset + N]

override WG: u32;  // workgroup size: Tuning::matvec_wg (src/gpu/tuning.rs)
override LANES: u32 = 4u;           // invocations per row group (divides WG; src/gpu/tuning.rs)
// ROWS_PER_THREAD: a tuning constant put in front (src/gpu/tuning.rs)

var<workgroup> partial: array<array<f32, ROWS_PER_THREAD>, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % LANES;
    let first = (flat_workgroup(wid, nwg) * (WG / LANES) + lid / LANES) * ROWS_PER_THREAD;
    let blocks = p.cols / 32u;

    var acc: array<f32, ROWS_PER_THREAD>;
    for (var j = lane; j < blocks; j += LANES) {
        let xb = x_block(j);
        for (var r = 0u; r < ROWS_PER_THREAD; r++) {
            // Rows past the end repeat the last row (no divergent branch); not stored.
            let row = min(first + r, p.rows - 1u);
            let w = weight_block(row * blocks + j);
            acc[r] += dot(w[0], xb[0]) + dot(w[1], xb[1]) + dot(w[2], xb[2]) + dot(w[3], xb[3])
                    + dot(w[4], xb[4]) + dot(w[5], xb[5]) + dot(w[6], xb[6]) + dot(w[7], xb[7]);
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
                y[p.y_offset + first + r] = total + bias(p.bias_offset + first + r);
            }
        }
    }
}
