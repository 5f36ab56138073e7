//! RoPE, the KV-cache appends (f16, q8, f32), causal attention over the
//! cache (GQA, windows, rings, decode splits and prefill) and the encoders'
//! attention, against f64 references.

use half::f16;
use phi_web::config::BlockSparse;
use phi_web::gpu::{AttentionScratch, AttentionShape, KvAppendShape, KvFormat, RopeShape};

use super::super::{assert_close, assert_close_rel, Env, Rng};

// ---- RoPE, KV append, split causal attention (GQA, window, decode and prefill)

/// inv_freq[i] = 1 / (factor[i] * theta^(2i / rot_dim)), as HF computes it in f32.
fn inv_freq(theta: f32, rot_dim: usize, factors: Option<&[f32]>) -> Vec<f32> {
    (0..rot_dim / 2)
        .map(|i| {
            let base = theta.powf((2 * i) as f32 / rot_dim as f32);
            1.0 / (factors.map_or(1.0, |f| f[i]) * base)
        })
        .collect()
}

pub async fn rope_neox_partial_longrope_and_large_positions(env: &Env) {
    struct RopeCase<'a> {
        head_dim: usize,
        rot_dim: usize,
        heads: usize,
        theta: f32,
        long_factors: Option<&'a [f32]>,
        attn_factor: f32,
        pos0: u32,
    }
    let long: Vec<f32> = (0..48).map(|i| 1.0 + i as f32 * 1.5).collect();
    let cases = [
        // Phi-3-mini
        RopeCase {
            head_dim: 96,
            rot_dim: 96,
            heads: 4,
            theta: 10_000.0,
            long_factors: None,
            attn_factor: 1.0,
            pos0: 0,
        },
        // Phi-4-mini: partial rotary
        RopeCase {
            head_dim: 128,
            rot_dim: 96,
            heads: 3,
            theta: 10_000.0,
            long_factors: None,
            attn_factor: 1.0,
            pos0: 17,
        },
        // LongRoPE near 128k positions
        RopeCase {
            head_dim: 96,
            rot_dim: 96,
            heads: 2,
            theta: 10_000.0,
            long_factors: Some(&long),
            attn_factor: 1.190_238,
            pos0: 131_000,
        },
        // Phi-4's theta
        RopeCase {
            head_dim: 128,
            rot_dim: 128,
            heads: 2,
            theta: 250_000.0,
            long_factors: None,
            attn_factor: 1.0,
            pos0: 4090,
        },
    ];
    for (case, c) in cases.iter().enumerate() {
        let RopeCase { head_dim, rot_dim, heads, theta, long_factors: factors, attn_factor, pos0 } = *c;
        let tokens = 5;
        // The rotated heads sit after `offset` floats of each row, as Q or K in a fused QKV row.
        let offset = head_dim;
        let row_stride = offset + heads * head_dim + 8;
        let xv = Rng::new(case as u64).vec(tokens * row_stride, -1.0, 1.0);
        let freqs = inv_freq(theta, rot_dim, factors);
        let (x, f, step) = (env.upload_f32("x", &xv), env.upload_f32("inv_freq", &freqs), env.gpu().step_buffer(pos0));
        let shape = RopeShape { tokens, heads, head_dim, rot_dim, row_stride, offset, attn_factor };
        env.run(&[&env.kernels().rope(&step, &f, &x, &shape).unwrap()]);

        let mut expected: Vec<f64> = xv.iter().map(|&v| v as f64).collect();
        for t in 0..tokens {
            for h in 0..heads {
                let base = t * row_stride + offset + h * head_dim;
                for i in 0..rot_dim / 2 {
                    let angle = ((pos0 + t as u32) as f32 * freqs[i]) as f64; // f32 product, as HF
                    let (c, s) = (angle.cos() * attn_factor as f64, angle.sin() * attn_factor as f64);
                    let (x1, x2) = (xv[base + i] as f64, xv[base + i + rot_dim / 2] as f64);
                    expected[base + i] = x1 * c - x2 * s;
                    expected[base + i + rot_dim / 2] = x2 * c + x1 * s;
                }
            }
        }
        let what = format!("rope head_dim {head_dim} rot {rot_dim} pos {pos0}");
        assert_close(&what, &env.read_f32(&x, xv.len()).await, &expected, &vec![1.0; xv.len()], 2e-6, 0.0);
    }
}

