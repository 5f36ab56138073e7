// GELU in place: gelu_erf = 0.5 x (1 + erf(x / sqrt 2)) (BERT, torch default),
// gelu_tanh = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) ("gelu_new"),
// gelu_quick = x sigmoid(1.702 x) (CLIP's "quick_gelu").

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;  // [n]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7); WGSL has no erf.
fn erf_approx(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(v) * (1.0 - poly * exp(-a * a));
}

@compute @workgroup_size(WG)
fn gelu_erf(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i < p.n) {
        let v = x[i];
        x[i] = 0.5 * v * (1.0 + erf_approx(v * 0.7071067811865476));
    }
}

@compute @workgroup_size(WG)
fn gelu_tanh(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i < p.n) {
        let v = x[i];
        // tanh's argument clamped: tanh(±10) is ±1 in f32, and some drivers
        // compute tanh through exp(2u) which overflows for large u.
        let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -10.0, 10.0);
        x[i] = 0.5 * v * (1.0 + tanh(u));
    }
}

@compute @workgroup_size(WG)
fn gelu_quick(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i < p.n) {
        let v = x[i];
        // exp overflows to +inf for v < -52: v / inf is -0, the limit.
        x[i] = v / (1.0 + exp(-1.702 * v));
    }
}
