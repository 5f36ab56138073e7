//! RoPE, the KV cache append, and split causal attention (GQA, sliding
//! window, decode and prefill forms) against scalar f64 references.

mod common;

use common::{assert_close, assert_close_rel, env, Rng};
use half::f16;
use phi_web::gpu::{AttentionScratch, AttentionShape, KvAppendShape, RopeShape};

/// inv_freq[i] = 1 / (factor[i] * theta^(2i / rot_dim)), as HF computes it in f32.
fn inv_freq(theta: f32, rot_dim: usize, factors: Option<&[f32]>) -> Vec<f32> {
    (0..rot_dim / 2)
        .map(|i| {
            let base = theta.powf((2 * i) as f32 / rot_dim as f32);
            1.0 / (factors.map_or(1.0, |f| f[i]) * base)
        })
        .collect()
}

#[test]
fn rope_neox_partial_longrope_and_large_positions() {
    let env = env();
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
        let RopeCase {
            head_dim,
            rot_dim,
            heads,
            theta,
            long_factors: factors,
            attn_factor,
            pos0,
        } = *c;
        let tokens = 5;
        // The rotated heads sit after `offset` floats of each row, as Q or K in a fused QKV row.
        let offset = head_dim;
        let row_stride = offset + heads * head_dim + 8;
        let xv = Rng::new(case as u64).vec(tokens * row_stride, -1.0, 1.0);
        let freqs = inv_freq(theta, rot_dim, factors);
        let (x, f, step) = (
            env.upload_f32("x", &xv),
            env.upload_f32("inv_freq", &freqs),
            env.gpu.step_buffer(pos0),
        );
        let shape = RopeShape {
            tokens,
            heads,
            head_dim,
            rot_dim,
            row_stride,
            offset,
            attn_factor,
        };
        env.run(&[&env.kernels.rope(&step, &f, &x, &shape).unwrap()]);

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
        assert_close(
            &what,
            &env.read_f32(&x, xv.len()),
            &expected,
            &vec![1.0; xv.len()],
            2e-6,
            0.0,
        );
    }
}

#[test]
fn kv_append_packs_f16_at_the_step_position() {
    let env = env();
    let (tokens, kv_dim, capacity, pos0) = (37, 2 * 96, 64, 20);
    let src_stride = 3 * kv_dim;
    let src_offset = kv_dim; // the K slice of a [Q | K | V] row
    let sv = Rng::new(12).vec(tokens * src_stride, -4.0, 4.0);
    let (src, cache, step) = (
        env.upload_f32("src", &sv),
        env.gpu.storage("cache", (capacity * kv_dim * 2) as u64).unwrap(),
        env.gpu.step_buffer(pos0),
    );
    let shape = KvAppendShape {
        tokens,
        kv_dim,
        src_stride,
        src_offset,
        capacity,
    };
    env.run(&[&env.kernels.kv_append(&step, &src, &cache, &shape).unwrap()]);
    let words = env.read_u32(&cache, capacity * kv_dim / 2);
    let got: Vec<f32> = words
        .iter()
        .flat_map(|w| {
            [
                f16::from_bits(*w as u16).to_f32(),
                f16::from_bits((*w >> 16) as u16).to_f32(),
            ]
        })
        .collect();
    let mut expected = vec![0.0f64; capacity * kv_dim];
    for t in 0..tokens {
        let pos = pos0 as usize + t;
        if pos < capacity {
            for j in 0..kv_dim {
                expected[pos * kv_dim + j] = sv[t * src_stride + src_offset + j] as f64;
            }
        }
    }
    // f32 -> f16 rounds to 11 significant bits; positions past capacity are dropped.
    assert_close_rel("kv_append", &got, &expected, 0.0, 1.0 / 1024.0);
}

struct Case {
    name: &'static str,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    tokens: usize,
    pos0: usize,
    window: usize,
    splits: usize,
}