pub async fn kv_append_packs_f16_at_the_step_position(env: &Env) {
    // A plain cache, then a ring of 40 slots that positions 60..96 wrap around.
    for (slots, pos0) in [(64, 20u32), (40, 60)] {
        let (tokens, kv_dim) = (37, 2 * 96);
        let src_stride = 3 * kv_dim;
        let src_offset = kv_dim; // K of a [Q | K | V] row; V follows it
        let sv = Rng::new(12).vec(tokens * src_stride, -4.0, 4.0);
        let cache = || env.gpu().storage("cache", (slots * kv_dim * 2) as u64).unwrap();
        let (src, k, v, step) = (env.upload_f32("src", &sv), cache(), cache(), env.gpu().step_buffer(pos0));
        let shape = KvAppendShape { tokens, kv_dim, src_stride, src_offset, slots, format: KvFormat::F16 };
        env.run(&[&env.kernels().kv_append(&step, &src, &k, &v, &shape).unwrap()]);
        for (which, cache) in [(0, &k), (1, &v)] {
            let words = env.read_u32(cache, slots * kv_dim / 2).await;
            let got: Vec<f32> = words
                .iter()
                .flat_map(|w| [f16::from_bits(*w as u16).to_f32(), f16::from_bits((*w >> 16) as u16).to_f32()])
                .collect();
            let mut expected = vec![0.0f64; slots * kv_dim];
            for t in 0..tokens {
                let slot = (pos0 as usize + t) % slots;
                for j in 0..kv_dim {
                    expected[slot * kv_dim + j] = sv[t * src_stride + src_offset + which * kv_dim + j] as f64;
                }
            }
            // f32 -> f16 rounds to 11 significant bits.
            let what = format!("kv_append {}, {slots} slots", ["K", "V"][which]);
            assert_close_rel(&what, &got, &expected, 0.0, 1.0 / 1024.0);
        }
    }
    // More tokens than slots would race for a slot: an error, not a write.
    let shape = KvAppendShape { tokens: 9, kv_dim: 4, src_stride: 12, src_offset: 4, slots: 8, format: KvFormat::F16 };
    let buf = env.zeros("buf", 4096);
    let step = env.gpu().step_buffer(0);
    let err = env.kernels().kv_append(&step, &buf, &buf, &buf, &shape).unwrap_err();
    assert!(err.to_string().contains("9 tokens would overwrite each other"), "{err}");
    // An 8-bit cache stores whole blocks of 32.
    let shape = KvAppendShape { tokens: 1, kv_dim: 48, src_stride: 96, src_offset: 0, slots: 8, format: KvFormat::Q8 };
    let err = env.kernels().kv_append(&step, &buf, &buf, &buf, &shape).unwrap_err();
    assert!(err.to_string().contains("a q8 KV cache cannot hold rows of 48 values"), "{err}");
    // V must fit the row after K.
    let shape = KvAppendShape { tokens: 1, kv_dim: 4, src_stride: 12, src_offset: 8, slots: 8, format: KvFormat::F16 };
    let err = env.kernels().kv_append(&step, &buf, &buf, &buf, &shape).unwrap_err();
    assert!(err.to_string().contains("K and V of 4 values at offset 8 must fit rows of 12"), "{err}");
}

