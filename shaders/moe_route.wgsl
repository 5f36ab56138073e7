// Sparsemixer routing at inference, as transformers' PhiMoE computes it
// (modeling_phimoe.py `sparsemixer`, training=False, top-2), one invocation
// per token:
//   1. e1 = argmax(s) (the first on ties), m = s[e1]; expert j is masked when
//      (m - s_j) / max(|s_j|, m) > 2 * jitter; w1 = softmax over the unmasked, at e1.
//   2. the same over the experts but e1 (e2 its argmax, m its score) for w2.
// The weights are not renormalised. Concatenated after moe.wgsl (Route).

struct Params {
    tokens: u32,     // T
    experts: u32,    // E (at most 256)
    threshold: f32,  // 2 * router_jitter_noise
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;           // [T, E] router scores
@group(0) @binding(2) var<storage, read_write> routes: array<Route>;   // [T, 2]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

// Whether score s is out of reach of the maximum m. The division is kept (not
// multiplied out) so that near-ties round as in PyTorch; a zero factor (s = 0,
// m <= 0) gives 0/0 or -x/0 there, which never compares greater.
fn masked(m: f32, s: f32) -> bool {
    let factor = max(abs(s), m);
    return factor > 0.0 && (m - s) / factor > p.threshold;
}

// 1 / sum of exp(s_j - m) over the experts within reach of m, skipping `skip`:
// the softmax at the maximum, whose own term is exp(0) = 1.
fn weight_at_max(row: u32, m: f32, skip: u32) -> f32 {
    var sum = 0.0;
    for (var j = 0u; j < p.experts; j++) {
        let s = logits[row + j];
        if (j != skip && !masked(m, s)) {
            sum += exp(s - m);
        }
    }
    return 1.0 / sum;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = flat_workgroup(wid, nwg) * WG + lid;
    if (t >= p.tokens) {
        return;
    }
    let row = t * p.experts;
    var e1 = 0u;
    var m1 = logits[row];
    for (var j = 1u; j < p.experts; j++) {
        if (logits[row + j] > m1) {
            m1 = logits[row + j];
            e1 = j;
        }
    }
    var e2 = select(0u, 1u, e1 == 0u);
    var m2 = logits[row + e2];
    for (var j = e2 + 1u; j < p.experts; j++) {
        if (j != e1 && logits[row + j] > m2) {
            m2 = logits[row + j];
            e2 = j;
        }
    }
    routes[2u * t] = Route(e1, weight_at_max(row, m1, p.experts));
    routes[2u * t + 1u] = Route(e2, weight_at_max(row, m2, e1));
}
