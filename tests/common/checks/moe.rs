//! The mixture-of-experts kernels: sparsemixer routing against the f32
//! arithmetic transformers does (ties, near-ties at the mask threshold, zero
//! and negative maxima), the grouping of pairs by expert, the expert matrices
//! over a stack (matvec for one token, the grouped matmul for a chunk, every
//! weight format) and the weighted combine, against f64 references.

use phi_web::gpu::{ExpertInput, ExpertStack, Matrix, OutputSlice, Routing, ROUTE_BYTES};
use phi_web::quant::{self, WeightFormat};

use super::super::{assert_close, assert_close_rel, Env, Rng};

/// transformers' `sparsemixer` at inference for one token (top-2): the
/// experts and weights, the masks computed in f32 as PyTorch does.
fn sparsemixer(scores: &[f32], jitter: f32) -> [(u32, f64); 2] {
    let threshold = 2.0 * jitter;
    let argmax = |skip: Option<usize>| {
        let mut best: Option<usize> = None;
        for (j, &s) in scores.iter().enumerate() {
            if Some(j) != skip && best.is_none_or(|b| s > scores[b]) {
                best = Some(j);
            }
        }
        best.unwrap()
    };
    // softmax at the maximum over the scores within reach of it (skipping `skip`).
    let weight = |e: usize, skip: Option<usize>| {
        let m = scores[e];
        // A NaN ratio (s = m = 0) compares false: not masked, as in PyTorch.
        let masked = |s: f32| (m - s) / s.abs().max(m) > threshold;
        let sum: f64 = scores
            .iter()
            .enumerate()
            .filter(|&(j, &s)| Some(j) != skip && !masked(s))
            .map(|(_, &s)| (s as f64 - m as f64).exp())
            .sum();
        1.0 / sum
    };
    let e1 = argmax(None);
    let e2 = argmax(Some(e1));
    [(e1 as u32, weight(e1, None)), (e2 as u32, weight(e2, Some(e1)))]
}

/// Routes as the kernels read them: (expert, weight bits) per pair.
fn route_words(routes: &[(u32, f32)]) -> Vec<u32> {
    routes.iter().flat_map(|&(e, w)| [e, w.to_bits()]).collect()
}

pub async fn moe_routing_matches_sparsemixer(env: &Env) {
    let jitter = 0.01;
    for (experts, seed) in [(16usize, 1u64), (2, 2), (61, 3)] {
        let mut rng = Rng::new(seed);
        let mut rows: Vec<Vec<f32>> = (0..40).map(|_| rng.vec(experts, -3.0, 3.0)).collect();
        // Ties: the first maximum wins, for the first and the second expert.
        rows.push(vec![0.5; experts]);
        rows.push(vec![0.0; experts]);
        let mut tie = vec![-1.0; experts];
        tie[experts - 1] = 2.0;
        tie[0] = 2.0;
        rows.push(tie);
        // Near-ties either side of the 2·jitter relative mask, for both picks:
        // (1 - 0.9801) / 1 = 0.0199 is within reach, 0.0201 is masked.
        let mut near = vec![-2.0; experts];
        near[experts / 2] = 1.0;
        near[0] = 0.9801;
        near[experts - 1] = 0.9799;
        rows.push(near);
        // Negative maxima: the factor is |s| (m < |s|), so more is masked.
        let mut negative = rng.vec(experts, -0.7, -0.4);
        negative[1] = -0.41;
        rows.push(negative);
        let tokens = rows.len();
        let logits: Vec<f32> = rows.concat();
        let logits_buf = env.upload_f32("router logits", &logits);
        let routes = env.gpu().storage("routes", (tokens * 2 * ROUTE_BYTES) as u64).unwrap();
        env.run(&[&env.kernels().moe_route(&logits_buf, &routes, tokens, experts, jitter).unwrap()]);
        let got = env.read_u32(&routes, tokens * 4).await;
        let (mut weights, mut expected) = (Vec::new(), Vec::new());
        for (t, row) in rows.iter().enumerate() {
            for (k, (e, w)) in sparsemixer(row, jitter).into_iter().enumerate() {
                let pair = t * 2 + k;
                assert_eq!(got[2 * pair], e, "moe_route E={experts}: token {t}'s expert {k} (scores {row:?})");
                weights.push(f32::from_bits(got[2 * pair + 1]));
                expected.push(w);
            }
        }
        assert_close_rel(&format!("moe_route weights E={experts}"), &weights, &expected, 0.0, 1e-5);
    }
    let logits = env.upload_f32("router logits", &[0.0; 4]);
    let routes = env.gpu().storage("routes", 64).unwrap();
    for experts in [1, 300] {
        assert!(env.kernels().moe_route(&logits, &routes, 1, experts, jitter).is_err(), "{experts} experts accepted");
    }
}

