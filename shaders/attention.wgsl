// Causal attention with GQA and an optional sliding window, split over the
// key sequence (flash-decoding). Workgroup (split s, head h, query t) scores
// its keys in chunks of 4 WG with an online softmax and writes an
// unnormalised partial result; attention_combine.wgsl merges the splits.
// Decode is T = 1 with many splits; prefill is T queries. Query t sits at
// position step.pos + t and sees keys j <= step.pos + t (and
// step.pos + t - j < window when window > 0). Cache reads (k_dot4, load_v4)
// come from kv_f16.wgsl or kv_q8.wgsl, concatenated in front of this file.
//
// On CPU adapters every load is a per-lane gather, so each thread scores four
// keys per read of q and the reductions run once per 4 WG keys (1.3x faster
// than one key per thread on lavapipe).

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

override WG: u32 = 64u;        // threads per workgroup (power of two)
override CHUNK: u32 = 4u * WG;  // keys per round: four per thread
// Thread lid accumulates V dims 4 lid .. 4 lid + 3, so head_dim <= 4 * WG.

var<workgroup> q_s: array<vec4<f32>, WG>;    // the query, scaled: head_dim / 4 used
var<workgroup> probs: array<vec4<f32>, WG>;  // the chunk's softmax numerators, key c + i at [i / 4][i % 4]
var<workgroup> rows: array<vec4<u32>, WG>;   // and the first cache word of each key's row
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
    let split_len = ((kv_len + p.splits - 1u) / p.splits + CHUNK - 1u) / CHUNK * CHUNK;
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
    for (var c = k_begin; c < k_end; c += CHUNK) {
        // Thread lid scores keys c + 4 lid .. c + 4 lid + 3 (one read of q for four keys).
        let j = c + 4u * lid + vec4<u32>(0u, 1u, 2u, 3u);
        let in_range = j < vec4<u32>(k_end);
        let row = (j % p.slots) * row_words;
        var score = vec4<f32>(NEG_BIG);
        if (in_range.x) {
            score = select(score, k_dot4(row, head_first, p.head_dim, kv_dim), in_range);
        }
        let m_new = max(m, reduce_max(max(max(score.x, score.y), max(score.z, score.w)), lid));
        let prob = select(vec4<f32>(0.0), exp(score - m_new), in_range);
        probs[lid] = prob;
        rows[lid] = row;
        let correction = exp(m - m_new);
        l = l * correction + reduce_sum(prob.x + prob.y + prob.z + prob.w, lid);  // the barriers publish probs, rows
        m = m_new;

        // Thread lid accumulates dims 4 lid .. 4 lid + 3 over the chunk's keys.
        let n = min(CHUNK, k_end - c);
        acc *= correction;
        if (lid < quads) {
            let d = head_first + 4u * lid;
            for (var g = 0u; g < n / 4u; g++) {
                let pr = probs[g];
                let rw = rows[g];
                acc += pr.x * load_v4(rw.x, d, kv_dim) + pr.y * load_v4(rw.y, d, kv_dim)
                     + pr.z * load_v4(rw.z, d, kv_dim) + pr.w * load_v4(rw.w, d, kv_dim);
            }
            for (var jj = n / 4u * 4u; jj < n; jj++) {
                acc += probs[jj / 4u][jj % 4u] * load_v4(rows[jj / 4u][jj % 4u], d, kv_dim);
            }
        }
        workgroupBarrier();  // probs and rows are rewritten by the next chunk
    }

    let slot = (t * p.heads + h) * p.splits + split;
    if (lid == 0u) {
        part_ml[slot] = vec2<f32>(m, l);
    }
    if (lid < quads) {
        part_acc[slot * quads + lid] = acc;
    }
}
