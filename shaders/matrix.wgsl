// The Params of every matrix kernel (matvec*, matmul_*), concatenated in
// front of them after the weight and bias readers: Y [T, N] (+)= X [T, K] W^T
// written into a slice of each output row.

struct Params {
    rows: u32,         // N, output features
    cols: u32,         // K, input features (a multiple of 32 but in matmul_any)
    tokens: u32,       // T
    y_stride: u32,     // floats per token in y (N, or more for a slice of a fused buffer)
    y_offset: u32,     // where output feature 0 goes within a token's row
    bias_offset: u32,  // bias(bias_offset + n) is added to output feature n (row chunks of a biased matrix)
    _pad0: u32,
    _pad1: u32,
}
