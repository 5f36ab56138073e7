// Prelude concatenated in front of every kernel.

// Per-step state written once per submit (queue.write_buffer), so that a
// recorded list of dispatches can be replayed for every token.
struct Step {
    pos: u32,   // position of the first token of this batch; the KV cache holds [0, pos + tokens)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Large 1D grids are split over x and y (at most 65535 workgroups per
// dimension); this recovers the flat workgroup index.
fn flat_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Masked scores use a finite sentinel: WGSL does not promise IEEE infinities.
const NEG_BIG: f32 = -1.0e30;
