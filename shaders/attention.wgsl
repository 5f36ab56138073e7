// Causal attention with GQA and an optional sliding window, split over the
// key sequence (flash-decoding). Workgroup (split s, head h, query t) scores
// its keys chunk by chunk with an online softmax and writes an unnormalised
// partial result; attention_combine.wgsl merges the splits. Decode is T = 1
// with many splits; prefill is T queries. Query t sits at position
// step.pos + t and sees keys j <= step.pos + t (and step.pos + t - j < window
// when window > 0). Cache reads come from kv_f16.wgsl or kv_q8.wgsl
// (load_k4 / load_v4), concatenated in front of this file.

struct Params {
    tokens: u32,     // T queries
    heads: u32,      // query heads
    kv_heads: u32,   // heads / kv_heads query heads share a KV head
    head_dim: u32,   // a multiple of 4, <= 4 * WG
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
@group(0) @binding(3) var<storage, read> k_cache: array<u32>;              // [slots, kv_row_words(kv_dim)]
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;              // [slots, kv_row_words(kv_dim)]
@group(0) @binding(5) var<storage, read_write> part_acc: array<vec4<f32>>; // [T, heads, splits, head_dim / 4]
@group(0) @binding(6) var<storage, read_write> part_ml: array<vec2<f32>>;  // [T, heads, splits] (running max, sum of exp)

override WG: u32 = 64u;      // keys per chunk, threads per workgroup (power of two)
// Thread lid accumulates V dims 4 lid .. 4 lid + 3, so head_dim <= 4 * WG.

var<workgroup> q_s: array<vec4<f32>, WG>;  // the query, scaled, head_dim / 4
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
    let quads = p.head_dim / 4u;
    let kv_dim = p.kv_heads * p.head_dim;
    let row_words = kv_row_words(kv_dim);
    let head_first = (h / (p.heads / p.kv_heads)) * p.head_dim;  // this KV head's first dim in a row

    // This split's keys, clipped to the causal and sliding-window range.
    let split_len = ((kv_len + p.splits - 1u) / p.splits + WG - 1u) / WG * WG;
    var k_begin = split * split_len;
    let k_end = min(k_begin + split_len, pos + 1u);
    if (p.window > 0u && pos + 1u > p.window) {
        k_begin = max(k_begin, pos + 1u - p.window);
    }

    if (lid < quads) {
        let qi = t * p.q_stride + h * p.head_dim + 4u * lid;
        q_s[lid] = vec4<f32>(q[qi], q[qi + 1u], q[qi + 2u], q[qi + 3u]) * p.scale;
    }
    workgroupBarrier();

    var m = NEG_BIG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var c = k_begin; c < k_end; c += WG) {
        let j = c + lid;
        var score = NEG_BIG;
        if (j < k_end) {
            let row = (j % p.slots) * row_words;
            var dot_qk = 0.0;
            for (var i = 0u; i < quads; i++) {
                dot_qk += dot(q_s[i], load_k4(row, head_first + 4u * i, kv_dim));
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
        acc *= correction;
        if (lid < quads) {
            for (var jj = 0u; jj < n; jj++) {
                let row = ((c + jj) % p.slots) * row_words;
                acc += probs[jj] * load_v4(row, head_first + 4u * lid, kv_dim);
            }
        }
        workgroupBarrier();  // probs is rewritten by the next chunk
    }

    let slot = (t * p.heads + h) * p.splits + split;
    if (lid == 0u) {
        part_ml[slot] = vec2<f32>(m, l);
    }
    if (lid < quads) {
        part_acc[slot * quads + lid] = acc;
    }
}
