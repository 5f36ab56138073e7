// Causal attention with GQA and an optional sliding window, split over the
// key sequence (flash-decoding). Workgroup (split s, KV head, query t) serves
// the group of query heads sharing that KV head, so each key and value is
// read once for all of them; it scores its keys in chunks of 4 WG with an
// online softmax and writes an unnormalised partial result per query head;
// attention_combine.wgsl merges the splits.
// Decode is T = 1 with many splits; prefill is T queries. Query t sits at
// position step.pos + t and sees keys j <= step.pos + t (and
// step.pos + t - j < window when window > 0). Cache reads (k_quads4,
// k_scales4, load_v4, kv_row_words and the cache bindings 3 and 4) come from
// a kv_{f16,q8,f32}.wgsl reader concatenated in front of this file.
//
// Block-sparse attention (Phi-3-small, SPARSE): query head h at position p
// (block q = p / block) sees key block k <= q when q - k < local_blocks or
// (k + h * head_step + 1) % vert_stride == 0, within the causal mask. A
// workgroup walks only the key blocks some head of its group sees — the
// stripes of its heads, then its local blocks — as one "logical" key
// sequence (sparse_key maps an index to a position), and masks per head;
// splits divide that sequence, so decode reads none of the hidden blocks.
//
// On CPU adapters every load is a per-lane gather, so each thread scores four
// keys per read of q and the reductions run once per 4 WG keys (1.3x faster
// than one key per thread on lavapipe).