/// The 8-bit cache: every value within half a step (scale / 127 / 2) of its
/// source, scale = the block's largest magnitude, slots not written stay 0.
pub async fn kv_append_q8_rounds_each_block_to_its_scale(env: &Env) {
    for (slots, pos0) in [(64, 20u32), (40, 60)] {
        let (tokens, kv_dim) = (37, 2 * 96);
        let (src_stride, k_offset) = (3 * kv_dim, kv_dim);
        let mut sv = Rng::new(14).vec(tokens * src_stride, -4.0, 4.0);
        sv[k_offset..k_offset + 32].fill(0.0); // an all-zero block: scale 0, no NaN
        let (src, step) = (env.upload_f32("src", &sv), env.gpu().step_buffer(pos0));
        let row_words = KvFormat::Q8.row_bytes(kv_dim) / 4;
        let cache = || env.gpu().storage("cache", (slots * row_words * 4) as u64).unwrap();
        let (k, v) = (cache(), cache());
        let shape = KvAppendShape { tokens, kv_dim, src_stride, src_offset: k_offset, slots, format: KvFormat::Q8 };
        env.run(&[&env.kernels().kv_append(&step, &src, &k, &v, &shape).unwrap()]);
        for (src_offset, cache) in [(k_offset, &k), (k_offset + kv_dim, &v)] {
            let words = env.read_u32(cache, slots * row_words).await;
            let written: Vec<usize> = (0..tokens).map(|t| (pos0 as usize + t) % slots).collect();
            for slot in (0..slots).filter(|s| !written.contains(s)) {
                assert!(words[slot * row_words..][..row_words].iter().all(|w| *w == 0), "slot {slot} was written");
            }
            for (t, &slot) in written.iter().enumerate() {
                let row = &words[slot * row_words..][..row_words];
                let codes: &[u8] = bytemuck::cast_slice(&row[..kv_dim / 4]);
                for (b, block) in sv[t * src_stride + src_offset..][..kv_dim].chunks(KvFormat::Q8_BLOCK).enumerate() {
                    let scale = f32::from_bits(row[kv_dim / 4 + b]);
                    let largest = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    assert_eq!(scale, largest, "token {t} block {b}: scale");
                    for (i, &v) in block.iter().enumerate() {
                        let code = codes[b * KvFormat::Q8_BLOCK + i] as i8;
                        let decoded = code as f64 / 127.0 * scale as f64;
                        let half_step = scale as f64 / 127.0 / 2.0;
                        assert!(
                            (decoded - v as f64).abs() <= half_step * (1.0 + 1e-5) && code != i8::MIN,
                            "token {t} value {}: {v} stored as {code} (scale {scale})",
                            b * KvFormat::Q8_BLOCK + i
                        );
                    }
                }
            }
        }
    }
}

/// The f32 cache holds every value exactly, at its position's slot.
pub async fn kv_append_f32_is_exact(env: &Env) {
    for (slots, pos0) in [(64, 20u32), (40, 60)] {
        let (tokens, kv_dim) = (37, 2 * 36);
        let (src_stride, k_offset) = (4 * kv_dim, 2 * kv_dim); // K and V of a wider row
        let sv = Rng::new(16).vec(tokens * src_stride, -4.0, 4.0);
        let (src, step) = (env.upload_f32("src", &sv), env.gpu().step_buffer(pos0));
        let cache = || env.gpu().storage("cache", (slots * kv_dim * 4) as u64).unwrap();
        let (k, v) = (cache(), cache());
        let shape = KvAppendShape { tokens, kv_dim, src_stride, src_offset: k_offset, slots, format: KvFormat::F32 };
        env.run(&[&env.kernels().kv_append(&step, &src, &k, &v, &shape).unwrap()]);
        for (src_offset, cache) in [(k_offset, &k), (k_offset + kv_dim, &v)] {
            let mut expected = vec![0.0f64; slots * kv_dim];
            for t in 0..tokens {
                let slot = (pos0 as usize + t) % slots;
                for j in 0..kv_dim {
                    expected[slot * kv_dim + j] = sv[t * src_stride + src_offset + j] as f64;
                }
            }
            let got = env.read_f32(cache, slots * kv_dim).await;
            assert_close_rel(&format!("kv_append f32 at {src_offset}, {slots} slots"), &got, &expected, 0.0, 0.0);
        }
    }
}

