//! The kernel checks of tests/common/checks.rs in a real browser: Chromium's
//! WebGPU (SwiftShader in CI: no shader-f16, and wgpu's browser backend
//! exposes no subgroups, so this is the portable path) through wgpu's webgpu
//! backend, with every shader compiled by the browser's own WGSL compiler.
//! Run by `make test-browser` (wasm-bindgen-test-runner + chromedriver).
#![cfg(target_arch = "wasm32")]

mod common;

use std::cell::OnceCell;

use common::{checks, Env};
use phi_web::gpu::GpuOptions;
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

thread_local! {
    static ENV: OnceCell<&'static Env> = const { OnceCell::new() };
}

/// One device for all tests (they run one after another in the page).
async fn env() -> &'static Env {
    if let Some(env) = ENV.with(|cell| cell.get().copied()) {
        return env;
    }
    let env: &'static Env = Box::leak(Box::new(Env::open(GpuOptions::default()).await));
    ENV.with(|cell| {
        let _ = cell.set(env);
    });
    env
}

macro_rules! browser_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[wasm_bindgen_test]
            async fn $check() {
                checks::$check(env().await).await;
            }
        )*
    };
}

browser_tests!(
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