/// A stack of `experts` random [rows, cols] matrices in `format`, written part
/// by part as the loader does, and each part's dequantized values.
fn expert_stack(
    env: &Env,
    format: WeightFormat,
    experts: usize,
    rows: usize,
    cols: usize,
    seed: u64,
) -> (Matrix, Vec<Vec<f32>>) {
    let stack = Matrix::stacked(env.gpu(), "experts", format, experts, rows, cols).unwrap();
    let mut parts = Vec::new();
    for e in 0..experts {
        let values = Rng::new(seed + e as u64).vec(rows * cols, -1.0, 1.0);
        let gguf = quant::quantize(format, &values).unwrap();
        stack.write_rows(env.gpu(), e * rows, rows, &quant::to_gpu_layout(format, &gguf).unwrap()).unwrap();
        parts.push(quant::dequantize(format, &gguf).unwrap());
    }
    (stack, parts)
}

/// Top-2 routes for `tokens` tokens over `experts`: expert 0 takes every token
/// (more pairs than one tile of the grouped kernel), the last expert none.
fn skewed_routes(tokens: usize, experts: usize, seed: u64) -> Vec<(u32, f32)> {
    let mut rng = Rng::new(seed);
    let mut routes = Vec::new();
    for t in 0..tokens {
        let other = 1 + rng.below(experts as u64 - 2) as u32;
        let (first, second) = if t % 3 == 1 { (other, 0) } else { (0, other) };
        routes.push((first, rng.uniform(0.3, 1.0)));
        routes.push((second, rng.uniform(0.0, 0.7)));
    }
    routes
}

pub async fn expert_linear_over_a_stack_every_format(env: &Env) {
    // 70 rows: two row tiles of either tuning (64 rows); 150 tokens: expert 0's
    // pairs span more than one pair tile of either (32 or 128 pairs).
    let (experts, rows, cols) = (6, 70, 96);
    for (f, format) in WeightFormat::ALL.into_iter().enumerate() {
        let (stack, parts) = expert_stack(env, format, experts, rows, cols, 300 + 10 * f as u64);
        for tokens in [1usize, 37, 150] {
            let pairs = 2 * tokens;
            let routes = skewed_routes(tokens, experts, 40 + tokens as u64);
            let routes_buf = env.upload_u32("routes", &route_words(&routes));
            let groups = env.zeros("groups", 2 * experts);
            let order = env.zeros("order", pairs);
            let routing = Routing { routes: &routes_buf, groups: &groups, order: &order, tokens, per_token: 2 };
            // w1 (one row of X per token) into the second half of rows of
            // 2·rows; w2 (one row per pair) into whole rows.
            for (input, x_rows, out) in [
                (ExpertInput::Token, tokens, OutputSlice { stride: 2 * rows, offset: rows }),
                (ExpertInput::Pair, pairs, OutputSlice::whole(rows)),
            ] {
                let xv = Rng::new(50 + tokens as u64).vec(x_rows * cols, -1.0, 1.0);
                let x = env.upload_f32("x", &xv);
                let y = env.zeros("y", pairs * out.stride);
                let stack_ref = ExpertStack { matrix: &stack, experts };
                let linear = env.kernels().expert_linear(&stack_ref, &routing, input, &x, &y, out).unwrap();
                if tokens > 1 {
                    env.run(&[&env.kernels().moe_group(&routing, experts).unwrap(), &linear]);
                } else {
                    env.run(&[&linear]);
                }
                let (mut expected, mut scale) = (vec![0.0; pairs * out.stride], vec![0.0; pairs * out.stride]);
                for (pair, &(e, _)) in routes.iter().enumerate() {
                    let x_row = if input == ExpertInput::Token { pair / 2 } else { pair };
                    for r in 0..rows {
                        for k in 0..cols {
                            let term = parts[e as usize][r * cols + k] as f64 * xv[x_row * cols + k] as f64;
                            expected[pair * out.stride + out.offset + r] += term;
                            scale[pair * out.stride + out.offset + r] += term.abs();
                        }
                    }
                }
                let what = format!("expert_linear {} {input:?} T={tokens} E={experts} [{rows}x{cols}]", format.name());
                assert_close(&what, &env.read_f32(&y, pairs * out.stride).await, &expected, &scale, 1e-6, 2e-6);
            }
            if tokens > 1 {
                check_groups(env, &routes, experts, &groups, &order).await;
            }
        }
    }
    let (stack, _) = expert_stack(env, WeightFormat::F32, 3, 4, 32, 1);
    let routes = env.upload_u32("routes", &route_words(&[(0, 1.0), (1, 1.0)]));
    let (x, y) = (env.zeros("x", 64), env.zeros("y", 64));
    let routing = Routing { routes: &routes, groups: &routes, order: &routes, tokens: 1, per_token: 2 };
    let uneven = ExpertStack { matrix: &stack, experts: 5 };
    let err = env.kernels().expert_linear(&uneven, &routing, ExpertInput::Token, &x, &y, OutputSlice::whole(4));
    assert!(err.is_err(), "12 rows split into 5 experts");
    assert!(Matrix::stacked(env.gpu(), "odd", WeightFormat::Q4_0, 2, 3, 32).is_err(), "odd rows per expert accepted");
}