/// One cache row of `values` as the GPU stores it in `format`, and the values
/// it decodes to.
fn encode_kv_row(format: KvFormat, values: &[f32]) -> (Vec<u8>, Vec<f64>) {
    match format {
        KvFormat::F16 => {
            let half: Vec<f16> = values.iter().map(|v| f16::from_f32(*v)).collect();
            (bytemuck::cast_slice(&half).to_vec(), half.iter().map(|v| v.to_f64()).collect())
        }
        KvFormat::F32 => (bytemuck::cast_slice(values).to_vec(), values.iter().map(|v| *v as f64).collect()),
        KvFormat::Q8 => {
            let (mut bytes, mut scales, mut decoded) = (Vec::new(), Vec::new(), Vec::new());
            for block in values.chunks(KvFormat::Q8_BLOCK) {
                let scale = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                scales.extend(scale.to_le_bytes());
                for v in block {
                    let code = if scale > 0.0 { (v / scale * 127.0).round() as i8 } else { 0 };
                    bytes.push(code as u8);
                    decoded.push(code as f64 / 127.0 * scale as f64);
                }
            }
            bytes.extend(scales);
            (bytes, decoded)
        }
    }
}

pub(super) struct Case {
    pub name: &'static str,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub tokens: usize,
    pub pos0: usize,
    pub window: usize,
    pub splits: usize,
    /// Keep only the last window + tokens positions, in a ring (key j in slot j % slots).
    pub ring: bool,
    pub kv: KvFormat,
    /// Block-sparse pattern (no window with it).
    pub sparse: Option<BlockSparse>,
}

/// Checks attention of `tokens` queries at positions pos0.. over a cache of
/// pos0 + tokens random keys and values, stored as `c.kv`.
pub(super) async fn check_attention(env: &Env, c: &Case, seed: u64) {
    let kv_len = c.pos0 + c.tokens;
    let capacity = kv_len + 3;
    let slots = if c.ring { c.window + c.tokens } else { capacity };
    let kv_dim = c.kv_heads * c.head_dim;
    let q_stride = (c.heads + 2 * c.kv_heads) * c.head_dim; // a fused QKV row
    let mut rng = Rng::new(seed);
    let qv = rng.vec(c.tokens * q_stride, -1.0, 1.0);
    // Each position's row encoded as the GPU stores it, and what it decodes to.
    let mut cache_rows = || -> Vec<(Vec<u8>, Vec<f64>)> {
        (0..capacity).map(|_| encode_kv_row(c.kv, &rng.vec(kv_dim, -1.0, 1.0))).collect()
    };
    let (k_rows, v_rows) = (cache_rows(), cache_rows());
    let scale = 1.0 / (c.head_dim as f32).sqrt();
    let shape = AttentionShape {
        tokens: c.tokens,
        heads: c.heads,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        q_stride,
        slots,
        window: c.window,
        scale,
        splits: c.splits,
        kv_format: c.kv,
        sparse: c.sparse,
    };
    // The cache as the GPU holds it: position p in slot p % slots (the ring
    // keeps only the last `slots` positions).
    let row_bytes = c.kv.row_bytes(kv_dim);
    let cache_of = |rows: &[(Vec<u8>, Vec<f64>)]| -> Vec<u8> {
        let mut cache = vec![0u8; slots * row_bytes];
        for p in kv_len.saturating_sub(slots)..kv_len {
            cache[(p % slots) * row_bytes..][..row_bytes].copy_from_slice(&rows[p].0);
        }
        cache
    };

    let q = env.upload_f32("q", &qv);
    let k = env.gpu().storage_with("k", &cache_of(&k_rows)).unwrap();
    let v = env.gpu().storage_with("v", &cache_of(&v_rows)).unwrap();
    let out = env.zeros("out", c.tokens * c.heads * c.head_dim);
    let scratch = AttentionScratch::new(env.gpu(), &shape).unwrap();
    let step = env.gpu().step_buffer(c.pos0 as u32);
    let [split_pass, combine] = env.kernels().attention(&step, &q, &k, &v, &scratch, &out, &shape).unwrap();
    env.run(&[&split_pass, &combine]);

    let group = c.heads / c.kv_heads;
    let mut expected = vec![0.0f64; c.tokens * c.heads * c.head_dim];
    for t in 0..c.tokens {
        let pos = c.pos0 + t;
        let first = if c.window > 0 { (pos + 1).saturating_sub(c.window) } else { 0 };
        for h in 0..c.heads {
            let kvh = h / group;
            let qh = &qv[t * q_stride + h * c.head_dim..][..c.head_dim];
            let seen: Vec<usize> = (first..=pos).filter(|&j| c.sparse.is_none_or(|b| b.sees(h, pos, j))).collect();
            let scores: Vec<f64> = seen
                .iter()
                .map(|&j| {
                    let kj = &k_rows[j].1[kvh * c.head_dim..][..c.head_dim];
                    qh.iter().zip(kj).map(|(a, b)| *a as f64 * b).sum::<f64>() * scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..c.head_dim {
                let acc: f64 = seen.iter().zip(&weights).map(|(&j, w)| w * v_rows[j].1[kvh * c.head_dim + d]).sum();
                expected[(t * c.heads + h) * c.head_dim + d] = acc / total;
            }
        }
    }
    let n = expected.len();
    // Outputs are convex combinations of values in [-1, 1]; f32 softmax and accumulation.
    assert_close(c.name, &env.read_f32(&out, n).await, &expected, &vec![1.0; n], 2e-5, 0.0);
}

pub async fn attention_decode_single_key(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 1, hd 96, group 1",
            heads: 4,
            kv_heads: 4,
            head_dim: 96,
            tokens: 1,
            pos0: 0,
            window: 0,
            splits: 4,
            ring: false,
            kv: KvFormat::F16,
            sparse: None,
        },
        1,
    )
    .await;
}

