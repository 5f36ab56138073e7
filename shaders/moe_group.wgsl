// Groups the routed pairs by expert for the prefill's moe_matmul: a counting
// sort, done by one invocation (P = T * 2 <= a few hundred pairs, E <= 256).
// Within an expert, pairs keep their order. Concatenated after moe.wgsl.

struct Params {
    pairs: u32,    // P
    experts: u32,  // E
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> routes: array<Route>;                // [P]
@group(0) @binding(2) var<storage, read_write> groups: array<vec2<u32>>;      // [E] (first slot in order, pairs)
@group(0) @binding(3) var<storage, read_write> order: array<u32>;             // [P] pair indices, by expert

override WG: u32;  // workgroup size: Shader::wg in src/gpu/kernels/mod.rs (1)

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    if (lid != 0u) {
        return;
    }
    for (var e = 0u; e < p.experts; e++) {
        groups[e] = vec2<u32>(0u, 0u);
    }
    for (var i = 0u; i < p.pairs; i++) {
        let e = routes[i].expert;
        groups[e].y += 1u;
    }
    var first = 0u;
    for (var e = 0u; e < p.experts; e++) {
        groups[e].x = first;
        first += groups[e].y;
        groups[e].y = 0u;  // counted again below, as the cursor
    }
    for (var i = 0u; i < p.pairs; i++) {
        let e = routes[i].expert;
        order[groups[e].x + groups[e].y] = i;
        groups[e].y += 1u;
    }
}