struct Params {
    tokens: u32,     // T queries
    heads: u32,      // query heads
    kv_heads: u32,   // heads / kv_heads query heads share a KV head
    head_dim: u32,   // a multiple of 4, <= 4 * WG; group * head_dim <= 4 * MAX_Q_QUADS
    q_stride: u32,   // floats per token in q (query heads start at 0)
    window: u32,     // sliding window in positions; 0 = none
    splits: u32,     // workgroups along the key sequence
    scale: f32,      // softmax scale, usually 1/sqrt(head_dim)
    slots: u32,      // positions the caches hold: key j is in slot j % slots
    block: u32,        // SPARSE: positions per block
    local_blocks: u32, // SPARSE: a query's own block and the ones before it that every head sees
    vert_stride: u32,  // SPARSE: and every vert_stride-th block ...
    head_step: u32,    // SPARSE: ... shifted by h * head_step for query head h
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;                    // [T, q_stride]
// bindings 3 and 4: k_cache, v_cache [slots, kv_row_words(kv_dim)] (the kv reader's)
@group(0) @binding(5) var<storage, read_write> part_acc: array<vec4<f32>>; // [T, heads, splits, head_dim / 4]
@group(0) @binding(6) var<storage, read_write> part_ml: array<vec2<f32>>;  // [T, heads, splits] (running max, sum of exp)

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs
override CHUNK: u32 = 4u * WG;  // keys per round: four per thread
const MAX_GROUP: u32 = 8u;      // query heads per KV head
// The group size when the pipeline is specialised for one (1: multi-head
// attention, whose loops over the group then compile away); 0: from Params.
override GROUP: u32 = 0u;
// Block-sparse pattern (Params block .. head_step); false: every earlier key.
override SPARSE: bool = false;
const MAX_Q_QUADS: u32 = 256u;  // group * head_dim / 4
// Thread lid accumulates V dims 4 lid .. 4 lid + 3 of every query head of
// the group, so head_dim <= 4 * WG.

var<workgroup> q_s: array<vec4<f32>, MAX_Q_QUADS>;               // [group, head_dim / 4] the queries, scaled
var<workgroup> probs: array<vec4<f32>, MAX_GROUP * WG>;          // [query, i / 4][i % 4]: softmax numerator of key c + i
var<workgroup> rows: array<vec4<u32>, WG>;                       // [i / 4][i % 4]: first cache word of key c + i
var<workgroup> red: array<array<f32, MAX_GROUP>, WG>;

// Scores of the group's queries against K[first .. first + head_dim) of the
// four K rows starting at words `row`: [query][key]. Each K value is read once
// for every query of the group; each block's scales once.
fn k_dot4(row: vec4<u32>, first: u32, head_dim: u32, kv_dim: u32, group: u32) -> array<vec4<f32>, MAX_GROUP> {
    var total: array<vec4<f32>, MAX_GROUP>;
    let quads = head_dim / 4u;
    for (var b = 0u; b < head_dim; b += KV_SCALE_BLOCK) {
        let scales = k_scales4(row, first + b, kv_dim);
        for (var i = 0u; i < KV_SCALE_BLOCK / 4u; i++) {
            let d = b + 4u * i;
            let k = k_quads4(row, first + d, kv_dim);
            for (var g = 0u; g < group; g++) {
                let qi = q_s[g * quads + d / 4u];
                // Scaled per word, not per block sum: SwiftShader got a
                // per-block accumulator wrong. Four dots, not qi * k: faster on lavapipe.
                total[g] += vec4<f32>(dot(qi, k[0]), dot(qi, k[1]), dot(qi, k[2]), dot(qi, k[3])) * scales;
            }
        }
    }
    return total;
}

// The keys a workgroup's query heads see, in block-sparse attention: blocks
// below `local_first` whose index mod vert_stride is one of the group's
// `count` stripe residues (ascending), then every key from local_first * block.
struct SparseKeys {
    local_first: u32,  // the first block every head sees
    remote_keys: u32,  // keys in the stripes below it
    count: u32,        // distinct residues
    residues: array<u32, MAX_GROUP>,
}

// Head h's stripes are the blocks k with k ≡ -(1 + h * head_step) (mod vert_stride).
fn stripe_residue(h: u32) -> u32 {
    return (p.vert_stride - (1u + h * p.head_step) % p.vert_stride) % p.vert_stride;
}

fn sparse_keys(pos: u32, first_head: u32, group: u32) -> SparseKeys {
    var s: SparseKeys;
    let q = pos / p.block;
    s.local_first = select(0u, q + 1u - p.local_blocks, q + 1u > p.local_blocks);
    // The group's residues in ascending order, each once (group <= MAX_GROUP).
    var last = 0u;
    for (var n = 0u; n < group; n++) {
        var next = p.vert_stride;  // the smallest residue above the last one taken
        for (var g = 0u; g < group; g++) {
            let r = stripe_residue(first_head + g);
            if ((n == 0u || r > last) && r < next) {
                next = r;
            }
        }
        if (next == p.vert_stride) {
            break;
        }
        s.residues[s.count] = next;
        s.count += 1u;
        last = next;
    }
    let periods = s.local_first / p.vert_stride;
    var blocks = periods * s.count;
    for (var i = 0u; i < s.count; i++) {
        blocks += u32(s.residues[i] < s.local_first % p.vert_stride);
    }
    s.remote_keys = blocks * p.block;
    return s;
}

// The position of logical key i.
fn sparse_key(s: SparseKeys, i: u32) -> u32 {
    if (i >= s.remote_keys) {
        return s.local_first * p.block + (i - s.remote_keys);
    }
    let b = i / p.block;
    let k = b / s.count * p.vert_stride + s.residues[b % s.count];
    return k * p.block + i % p.block;
}

// Whether query head h sees the keys at positions j (all <= its query).
fn sparse_sees(h: u32, j: vec4<u32>, local_first: u32) -> vec4<bool> {
    let k = j / p.block;
    return (k >= vec4<u32>(local_first)) | ((k + h * p.head_step + 1u) % p.vert_stride == vec4<u32>(0u));
}

// Per-query maxima (or sums) over the workgroup of the threads' `v`.
fn reduce_group(v: array<f32, MAX_GROUP>, lid: u32, group: u32, is_max: bool) -> array<f32, MAX_GROUP> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            for (var g = 0u; g < group; g++) {
                let a = red[lid][g];
                let b = red[lid + s][g];
                red[lid][g] = select(a + b, max(a, b), is_max);
            }
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
    let kvh = wid.y;
    let t = wid.z;
    let pos = step.pos + t;
    let kv_len = step.pos + p.tokens;
    let quads = p.head_dim / 4u;
    let group = select(p.heads / p.kv_heads, GROUP, GROUP > 0u);
    let kv_dim = p.kv_heads * p.head_dim;
    let row_words = kv_row_words(kv_dim);
    let head_first = kvh * p.head_dim;  // this KV head's first dim in a cache row

    // Keys are indexed 0 .. n_keys: positions, or SPARSE's logical keys.
    var n_keys = pos + 1u;
    var total = kv_len;
    var visible: SparseKeys;
    if (SPARSE) {
        visible = sparse_keys(pos, kvh * group, group);
        n_keys = visible.remote_keys + pos + 1u - visible.local_first * p.block;
        total = n_keys;
    }
    // This split's keys, clipped to the causal and sliding-window range. A
    // split takes at least two chunks: below that, the fixed cost of a split
    // (loading the queries, its partial result, merging it) outweighs its keys.
    let split_len = max(((total + p.splits - 1u) / p.splits + CHUNK - 1u) / CHUNK * CHUNK, 2u * CHUNK);
    var k_begin = split * split_len;
    let k_end = min(k_begin + split_len, n_keys);
    if (p.window > 0u && pos + 1u > p.window) {
        k_begin = max(k_begin, pos + 1u - p.window);
    }

