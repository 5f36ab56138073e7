//! Phi-3-small's block-sparse attention (attention.wgsl with SPARSE) against
//! the scalar reference of checks/attention.rs, which attends to exactly the
//! keys `BlockSparse::sees` allows: sequences that are not a multiple of the
//! block, one block, many blocks, decode at and after a block boundary,
//! stripes shifted per head and alike for all heads, groups whose heads
//! share stripes, and the f16, q8 and f32 caches.

use phi_web::config::BlockSparse;
use phi_web::gpu::KvFormat;

use super::super::Env;
use super::attention::{check_attention, Case};

/// Phi-3-small-8k's pattern: 64-position blocks, 16 local, stripes every 8th block.
const PHI3_SMALL: BlockSparse = BlockSparse { block: 64, local_blocks: 16, vert_stride: 8, head_step: 1 };

fn case(name: &'static str, heads: usize, kv_heads: usize, head_dim: usize, tokens: usize, pos0: usize) -> Case {
    Case {
        name,
        heads,
        kv_heads,
        head_dim,
        tokens,
        pos0,
        window: 0,
        splits: 1,
        ring: false,
        kv: KvFormat::F16,
        sparse: Some(PHI3_SMALL),
    }
}

pub async fn blocksparse_decode_long_context_phi3_small_heads(env: &Env) {
    // 3001 keys: 46 whole blocks and one of 57; GQA 32/8 as Phi-3-small.
    let c = Case { splits: 4, ..case("blocksparse decode kv 3001, Phi-3-small heads, 4 splits", 32, 8, 128, 1, 3000) };
    check_attention(env, &c, 51).await;
    let q8 = Case { kv: KvFormat::Q8, name: "blocksparse decode kv 3001, q8 cache", ..c };
    check_attention(env, &q8, 52).await;
}

pub async fn blocksparse_decode_at_block_boundaries(env: &Env) {
    // The first key of block 16 (the local range moves on), and the last of block 15.
    for (pos, seed) in [(1024, 53), (1023, 54)] {
        let c = Case { splits: 2, ..case("blocksparse decode at a block boundary", 8, 2, 64, 1, pos) };
        check_attention(env, &c, seed).await;
    }
}

pub async fn blocksparse_prefill_within_one_block(env: &Env) {
    check_attention(env, &case("blocksparse prefill T 5, one block", 4, 2, 32, 5, 0), 55).await;
}

pub async fn blocksparse_prefill_many_small_blocks(env: &Env) {
    // Blocks of 8, 2 local, stripes every 3rd block: 137 positions are 17
    // blocks and one of 1; the prefill starts mid-block.
    let small = BlockSparse { block: 8, local_blocks: 2, vert_stride: 3, head_step: 1 };
    let c = Case { sparse: Some(small), ..case("blocksparse prefill T 37 after 100, blocks of 8", 4, 2, 32, 37, 100) };
    check_attention(env, &c, 56).await;
    let f32_cache = Case { kv: KvFormat::F32, name: "blocksparse prefill, f32 cache", ..c };
    check_attention(env, &f32_cache, 57).await;
    // Every head alike (blocksparse_homo_head_pattern).
    let homo =
        Case { sparse: Some(BlockSparse { head_step: 0, ..small }), name: "blocksparse prefill, homo heads", ..c };
    check_attention(env, &homo, 58).await;
}

pub async fn blocksparse_groups_sharing_and_shifting_stripes(env: &Env) {
    // Eight query heads per KV head over a stride of 3: the group's stripes
    // repeat (each residue once); then a stride of 16 over 4 heads shifts
    // each head's stripes by 4 blocks.
    let shared = BlockSparse { block: 4, local_blocks: 1, vert_stride: 3, head_step: 1 };
    let c = Case { sparse: Some(shared), ..case("blocksparse decode, 8 heads share 3 stripes", 8, 1, 32, 1, 150) };
    check_attention(env, &c, 59).await;
    let shifted = BlockSparse { block: 4, local_blocks: 2, vert_stride: 16, head_step: 4 };
    let c = Case { sparse: Some(shifted), ..case("blocksparse prefill, stripes shifted by 4", 4, 4, 16, 21, 180) };
    check_attention(env, &c, 60).await;
}