/// groups[e] = (first slot, pairs) of a counting sort of the pairs by
/// expert, each expert's pairs in their order.
async fn check_groups(env: &Env, routes: &[(u32, f32)], experts: usize, groups: &wgpu::Buffer, order: &wgpu::Buffer) {
    let groups = env.read_u32(groups, 2 * experts).await;
    let order = env.read_u32(order, routes.len()).await;
    let mut first = 0;
    for e in 0..experts {
        let pairs: Vec<u32> = (0..routes.len() as u32).filter(|&p| routes[p as usize].0 == e as u32).collect();
        assert_eq!(groups[2 * e..2 * e + 2], [first as u32, pairs.len() as u32], "moe_group: expert {e}'s group");
        assert_eq!(order[first..first + pairs.len()], pairs[..], "moe_group: expert {e}'s pairs");
        first += pairs.len();
    }
}

pub async fn moe_combine_adds_weighted_experts(env: &Env) {
    let (tokens, hidden) = (5, 70);
    let routes = skewed_routes(tokens, 4, 9);
    let routes_buf = env.upload_u32("routes", &route_words(&routes));
    let out = Rng::new(10).vec(2 * tokens * hidden, -2.0, 2.0);
    let residual = Rng::new(11).vec(tokens * hidden, -2.0, 2.0);
    let (out_buf, x) = (env.upload_f32("expert out", &out), env.upload_f32("x", &residual));
    let routing = Routing { routes: &routes_buf, groups: &routes_buf, order: &routes_buf, tokens, per_token: 2 };
    env.run(&[&env.kernels().moe_combine(&routing, &out_buf, &x, hidden).unwrap()]);
    let (mut expected, mut scale) = (Vec::new(), Vec::new());
    for t in 0..tokens {
        for h in 0..hidden {
            let terms = (0..2).map(|k| routes[2 * t + k].1 as f64 * out[(2 * t + k) * hidden + h] as f64);
            let terms: Vec<f64> = std::iter::once(residual[t * hidden + h] as f64).chain(terms).collect();
            expected.push(terms.iter().sum());
            scale.push(terms.iter().map(|v| v.abs()).sum());
        }
    }
    assert_close("moe_combine", &env.read_f32(&x, tokens * hidden).await, &expected, &scale, 1e-7, 1e-6);
}
