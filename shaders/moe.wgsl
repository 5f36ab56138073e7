// Prelude of the expert kernels (moe_route, moe_group, moe_matvec,
// moe_matmul, moe_combine): the routing a token's experts are read from.
// Tokens run `per_token` experts each; pair p = t * per_token + k is token t's
// k-th expert, in the order sparsemixer picks them.

struct Route {
    expert: u32,  // index into the layer's experts
    weight: f32,  // what the expert's output is multiplied by (not renormalised)
}

// The Params of moe_matvec and moe_matmul: Y[p] = W[expert(p)] X[row(p)] for
// P pairs, W a stack of E experts' [N, K] matrices ([E * N, K] row-major).
struct ExpertParams {
    rows: u32,        // N, one expert's output features
    cols: u32,        // K, input features (a multiple of 32)
    pairs: u32,       // P = T * per_token
    per_token: u32,   // experts per token
    x_per_pair: u32,  // 1: X is [P, K] (the down projection's input); 0: X is [T, K], pair p reads row p / per_token
    y_stride: u32,    // floats per pair in Y
    y_offset: u32,    // where output feature 0 goes in a pair's row (w1 and w3 side by side)
    experts: u32,     // E
}

// The row of X pair p reads.
fn x_row(pair: u32, per_token: u32, x_per_pair: u32) -> u32 {
    return select(pair / per_token, pair, x_per_pair == 1u);
}
