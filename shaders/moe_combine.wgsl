// x[t] += sum over token t's pairs of weight * expert output: the MoE block's
// output added into the residual stream. Concatenated after moe.wgsl.

struct Params {
    tokens: u32,     // T
    hidden: u32,     // H
    per_token: u32,  // experts per token
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> routes: array<Route>;     // [T * per_token]
@group(0) @binding(2) var<storage, read> expert_out: array<f32>;   // [T * per_token, H]
@group(0) @binding(3) var<storage, read_write> x: array<f32>;      // [T, H]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= p.tokens * p.hidden) {
        return;
    }
    let t = i / p.hidden;
    let h = i % p.hidden;
    var sum = 0.0;
    for (var k = 0u; k < p.per_token; k++) {
        let pair = t * p.per_token + k;
        sum += routes[pair].weight * expert_out[pair * p.hidden + h];
    }
    x[i] += sum;
}
