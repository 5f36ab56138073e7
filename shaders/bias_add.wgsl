// Bias add in place on a slice of each row: y[r, offset + c] += b[c]
// (BERT's linear layers; the slice lets Q, K and V share one fused row).

struct Params {
    rows: u32,
    cols: u32,
    stride: u32,  // floats per row of y
    offset: u32,  // first float of the slice within a row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;  // [rows, stride]
@group(0) @binding(2) var<storage, read> b: array<f32>;        // [cols]

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i < p.rows * p.cols) {
        let r = i / p.cols;
        let c = i % p.cols;
        y[r * p.stride + p.offset + c] += b[c];
    }
}