pub async fn attention_decode_long_context_split(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 4096, hd 128, group 3, 16 splits",
            heads: 6,
            kv_heads: 2,
            head_dim: 128,
            tokens: 1,
            pos0: 4095,
            window: 0,
            splits: 16,
            ring: false,
            kv: KvFormat::F16,
            sparse: None,
        },
        2,
    )
    .await;
}

pub async fn attention_decode_one_split_long_context(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 4096, hd 96, group 4, 1 split",
            heads: 4,
            kv_heads: 1,
            head_dim: 96,
            tokens: 1,
            pos0: 4095,
            window: 0,
            splits: 1,
            ring: false,
            kv: KvFormat::F16,
            sparse: None,
        },
        3,
    )
    .await;
}

pub async fn attention_decode_sliding_window(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 3000, window 2047, hd 96",
            heads: 4,
            kv_heads: 4,
            head_dim: 96,
            tokens: 1,
            pos0: 2999,
            window: 2047,
            splits: 12,
            ring: false,
            kv: KvFormat::F16,
            sparse: None,
        },
        4,
    )
    .await;
}

pub async fn attention_decode_sliding_window_ring(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 3000, window 2047, ring of 2048 slots",
            heads: 4,
            kv_heads: 2,
            head_dim: 96,
            tokens: 1,
            pos0: 2999,
            window: 2047,
            splits: 12,
            ring: true,
            kv: KvFormat::F16,
            sparse: None,
        },
        7,
    )
    .await;
}

pub async fn attention_prefill_from_empty_cache(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 37, hd 96, group 4",
            heads: 8,
            kv_heads: 2,
            head_dim: 96,
            tokens: 37,
            pos0: 0,
            window: 0,
            splits: 1,
            ring: false,
            kv: KvFormat::F16,
            sparse: None,
        },
        5,
    )
    .await;
}

pub async fn attention_prefill_after_a_prefix_with_window(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 37 after 100, window 16, hd 128, group 3",
            heads: 3,
            kv_heads: 1,
            head_dim: 128,
            tokens: 37,
            pos0: 100,
            window: 16,
            splits: 2,
            ring: false,
            kv: KvFormat::F16,
            sparse: None,
        },
        6,
    )
    .await;
}

pub async fn attention_prefill_with_window_in_a_ring(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 37 after 100, window 16, ring of 53 slots",
            heads: 3,
            kv_heads: 1,
            head_dim: 128,
            tokens: 37,
            pos0: 100,
            window: 16,
            splits: 2,
            ring: true,
            kv: KvFormat::F16,
            sparse: None,
        },
        8,
    )
    .await;
}

pub async fn attention_decode_long_context_q8_cache(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 4096, hd 96, group 4, 16 splits, q8 cache",
            heads: 8,
            kv_heads: 2,
            head_dim: 96,
            tokens: 1,
            pos0: 4095,
            window: 0,
            splits: 16,
            ring: false,
            kv: KvFormat::Q8,
            sparse: None,
        },
        9,
    )
    .await;
}

