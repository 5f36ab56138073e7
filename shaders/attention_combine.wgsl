// Merges the per-split partial results of attention.wgsl:
// out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s, with M = max_s m_s.

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    splits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part_acc: array<vec4<f32>>;  // [T, heads, splits, head_dim / 4]
@group(0) @binding(2) var<storage, read> part_ml: array<vec2<f32>>;   // [T, heads, splits]
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>; // [T, heads * head_dim / 4]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let quads = p.head_dim / 4u;
    let first = (t * p.heads + h) * p.splits;

    var m_max = NEG_BIG;
    for (var s = 0u; s < p.splits; s++) {
        m_max = max(m_max, part_ml[first + s].x);
    }
    var total = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let ml = part_ml[first + s];
        total += exp(ml.x - m_max) * ml.y;
    }
    let inv_total = select(0.0, 1.0 / total, total > 0.0);
    for (var quad = lid; quad < quads; quad += WG) {
        var sum = vec4<f32>(0.0);
        for (var s = 0u; s < p.splits; s++) {
            sum += exp(part_ml[first + s].x - m_max) * part_acc[(first + s) * quads + quad];
        }
        out[(t * p.heads + h) * quads + quad] = sum * inv_total;
    }
}
