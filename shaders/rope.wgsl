// Rotary position embedding, NeoX style (rotate_half), in place, on the first
// rot_dim dims of each head; the rest pass through. Frequencies come from the
// host (inv_freq, already divided by any LongRoPE factor); cos and sin are
// both multiplied by attn_factor (LongRoPE's attention scaling; 1 otherwise).
// Works on a fused QKV buffer: heads start at `offset` in rows of `row_stride`.

struct Params {
    tokens: u32,      // T
    heads: u32,       // heads to rotate
    head_dim: u32,
    rot_dim: u32,     // even, <= head_dim
    row_stride: u32,  // floats per token in x
    offset: u32,      // float offset of head 0 within a token's row
    attn_factor: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;                    // token t sits at position step.pos + t
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;    // [rot_dim / 2]
@group(0) @binding(3) var<storage, read_write> x: array<f32>;     // [T, row_stride]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

// 2*pi and pi/2 split in a high part with few mantissa bits and a low part
// (Cody-Waite), so that k * HI is exact: angles reach ~1e5 rad at long
// context, and reducing them naively loses every digit.
const TWO_PI_HI: f32 = 6.28125;  // k * TWO_PI_HI exact for |k| < 2^16
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;
const HALF_PI_HI: f32 = 1.5703125;
const HALF_PI_LO: f32 = 4.8382679489661923e-4;
const INV_HALF_PI: f32 = 0.6366197723675814;

// (sin a, cos a) to ~1e-7: WGSL only promises 2^-11 for its sin and cos
// (SwiftShader is that coarse), so reduce to [-pi/4, pi/4] and use Taylor
// polynomials, whose truncation error there is below 2e-9.
fn sin_cos(a: f32) -> vec2<f32> {
    let turns = round(a * INV_TWO_PI);
    let r = (a - turns * TWO_PI_HI) - turns * TWO_PI_LO;  // [-pi, pi]
    let quadrant = round(r * INV_HALF_PI);                // -2 ..= 2
    let y = (r - quadrant * HALF_PI_HI) - quadrant * HALF_PI_LO;
    let y2 = y * y;
    let s = y * (1.0 + y2 * (-1.0 / 6.0 + y2 * (1.0 / 120.0 + y2 * (-1.0 / 5040.0 + y2 * (1.0 / 362880.0)))));
    let c = 1.0 + y2 * (-0.5 + y2 * (1.0 / 24.0 + y2 * (-1.0 / 720.0 + y2 * (1.0 / 40320.0 + y2 * (-1.0 / 3628800.0)))));
    switch (i32(quadrant) & 3) {
        case 1: { return vec2<f32>(c, -s); }
        case 2: { return vec2<f32>(-s, -c); }
        case 3: { return vec2<f32>(-c, s); }
        default: { return vec2<f32>(s, c); }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half_rot = p.rot_dim / 2u;
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= p.tokens * p.heads * half_rot) {
        return;
    }
    let k = i % half_rot;
    let h = (i / half_rot) % p.heads;
    let t = i / (half_rot * p.heads);

    let angle = f32(step.pos + t) * inv_freq[k];  // rounded to f32 as in HF
    let sc = sin_cos(angle) * p.attn_factor;
    let s = sc.x;
    let c = sc.y;

    let base = t * p.row_stride + p.offset + h * p.head_dim;
    let x1 = x[base + k];
    let x2 = x[base + k + half_rot];
    x[base + k] = x1 * c - x2 * s;
    x[base + k + half_rot] = x2 * c + x1 * s;
}