pub async fn attention_prefill_with_window_in_a_q8_ring(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 37 after 100, window 16, ring of 53 slots, q8 cache",
            heads: 3,
            kv_heads: 1,
            head_dim: 128,
            tokens: 37,
            pos0: 100,
            window: 16,
            splits: 2,
            ring: true,
            kv: KvFormat::Q8,
            sparse: None,
        },
        10,
    )
    .await;
}

pub async fn attention_rejects_bad_head_grouping(env: &Env) {
    let shape = AttentionShape {
        tokens: 1,
        heads: 5,
        kv_heads: 2,
        head_dim: 64,
        q_stride: 5 * 64,
        slots: 8,
        window: 0,
        scale: 0.125,
        splits: 1,
        kv_format: KvFormat::F16,
        sparse: None,
    };
    let buf = env.zeros("buf", 4096);
    let scratch = AttentionScratch::new(env.gpu(), &shape).unwrap();
    let step = env.gpu().step_buffer(0);
    let err = env.kernels().attention(&step, &buf, &buf, &buf, &scratch, &buf, &shape).unwrap_err();
    assert!(err.to_string().contains("5 query heads cannot share 2 KV heads"), "{err}");
}

pub async fn encoder_attention_within_packed_sequences(env: &Env) {
    // Three sequences packed back to back, one of them the longest allowed.
    let (heads, d) = (12, 32);
    let lengths = [5usize, 1, 512];
    let tokens: usize = lengths.iter().sum();
    let width = heads * d;
    let qkv_v = Rng::new(13).vec(tokens * 3 * width, -2.0, 2.0);
    let mut segments = Vec::new();
    let mut start = 0;
    for &len in &lengths {
        for _ in 0..len {
            segments.extend([start as u32, (start + len) as u32]);
        }
        start += len;
    }
    let (qkv, segs, out) =
        (env.upload_f32("qkv", &qkv_v), env.upload_u32("segments", &segments), env.zeros("out", tokens * width));
    env.run(&[&env.kernels().encoder_attention(&qkv, &segs, &out, tokens, heads, d).unwrap()]);
    let scale = 1.0 / (d as f64).sqrt();
    let at = |t: usize, part: usize, h: usize, i: usize| qkv_v[t * 3 * width + part * width + h * d + i] as f64;
    let mut expected = vec![0.0; tokens * width];
    for t in 0..tokens {
        let (s, e) = (segments[2 * t] as usize, segments[2 * t + 1] as usize);
        for h in 0..heads {
            let scores: Vec<f64> =
                (s..e).map(|j| (0..d).map(|i| at(t, 0, h, i) * at(j, 1, h, i)).sum::<f64>() * scale).collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for i in 0..d {
                expected[t * width + h * d + i] =
                    (s..e).zip(&weights).map(|(j, w)| w * at(j, 2, h, i)).sum::<f64>() / sum;
            }
        }
    }
    assert_close_rel("encoder_attention", &env.read_f32(&out, tokens * width).await, &expected, 1e-6, 1e-4);
}

pub async fn attention_decode_long_context_f32_cache(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention decode kv 2048, hd 64, group 3, 4 splits, f32 cache",
            heads: 6,
            kv_heads: 2,
            head_dim: 64,
            tokens: 1,
            pos0: 2047,
            window: 0,
            splits: 4,
            ring: false,
            kv: KvFormat::F32,
            sparse: None,
        },
        11,
    )
    .await;
}

/// head_dim 36 (a tiny Llama of hidden size 144), in an f32 ring.
pub async fn attention_prefill_with_window_in_an_f32_ring(env: &Env) {
    check_attention(
        env,
        &Case {
            name: "attention prefill T 21 after 50, hd 36, window 8, ring of 29 slots, f32 cache",
            heads: 4,
            kv_heads: 2,
            head_dim: 36,
            tokens: 21,
            pos0: 50,
            window: 8,
            splits: 1,
            ring: true,
            kv: KvFormat::F32,
            sparse: None,
        },
        12,
    )
    .await;
}
