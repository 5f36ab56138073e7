// Workgroup reductions, concatenated in front of the kernels that reduce a
// row (rms_norm, layer_norm, softmax, argmax, encoder_attention). They need
// the includer's `override WG` (a power of two) and must be called by every
// invocation of the workgroup (they contain barriers).

var<workgroup> reduce_values: array<f32, WG>;
var<workgroup> reduce_indices: array<u32, WG>;

// The sum (or, with is_max, the maximum) of `value` over the workgroup.
fn workgroup_reduce(value: f32, lid: u32, is_max: bool) -> f32 {
    reduce_values[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            let a = reduce_values[lid];
            let b = reduce_values[lid + stride];
            reduce_values[lid] = select(a + b, max(a, b), is_max);
        }
        workgroupBarrier();
    }
    let total = reduce_values[0];
    workgroupBarrier();  // reduce_values is reused by the next call
    return total;
}

fn workgroup_sum(value: f32, lid: u32) -> f32 {
    return workgroup_reduce(value, lid, false);
}

fn workgroup_max(value: f32, lid: u32) -> f32 {
    return workgroup_reduce(value, lid, true);
}

// NO_INDEX marks an invocation that saw no value.
const NO_INDEX: u32 = 0xffffffffu;

// The index of the workgroup's largest `value` (the smallest index on ties);
// NO_INDEX when no invocation had one.
fn workgroup_argmax(value: f32, index: u32, lid: u32) -> u32 {
    reduce_values[lid] = value;
    reduce_indices[lid] = index;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            let ov = reduce_values[lid + stride];
            let oi = reduce_indices[lid + stride];
            let mine = reduce_indices[lid];
            if (oi != NO_INDEX && (mine == NO_INDEX || ov > reduce_values[lid] || (ov == reduce_values[lid] && oi < mine))) {
                reduce_values[lid] = ov;
                reduce_indices[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let best = reduce_indices[0];
    workgroupBarrier();
    return best;
}
