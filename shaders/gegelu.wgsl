// Phi-3-small's gegelu over a fused projection whose first half is the gate
// a and second the linear part b (the converter de-interleaves the
// checkpoint's (a, b) pairs): out = quick_gelu(min(a, limit)) * (clamp(b,
// -limit, limit) + 1), quick_gelu(a) = a * sigmoid(1.702 a). The reference
// leaves infinities unclamped; min/clamp keep them as they are too.

struct Params {
    tokens: u32,        // T
    intermediate: u32,  // I
    limit: f32,         // the clamp; f32 max: none
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;     // [T, 2 * I]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;   // [T, I]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= p.tokens * p.intermediate) {
        return;
    }
    let t = i / p.intermediate;
    let k = i % p.intermediate;
    let a = min(gate_up[t * 2u * p.intermediate + k], p.limit);
    let b = clamp(gate_up[t * 2u * p.intermediate + p.intermediate + k], -p.limit, p.limit);
    // exp argument clamped: no infinities for very negative gates.
    out[i] = a / (1.0 + exp(min(-1.702 * a, 80.0))) * (b + 1.0);
}
