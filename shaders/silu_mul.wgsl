// out = silu(gate) * up over a fused gate_up projection whose FIRST half is
// the gate (Phi-3 gate_up_proj; Llama's separate gate/up written side by side).

struct Params {
    tokens: u32,        // T
    intermediate: u32,  // I
    _pad0: u32,
    _pad1: u32,
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
    let g = gate_up[t * 2u * p.intermediate + k];
    let u = gate_up[t * 2u * p.intermediate + p.intermediate + k];
    // exp argument clamped: no infinities for very negative gates.
    out[i] = g / (1.0 + exp(min(-g, 80.0))) * u;
}
