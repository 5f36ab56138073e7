// The Params of embedding.wgsl and embedding_any.wgsl, concatenated in front of them.

struct Params {
    rows: u32,       // rows in this table (chunk)
    cols: u32,       // hidden size (a multiple of 32; any in embedding_any)
    tokens: u32,     // T
    first_row: u32,  // vocabulary id of the chunk's row 0
}
