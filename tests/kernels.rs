//! Every kernel against its scalar reference on the native adapter (lavapipe
//! in CI). The checks themselves live in tests/common/checks.rs and run in the
//! browser too (tests/browser.rs).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{checks, env, portable_env};

macro_rules! native_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                pollster::block_on(checks::$check(env()));
            }
        )*
    };
}

native_tests!(
    matvec_every_format,
    matmul_every_format,
    matrix_kernels_every_tuning,
    matvec_every_sweep_point,
    matvec_after_silu_mul_every_format,
    read_bandwidth_xors_every_word,
    linear_into_slices_of_a_fused_buffer,
    embedding_every_format,
    wrong_shapes_are_errors_not_out_of_bounds_reads,
    matrix_chunk_at_the_binding_limit,
    rms_norm_rows,
    add_rms_norm_rows,
    layer_norm_rows,
    silu_mul_over_fused_gate_up,
    gegelu_clamps_and_gates,
    scale_in_place,
    gelu_erf_tanh_and_quick,
    add_in_place,
    splice_rows_over_flagged_tokens,
    linear_with_bias_any_shape,
    embedding_any_shape,
    kv_append_f32_is_exact,
    attention_decode_long_context_f32_cache,
    attention_prefill_with_window_in_an_f32_ring,
    encoder_attention_within_packed_sequences,
    softmax_rows,
    argmax_rows_first_maximum_wins,
    rope_neox_partial_longrope_and_large_positions,
    kv_append_packs_f16_at_the_step_position,
    kv_append_q8_rounds_each_block_to_its_scale,
    attention_decode_single_key,
    blocksparse_decode_long_context_phi3_small_heads,
    blocksparse_decode_at_block_boundaries,
    blocksparse_prefill_within_one_block,
    blocksparse_prefill_many_small_blocks,
    blocksparse_groups_sharing_and_shifting_stripes,
    attention_decode_long_context_split,
    attention_decode_one_split_long_context,
    attention_decode_sliding_window,
    attention_decode_sliding_window_ring,
    attention_prefill_from_empty_cache,
    attention_prefill_after_a_prefix_with_window,
    attention_prefill_with_window_in_a_ring,
    attention_decode_long_context_q8_cache,
    attention_prefill_with_window_in_a_q8_ring,
    attention_rejects_bad_head_grouping,
    moe_routing_matches_sparsemixer,
    expert_linear_over_a_stack_every_format,
    moe_combine_adds_weighted_experts,
);

/// The matrix kernels again on a device without shader-f16 and subgroups,
/// with the GPU tiles (the default device takes lavapipe's CPU tiles and the
/// portable matvec; matrix_kernels_every_tuning runs every tiling with and
/// without subgroups).
#[test]
fn matvec_every_format_portable() {
    pollster::block_on(checks::matvec_every_format(portable_env()));
}

#[test]
fn matmul_every_format_portable() {
    pollster::block_on(checks::matmul_every_format(portable_env()));
}

#[test]
fn linear_with_bias_any_shape_portable() {
    pollster::block_on(checks::linear_with_bias_any_shape(portable_env()));
}

#[test]
fn expert_linear_over_a_stack_every_format_portable() {
    pollster::block_on(checks::expert_linear_over_a_stack_every_format(portable_env()));
}