/// Checks attention of `tokens` queries at positions pos0.. over a cache of
/// pos0 + tokens random f16 keys and values.
fn check_attention(c: &Case, seed: u64) {
    let env = env();
    let kv_len = c.pos0 + c.tokens;
    let capacity = kv_len + 3;
    let kv_dim = c.kv_heads * c.head_dim;
    let q_stride = (c.heads + 2 * c.kv_heads) * c.head_dim; // a fused QKV row
    let mut rng = Rng::new(seed);
    let qv = rng.vec(c.tokens * q_stride, -1.0, 1.0);
    let k_half: Vec<f16> = (0..capacity * kv_dim)
        .map(|_| f16::from_f32(rng.uniform(-1.0, 1.0)))
        .collect();
    let v_half: Vec<f16> = (0..capacity * kv_dim)
        .map(|_| f16::from_f32(rng.uniform(-1.0, 1.0)))
        .collect();
    let scale = 1.0 / (c.head_dim as f32).sqrt();
    let shape = AttentionShape {
        tokens: c.tokens,
        heads: c.heads,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        q_stride,
        capacity,
        window: c.window,
        scale,
        splits: c.splits,
    };

    let q = env.upload_f32("q", &qv);
    let k = env.gpu.storage_with("k", bytemuck::cast_slice(&k_half)).unwrap();
    let v = env.gpu.storage_with("v", bytemuck::cast_slice(&v_half)).unwrap();
    let out = env.zeros("out", c.tokens * c.heads * c.head_dim);
    let scratch = AttentionScratch::new(&env.gpu, &shape).unwrap();
    let step = env.gpu.step_buffer(c.pos0 as u32);
    let [split_pass, combine] = env
        .kernels
        .attention(&step, &q, &k, &v, &scratch, &out, &shape)
        .unwrap();
    env.run(&[&split_pass, &combine]);

    let group = c.heads / c.kv_heads;
    let mut expected = vec![0.0f64; c.tokens * c.heads * c.head_dim];
    for t in 0..c.tokens {
        let pos = c.pos0 + t;
        let first = if c.window > 0 {
            (pos + 1).saturating_sub(c.window)
        } else {
            0
        };
        for h in 0..c.heads {
            let kvh = h / group;
            let qh = &qv[t * q_stride + h * c.head_dim..][..c.head_dim];
            let scores: Vec<f64> = (first..=pos)
                .map(|j| {
                    let kj = &k_half[j * kv_dim + kvh * c.head_dim..][..c.head_dim];
                    qh.iter().zip(kj).map(|(a, b)| *a as f64 * b.to_f64()).sum::<f64>() * scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..c.head_dim {
                let acc: f64 = (first..=pos)
                    .zip(&weights)
                    .map(|(j, w)| w * v_half[j * kv_dim + kvh * c.head_dim + d].to_f64())
                    .sum();
                expected[(t * c.heads + h) * c.head_dim + d] = acc / total;
            }
        }
    }
    let n = expected.len();
    // Outputs are convex combinations of values in [-1, 1]; f32 softmax and accumulation.
    assert_close(c.name, &env.read_f32(&out, n), &expected, &vec![1.0; n], 2e-5, 0.0);
}

#[test]
fn attention_decode_single_key() {
    check_attention(
        &Case {
            name: "attention decode kv 1, hd 96, group 1",
            heads: 4,
            kv_heads: 4,
            head_dim: 96,
            tokens: 1,
            pos0: 0,
            window: 0,
            splits: 4,
        },
        1,
    );
}

#[test]
fn attention_decode_long_context_split() {
    check_attention(
        &Case {
            name: "attention decode kv 4096, hd 128, group 3, 16 splits",
            heads: 6,
            kv_heads: 2,
            head_dim: 128,
            tokens: 1,
            pos0: 4095,
            window: 0,
            splits: 16,
        },
        2,
    );
}

#[test]
fn attention_decode_one_split_long_context() {
    check_attention(
        &Case {
            name: "attention decode kv 4096, hd 96, group 4, 1 split",
            heads: 4,
            kv_heads: 1,
            head_dim: 96,
            tokens: 1,
            pos0: 4095,
            window: 0,
            splits: 1,
        },
        3,
    );
}

#[test]
fn attention_decode_sliding_window() {
    check_attention(
        &Case {
            name: "attention decode kv 3000, window 2047, hd 96",
            heads: 4,
            kv_heads: 4,
            head_dim: 96,
            tokens: 1,
            pos0: 2999,
            window: 2047,
            splits: 12,
        },
        4,
    );
}

#[test]
fn attention_prefill_from_empty_cache() {
    check_attention(
        &Case {
            name: "attention prefill T 37, hd 96, group 4",
            heads: 8,
            kv_heads: 2,
            head_dim: 96,
            tokens: 37,
            pos0: 0,
            window: 0,
            splits: 1,
        },
        5,
    );
}

#[test]
fn attention_prefill_after_a_prefix_with_window() {
    check_attention(
        &Case {
            name: "attention prefill T 37 after 100, window 16, hd 128, group 3",
            heads: 3,
            kv_heads: 1,
            head_dim: 128,
            tokens: 37,
            pos0: 100,
            window: 16,
            splits: 2,
        },
        6,
    );
}

#[test]
fn attention_rejects_bad_head_grouping() {
    let env = env();
    let shape = AttentionShape {
        tokens: 1,
        heads: 5,
        kv_heads: 2,
        head_dim: 64,
        q_stride: 5 * 64,
        capacity: 8,
        window: 0,
        scale: 0.125,
        splits: 1,
    };
    let buf = env.zeros("buf", 4096);
    let scratch = AttentionScratch::new(&env.gpu, &shape).unwrap();
    let step = env.gpu.step_buffer(0);
    let err = env
        .kernels
        .attention(&step, &buf, &buf, &buf, &scratch, &buf, &shape)
        .unwrap_err();
    assert!(
        err.to_string().contains("5 query heads cannot share 2 KV heads"),
        "{err}"
    );
}
