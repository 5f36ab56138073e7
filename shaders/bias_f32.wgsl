// Bias reader for matrix kernels with a bias (the fused epilogue of a biased
// linear layer: BERT, Phi-3-small, the MoE's attention).
@group(0) @binding(3) var<storage, read> bias_data: array<f32>;  // [bias_offset + N]

fn bias(i: u32) -> f32 {
    return bias_data[i];
}
