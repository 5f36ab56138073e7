// In place: x *= s (Phi-3-small's muP embedding multiplier).

struct Params {
    n: u32,
    s: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;  // [n]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i < p.n) {
        x[i] *= p.s;
    }
}