    if (k_begin >= k_end) {  // an empty split (a short context): a zero partial result
        for (var g = 0u; g < group; g++) {
            let slot = (t * p.heads + kvh * group + g) * p.splits + split;
            if (lid == 0u) {
                part_ml[slot] = vec2<f32>(NEG_BIG, 0.0);
            }
            if (lid < quads) {
                part_acc[slot * quads + lid] = vec4<f32>(0.0);
            }
        }
        return;
    }

    // The group's query heads are kvh * group .. kvh * group + group - 1.
    for (var i = lid; i < group * quads; i += WG) {
        let qi = t * p.q_stride + kvh * group * p.head_dim + 4u * i;
        q_s[i] = vec4<f32>(q[qi], q[qi + 1u], q[qi + 2u], q[qi + 3u]) * p.scale;
    }
    workgroupBarrier();

    var m: array<f32, MAX_GROUP>;  // running max, sum of exp and output of each query head
    var l: array<f32, MAX_GROUP>;
    var acc: array<vec4<f32>, MAX_GROUP>;
    for (var g = 0u; g < group; g++) {
        m[g] = NEG_BIG;
    }
    for (var c = k_begin; c < k_end; c += CHUNK) {
        // Thread lid scores keys c + 4 lid .. c + 4 lid + 3 against every query.
        let i = c + 4u * lid + vec4<u32>(0u, 1u, 2u, 3u);
        let in_range = i < vec4<u32>(k_end);
        var j = i;
        if (SPARSE) {
            j = vec4<u32>(sparse_key(visible, i.x), sparse_key(visible, i.y), sparse_key(visible, i.z),
                          sparse_key(visible, i.w));
        }
        let row = (j % p.slots) * row_words;
        var score: array<vec4<f32>, MAX_GROUP>;
        if (in_range.x) {
            score = k_dot4(row, head_first, p.head_dim, kv_dim, group);
        }
        var local: array<f32, MAX_GROUP>;
        var seen: array<vec4<bool>, MAX_GROUP>;  // the keys each query head sees
        for (var g = 0u; g < group; g++) {
            seen[g] = in_range;
            if (SPARSE) {
                seen[g] = in_range & sparse_sees(kvh * group + g, j, visible.local_first);
            }
            score[g] = select(vec4<f32>(NEG_BIG), score[g], seen[g]);
            local[g] = max(max(score[g].x, score[g].y), max(score[g].z, score[g].w));
        }
        let chunk_max = reduce_group(local, lid, group, true);
        var correction: array<f32, MAX_GROUP>;
        for (var g = 0u; g < group; g++) {
            let m_new = max(m[g], chunk_max[g]);
            let prob = select(vec4<f32>(0.0), exp(score[g] - m_new), seen[g]);
            probs[g * WG + lid] = prob;
            local[g] = prob.x + prob.y + prob.z + prob.w;
            correction[g] = exp(m[g] - m_new);
            m[g] = m_new;
        }
        rows[lid] = row;
        let chunk_sum = reduce_group(local, lid, group, false);  // its barriers publish probs and rows
        for (var g = 0u; g < group; g++) {
            l[g] = l[g] * correction[g] + chunk_sum[g];
            acc[g] *= correction[g];
        }

        // Thread lid accumulates dims 4 lid .. 4 lid + 3 over the chunk's keys,
        // four keys at a time, each value read once for every query.
        let n = min(CHUNK, k_end - c);
        if (lid < quads) {
            let d = head_first + 4u * lid;
            for (var k4 = 0u; k4 < n / 4u; k4++) {
                let rw = rows[k4];
                let v0 = load_v4(rw.x, d, kv_dim);
                let v1 = load_v4(rw.y, d, kv_dim);
                let v2 = load_v4(rw.z, d, kv_dim);
                let v3 = load_v4(rw.w, d, kv_dim);
                for (var g = 0u; g < group; g++) {
                    let pr = probs[g * WG + k4];
                    acc[g] += pr.x * v0 + pr.y * v1 + pr.z * v2 + pr.w * v3;
                }
            }
            for (var jj = n / 4u * 4u; jj < n; jj++) {
                let v = load_v4(rows[jj / 4u][jj % 4u], d, kv_dim);
                for (var g = 0u; g < group; g++) {
                    acc[g] += probs[g * WG + jj / 4u][jj % 4u] * v;
                }
            }
        }
        workgroupBarrier();  // probs and rows are rewritten by the next chunk
    }

    for (var g = 0u; g < group; g++) {
        let slot = (t * p.heads + kvh * group + g) * p.splits + split;
        if (lid == 0u) {
            part_ml[slot] = vec2<f32>(m[g], l[g]);
        }
        if (lid < quads) {
            part_acc[slot * quads + lid] = acc[g];
        }
    }
}
