// Bidirectional attention for encoders (BERT): each token attends to every
// token of its own sequence. Sequences of a batch are packed back to back
// without padding; `segments[t]` = (start, end) of token t's sequence, so no
// mask is needed. One workgroup per (head, token). Concatenated after reduce.wgsl.

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
}

const MAX_KEYS: u32 = 1024u;  // longest sequence (BERT: 512; a CLIP-L/14-336 crop: 577)

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;            // [T, 3 * heads * head_dim]: q, k, v
@group(0) @binding(2) var<storage, read> segments: array<vec2<u32>>; // [T] (start, end)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;      // [T, heads * head_dim]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

var<workgroup> scores: array<f32, MAX_KEYS>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let t = wid.y;
    if (t >= p.tokens) {
        return;  // uniform per workgroup
    }
    let width = p.heads * p.head_dim;
    let stride = 3u * width;
    let q = t * stride + head * p.head_dim;
    let seg = segments[t];
    let keys = min(seg.y - seg.x, MAX_KEYS);

    // Scores, and their maximum.
    var m = NEG_BIG;
    for (var j = lid; j < keys; j += WG) {
        let k = (seg.x + j) * stride + width + head * p.head_dim;
        var s = 0.0;
        for (var d = 0u; d < p.head_dim; d++) {
            s += qkv[q + d] * qkv[k + d];
        }
        s *= p.scale;
        scores[j] = s;
        m = max(m, s);
    }
    let row_max = workgroup_max(m, lid);

    // exp, and their sum.
    var sum = 0.0;
    for (var j = lid; j < keys; j += WG) {
        let e = exp(scores[j] - row_max);
        scores[j] = e;
        sum += e;
    }
    let inv = 1.0 / workgroup_sum(sum, lid);

    // Weighted sum of the values, one output dim per thread.
    for (var d = lid; d < p.head_dim; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < keys; j++) {
            acc += scores[j] * qkv[(seg.x + j) * stride + 2u * width + head * p.head_dim + d];
        }
        out[t * width + head * p.head_dim + d] = acc * inv;
    }
}
