// The memory-read ceiling of `phi-web bench-gpu`: every invocation XORs the
// 16-byte words i, i + stride, ... of a buffer (consecutive invocations read
// consecutive words, the pattern a coalescing GPU reads fastest, four loads
// in flight), and each
// workgroup writes one word, so almost nothing but the reads costs anything.
// Checked against the XOR of the data (tests: read_bandwidth_xors_every_word).

struct Params {
    words: u32,  // 16-byte words in data
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<vec4<u32>>;   // [words]
@group(0) @binding(2) var<storage, read_write> out: array<u32>;    // [workgroups]

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs

var<workgroup> lanes: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let group = flat_workgroup(wid, nwg);
    let stride = nwg.x * nwg.y * WG;
    // Four loads in flight per invocation, then the tail one at a time.
    var acc = vec4<u32>(0u);
    var i = group * WG + lid;
    for (; i + 3u * stride < p.words; i += 4u * stride) {
        acc ^= data[i] ^ data[i + stride] ^ data[i + 2u * stride] ^ data[i + 3u * stride];
    }
    for (; i < p.words; i += stride) {
        acc ^= data[i];
    }
    lanes[lid] = acc.x ^ acc.y ^ acc.z ^ acc.w;
    workgroupBarrier();
    if (lid == 0u) {
        var all = 0u;
        for (var l = 0u; l < WG; l++) {
            all ^= lanes[l];
        }
        out[group] = all;
    }
}
