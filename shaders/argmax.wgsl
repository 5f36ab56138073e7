// Index of the largest value of each row (the first one on ties, as torch).

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [rows, cols]
@group(0) @binding(2) var<storage, read_write> out: array<u32>;  // [rows]

override WG: u32 = 256u;  // a power of two

var<workgroup> best_value: array<f32, WG>;
var<workgroup> best_index: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_workgroup(wid, nwg);
    if (row >= p.rows) {
        return;  // uniform per workgroup
    }
    let base = row * p.cols;
    var v = NEG_BIG;
    var idx = 0xffffffffu;
    for (var i = lid; i < p.cols; i += WG) {
        let xi = x[base + i];
        if (idx == 0xffffffffu || xi > v) {  // ascending: keeps this thread's first maximum
            v = xi;
            idx = i;
        }
    }
    best_value[lid] = v;
    best_index[lid] = idx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = best_value[lid + s];
            let oi = best_index[lid + s];
            let mine = best_index[lid];
            if (oi != 0xffffffffu && (mine == 0xffffffffu || ov > best_value[lid] || (ov == best_value[lid] && oi < mine))) {
                best_value[lid] = ov;
                best_index[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[row] = select(0u, best_index[0], best_index[0] != 0xffffffffu);
    }
}
