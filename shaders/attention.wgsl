// Causal attention with GQA and an optional sliding window, split over the
// key sequence (flash-decoding). Workgroup (split s, head h, query t) scores
// its keys chunk by chunk with an online softmax and writes an unnormalised
// partial result; attention_combine.wgsl merges the splits. Decode is T = 1
// with many splits; prefill is T queries. Query t sits at position
// step.pos + t and sees keys j <= step.pos + t (and step.pos + t - j < window
// when window > 0). The KV cache holds f16 pairs packed in u32.

struct Params {
    tokens: u32,     // T queries
    heads: u32,      // query heads
    kv_heads: u32,   // heads / kv_heads query heads share a KV head
    head_dim: u32,   // even, <= 4 * WG
    q_stride: u32,   // floats per token in q (query heads start at 0)
    window: u32,     // sliding window in positions; 0 = none
    splits: u32,     // workgroups along the key sequence
    scale: f32,      // softmax scale, usually 1/sqrt(head_dim)
    slots: u32,      // positions the caches hold: key j is in slot j % slots
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;                    // [T, q_stride]
@group(0) @binding(3) var<storage, read> k_cache: array<u32>;              // [slots, kv_heads * head_dim / 2]
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;              // [slots, kv_heads * head_dim / 2]
@group(0) @binding(5) var<storage, read_write> part_acc: array<vec2<f32>>; // [T, heads, splits, head_dim / 2]
@group(0) @binding(6) var<storage, read_write> part_ml: array<vec2<f32>>;  // [T, heads, splits] (running max, sum of exp)

override WG: u32 = 64u;      // keys per chunk, threads per workgroup (power of two)
const MAX_HEAD_DIM: u32 = 256u;
// Each thread accumulates V dim pairs lid and lid + WG (acc0, acc1), so head_dim <= 4 * WG.

var<workgroup> q_s: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

fn reduce_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let split = wid.x;
    let h = wid.y;
    let t = wid.z;
    let pos = step.pos + t;
    let kv_len = step.pos + p.tokens;
    let half_dim = p.head_dim / 2u;
    let kvh = h / (p.heads / p.kv_heads);
    let row_words = p.kv_heads * half_dim;

    // This split's keys, clipped to the causal and sliding-window range.
    let split_len = ((kv_len + p.splits - 1u) / p.splits + WG - 1u) / WG * WG;
    var k_begin = split * split_len;
    let k_end = min(k_begin + split_len, pos + 1u);
    if (p.window > 0u && pos + 1u > p.window) {
        k_begin = max(k_begin, pos + 1u - p.window);
    }

    for (var i = lid; i < p.head_dim; i += WG) {
        q_s[i] = q[t * p.q_stride + h * p.head_dim + i] * p.scale;
    }
    workgroupBarrier();

    var m = NEG_BIG;
    var l = 0.0;
    var acc0 = vec2<f32>(0.0);
    var acc1 = vec2<f32>(0.0);
    let pair0 = lid;
    let pair1 = lid + WG;
    let head_base = kvh * half_dim;  // this KV head's words within a cache row
    for (var c = k_begin; c < k_end; c += WG) {
        let j = c + lid;
        var score = NEG_BIG;
        if (j < k_end) {
            let base = (j % p.slots) * row_words + head_base;
            var dot_qk = 0.0;
            for (var i = 0u; i < half_dim; i++) {
                let kv = unpack2x16float(k_cache[base + i]);
                dot_qk += q_s[2u * i] * kv.x + q_s[2u * i + 1u] * kv.y;
            }
            score = dot_qk;
        }
        let m_new = max(m, reduce_max(score, lid));
        let prob = select(0.0, exp(score - m_new), j < k_end);
        probs[lid] = prob;
        let correction = exp(m - m_new);
        l = l * correction + reduce_sum(prob, lid);  // the barriers in here publish probs
        m = m_new;

        let n = min(WG, k_end - c);
        acc0 *= correction;
        acc1 *= correction;
        for (var jj = 0u; jj < n; jj++) {
            let prob_j = probs[jj];
            let row = ((c + jj) % p.slots) * row_words + head_base;
            if (pair0 < half_dim) {
                acc0 += prob_j * unpack2x16float(v_cache[row + pair0]);
            }
            if (pair1 < half_dim) {
                acc1 += prob_j * unpack2x16float(v_cache[row + pair1]);
            }
        }
        workgroupBarrier();  // probs is rewritten by the next chunk
    }

    let slot = (t * p.heads + h) * p.splits + split;
    if (lid == 0u) {
        part_ml[slot] = vec2<f32>(m, l);
    }
    if (pair0 < half_dim) {
        part_acc[slot * half_dim + pair0] = acc0;
    }
    if (pair1 < half_dim) {
        part_acc[slot * half_dim + pair1] = acc1;
    }
}
