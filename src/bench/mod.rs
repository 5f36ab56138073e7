//! Kernel benchmarks (native only): effective memory bandwidth of the decode
//! matvec at Phi-3-mini shapes, next to this machine's CPU memory-read
//! bandwidth measured in the same run, so that the ratio means something on
//! a shared, noisy machine.

pub mod gpu;
pub mod phi3small;
pub mod structured;
pub mod vision;

use std::time::Instant;

use serde::Serialize;

use crate::backend::Backend;
use crate::error::Result;
use crate::gpu::{
    AttentionScratch, AttentionShape, Command, Dispatch, ExpertInput, ExpertStack, Gpu, Kernels, KvFormat, Matrix,
    OutputSlice, Routing,
};
use crate::quant::{self, GpuLayout, WeightFormat};

#[derive(Serialize)]
pub struct KernelReport {
    pub adapter: String,
    /// End-to-end figures (filled by `phi-web bench` when the models are at hand).
    pub models: Vec<ModelFigure>,
    pub features: String,
    /// CPU memory-read bandwidth, GB/s (sum over a 512 MiB buffer, best of 3).
    pub cpu_read_gbps_1_thread: f64,
    pub cpu_read_gbps_all_threads: f64,
    pub threads: usize,
    pub kernels: Vec<KernelFigure>,
    /// Constrained decoding's cost (`phi-web bench --only structured`, and the full run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured: Option<structured::StructuredReport>,
    /// KV bytes per decode token in Phi-3-small's dense and block-sparse layers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocksparse_kv_read: Vec<phi3small::KvReadFigure>,
    /// Phi-3.5-vision: the image tower and a prompt with an image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vision: Vec<vision::VisionFigure>,
}

#[derive(Serialize)]
pub struct KernelFigure {
    pub kernel: String,
    pub shape: String,
    /// Median seconds per dispatch.
    pub seconds: f64,
    /// Bytes the kernel must read (weights and inputs) per dispatch.
    pub bytes_read: u64,
    /// bytes_read / seconds, GB/s.
    pub effective_gbps: f64,
    /// effective_gbps / cpu_read_gbps_all_threads.
    pub fraction_of_cpu_bandwidth: f64,
}

/// Reads `buffer` once with `threads` threads; returns GB/s.
fn read_bandwidth(buffer: &[u64], threads: usize) -> f64 {
    let start = Instant::now();
    let chunk = buffer.len().div_ceil(threads);
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = buffer
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().fold(0u64, |a, &v| a.wrapping_add(v))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).fold(0, u64::wrapping_add)
    });
    std::hint::black_box(total);
    (buffer.len() * 8) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Best of 3 reads of a 512 MiB buffer.
pub fn cpu_read_bandwidth(threads: usize) -> f64 {
    let buffer: Vec<u64> = (0..64u64 << 20).collect();
    (0..3).map(|_| read_bandwidth(&buffer, threads)).fold(0.0, f64::max)
}

/// Random quantized bytes of the right shape (the values do not matter for
/// timing; scales are kept small and finite).
fn random_matrix(gpu: &Gpu, format: WeightFormat, rows: usize, cols: usize, seed: u64) -> Result<Matrix> {
    Matrix::upload(gpu, "bench weights", format, rows, cols, &random_layout(format, rows, cols, seed))
}

/// The GPU layout of a random [rows, cols] matrix in `format`.
fn random_layout(format: WeightFormat, rows: usize, cols: usize, seed: u64) -> GpuLayout {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (data, scales) = quant::gpu_size(format, rows, cols);
    let mut layout = GpuLayout { data: (0..data).map(|_| next() as u8).collect(), scales: Vec::with_capacity(scales) };
    let small = half::f16::from_f32(0.01).to_le_bytes();
    while layout.scales.len() < scales {
        layout.scales.extend_from_slice(&small);
    }
    if matches!(format, WeightFormat::F16) {
        layout.data.chunks_exact_mut(2).for_each(|h| h.copy_from_slice(&small));
    }
    if matches!(format, WeightFormat::F32) {
        layout.data.chunks_exact_mut(4).for_each(|w| w.copy_from_slice(&0.01f32.to_le_bytes()));
    }
    layout
}

/// Median seconds per dispatch list: `reps` copies in one submit, `trials` times.
fn time_dispatches(gpu: &Gpu, dispatches: &[&Dispatch], reps: usize, trials: usize) -> Result<f64> {
    let list: Vec<Dispatch> = (0..reps).flat_map(|_| dispatches.iter().map(|&d| d.clone())).collect();
    Ok(time_list(gpu, &list, trials)? / reps as f64)
}

/// Seconds per run of `dispatches`, the median of `reps` submits after a
/// warm-up; GPU time where the adapter has timestamp queries.
pub(crate) fn time_list(gpu: &Gpu, dispatches: &[Dispatch], reps: usize) -> Result<f64> {
    let commands: Vec<Command> = dispatches.iter().cloned().map(Command::from).collect();
    gpu.submit(&commands);
    gpu.wait()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        if gpu.features.timestamps {
            gpu.start_timer(1)?;
        }
        gpu.submit(&commands);
        gpu.wait()?;
        let wall = start.elapsed().as_secs_f64();
        let timed = pollster::block_on(gpu.stop_timer())?;
        times.push(timed.map_or(wall, |t| t.gpu.as_secs_f64()));
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Runs the kernel benchmark and returns its report.
pub async fn kernel_report(gpu: &Gpu, kernels: &Kernels, mut progress: impl FnMut(&str)) -> Result<KernelReport> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    progress("CPU memory bandwidth");
    let cpu_1 = cpu_read_bandwidth(1);
    let cpu_all = cpu_read_bandwidth(threads);
    let mut figures = Vec::new();
    let mut push = |kernel: String, shape: String, seconds: f64, bytes_read: u64| {
        let gbps = bytes_read as f64 / seconds / 1e9;
        figures.push(KernelFigure {
            kernel,
            shape,
            seconds,
            bytes_read,
            effective_gbps: gbps,
            fraction_of_cpu_bandwidth: gbps / cpu_all,
        });
    };

    // Phi-3-mini decode shapes: qkv_proj, gate_up_proj, down_proj ([rows, cols] = [out, in]).
    let shapes = [("qkv_proj", 9216, 3072), ("gate_up_proj", 16384, 3072), ("down_proj", 3072, 8192)];
    for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::F16] {
        for (i, &(name, rows, cols)) in shapes.iter().enumerate() {
            progress(&format!("matvec {} {name}", format.name()));
            let w = random_matrix(gpu, format, rows, cols, 1 + i as u64)?;
            let x = gpu.storage("x", cols as u64 * 4)?;
            let y = gpu.storage("y", rows as u64 * 4)?;
            let d = kernels.matvec(&w, &x, &y)?;
            let seconds = time_dispatches(gpu, &[&d], 10, 5)?;
            push(
                format!("matvec_{}", format.name()),
                format!("{name} {rows}x{cols}"),
                seconds,
                w.read_bytes() + cols as u64 * 4,
            );
        }
    }

    progress("matmul q4_0 prefill");
    let (rows, cols, tokens) = (3072, 3072, 128);
    let w = random_matrix(gpu, WeightFormat::Q4_0, rows, cols, 9)?;
    let x = gpu.storage("x", (tokens * cols) as u64 * 4)?;
    let y = gpu.storage("y", (tokens * rows) as u64 * 4)?;
    let d = kernels.matmul(&w, &x, &y, tokens)?;
    let seconds = time_dispatches(gpu, &[&d], 2, 3)?;
    push(
        "matmul_q4_0".into(),
        format!("{rows}x{cols}, T={tokens} ({:.1} GFLOP/s)", 2.0 * (rows * cols * tokens) as f64 / seconds / 1e9),
        seconds,
        w.read_bytes() + (tokens * cols * 4) as u64,
    );

    expert_figures(gpu, kernels, &mut progress, &mut push)?;

    // Decode attention over a 4k cache, Phi-3-mini heads (32 x 96).
    for kv_format in KvFormat::ALL {
        progress(&format!("attention decode, {} cache", kv_format.name()));
        let shape = phi3_mini_decode_attention(gpu, kv_format, 4096);
        let (heads, head_dim, capacity) = (shape.heads, shape.head_dim, shape.slots);
        let cache_bytes = (capacity * kv_format.row_bytes(heads * head_dim)) as u64;
        let (k, v) = (gpu.storage("k", cache_bytes)?, gpu.storage("v", cache_bytes)?);
        let (q, out) =
            (gpu.storage("q", (heads * head_dim * 4) as u64)?, gpu.storage("out", (heads * head_dim * 4) as u64)?);
        let scratch = AttentionScratch::new(gpu, &shape)?;
        let step = gpu.step_buffer(capacity as u32 - 1);
        let [split_pass, combine] = kernels.attention(&step, &q, &k, &v, &scratch, &out, &shape)?;
        let seconds = time_dispatches(gpu, &[&split_pass, &combine], 5, 3)?;
        push(
            format!("attention_decode_{}", kv_format.name()),
            format!("{heads} heads x {head_dim}, kv {capacity}, {} splits", shape.splits),
            seconds,
            2 * cache_bytes,
        );
    }

    Ok(KernelReport {
        adapter: gpu.adapter.to_string(),
        models: Vec::new(),
        features: format!("{:?}", gpu.features),
        cpu_read_gbps_1_thread: cpu_1,
        cpu_read_gbps_all_threads: cpu_all,
        threads,
        kernels: figures,
        structured: None,
        blocksparse_kv_read: Vec::new(),
        vision: Vec::new(),
    })
}

/// One decode query per head of Phi-3-mini (32 heads of 96, no GQA) over a
/// 4096-slot cache, split for `context` positions as the adapter's class splits.
pub(crate) fn phi3_mini_decode_attention(gpu: &Gpu, kv_format: KvFormat, context: usize) -> AttentionShape {
    let (heads, head_dim) = (32, 96);
    AttentionShape {
        tokens: 1,
        heads,
        kv_heads: heads,
        head_dim,
        q_stride: heads * head_dim,
        slots: 4096,
        window: 0,
        scale: 0.1,
        splits: AttentionShape::default_splits(1, context, heads, gpu.tuning),
        kv_format,
        sparse: None,
    }
}

/// Phi-mini-MoE's experts (16 of [960, 4096] per projection, top-2), q4_0:
/// a decode token reads two experts' rows of the stack, next to the dense
/// matvec over the same bytes; a 128-token prefill groups its 256 pairs by
/// expert, next to the dense matmul doing the same FLOPs.
fn expert_figures(
    gpu: &Gpu,
    kernels: &Kernels,
    progress: &mut impl FnMut(&str),
    push: &mut impl FnMut(String, String, f64, u64),
) -> Result<()> {
    let (experts, rows, cols, tokens) = (16, 960, 4096, 128);
    let format = WeightFormat::Q4_0;
    let stack = random_matrix(gpu, format, experts * rows, cols, 21)?;
    let expert_bytes = stack.read_bytes() / experts as u64;
    // Token t runs experts t mod 16 and (7t + 3) mod 16: never the same one
    // (6t = 13 mod 16 has no solution), 16 pairs per expert.
    let half = 0.5f32.to_bits();
    let routes: Vec<u32> = (0..tokens as u32).flat_map(|t| [t % 16, half, (7 * t + 3) % 16, half]).collect();
    let routes = gpu.storage_with("routes", bytemuck::cast_slice(&routes))?;
    let groups = gpu.storage("groups", 8 * experts as u64)?;
    let order = gpu.storage("order", 4 * 2 * tokens as u64)?;
    let x = gpu.storage("x", (2 * tokens * cols * 4) as u64)?; // [P, K]: the dense matmul's input
    let y = gpu.storage("y", (2 * tokens * rows * 4) as u64)?; // [P, N]
    let stack_of = ExpertStack { matrix: &stack, experts };
    let whole = OutputSlice::whole(rows);

    progress("expert matvec q4_0 (decode, 2 of 16 experts)");
    let routing = Routing { routes: &routes, groups: &groups, order: &order, tokens: 1, per_token: 2 };
    let d = kernels.expert_linear(&stack_of, &routing, ExpertInput::Token, &x, &y, whole)?;
    let seconds = time_dispatches(gpu, &[&d], 10, 5)?;
    let shape = format!("2 of {experts} experts [{rows}x{cols}]");
    push("moe_matvec_q4_0".into(), shape, seconds, 2 * expert_bytes + cols as u64 * 4);
    let dense = random_matrix(gpu, format, 2 * rows, cols, 22)?;
    let d = kernels.matvec(&dense, &x, &y)?;
    let seconds = time_dispatches(gpu, &[&d], 10, 5)?;
    let shape = format!("dense, the same bytes [{}x{cols}]", 2 * rows);
    push("matvec_q4_0".into(), shape, seconds, dense.read_bytes() + cols as u64 * 4);

    progress("expert matmul q4_0 (prefill, 128 tokens grouped by expert)");
    let routing = Routing { tokens, ..routing };
    let group = kernels.moe_group(&routing, experts)?;
    let d = kernels.expert_linear(&stack_of, &routing, ExpertInput::Token, &x, &y, whole)?;
    let seconds = time_dispatches(gpu, &[&group, &d], 2, 3)?;
    let gflops = |s: f64| 2.0 * (2 * tokens * rows * cols) as f64 / s / 1e9;
    let shape = format!("{experts} experts [{rows}x{cols}], T={tokens}, 2 per token ({:.1} GFLOP/s)", gflops(seconds));
    push("moe_matmul_q4_0".into(), shape, seconds, stack.read_bytes() + (tokens * cols * 4) as u64);
    let dense = random_matrix(gpu, format, rows, cols, 23)?;
    let d = kernels.matmul(&dense, &x, &y, 2 * tokens)?;
    let x_bytes = (2 * tokens * cols * 4) as u64;
    let seconds = time_dispatches(gpu, &[&d], 2, 3)?;
    let shape = format!("dense, the same FLOPs [{rows}x{cols}], T={} ({:.1} GFLOP/s)", 2 * tokens, gflops(seconds));
    push("matmul_q4_0".into(), shape, seconds, dense.read_bytes() + x_bytes);
    Ok(())
}

/// End-to-end figures of one model package.
#[derive(Serialize)]
pub struct ModelFigure {
    pub model: String,
    /// "webgpu" or "cpu".
    pub backend: &'static str,
    /// The CPU backend's threads (0 on WebGPU).
    pub threads: usize,
    pub weights_mb: f64,
    /// Positions the KV cache was allocated for.
    pub context: usize,
    /// How the KV cache stores keys and values ("f16", "q8").
    pub kv_cache: &'static str,
    /// GPU memory the decoder allocated, from exact buffer accounting.
    pub gpu_memory: MemoryFigure,
    pub prefill: Vec<PrefillFigure>,
    /// Kernel launches (GPU) or ops (CPU backend) per decode step.
    pub dispatches_per_token: usize,
    pub decode: Vec<DecodeFigure>,
    /// Decode tokens/s at the longest context ÷ at the shortest.
    pub decode_long_over_short: f64,
    /// The expert cache over the timed decode steps (a budget under the experts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expert_cache: Option<ExpertCacheFigure>,
}

#[derive(Serialize)]
pub struct ExpertCacheFigure {
    pub experts_per_layer: usize,
    pub resident_per_layer: usize,
    /// Of the (layer, token, expert) lookups of the timed decode steps.
    pub decode_hit_rate: f64,
    pub decode_uploaded_bytes_per_token: f64,
}

#[derive(Serialize)]
pub struct MemoryFigure {
    pub total_mb: f64,
    pub weights_mb: f64,
    pub kv_cache_mb: f64,
    /// Activations, attention partials, logits and their readback buffer.
    pub scratch_mb: f64,
}

#[derive(Serialize)]
pub struct PrefillFigure {
    pub prompt_tokens: usize,
    pub tokens_per_s: f64,
    /// Time to first token: the whole prompt through, the first logits read.
    pub ttft_ms: f64,
}

#[derive(Serialize)]
pub struct DecodeFigure {
    /// Positions already in the KV cache when decoding starts.
    pub context_tokens: usize,
    pub tokens: usize,
    pub tokens_per_s: f64,
    /// Weights plus the KV cache read per token.
    pub bytes_per_token: u64,
    pub effective_gbps: f64,
    /// effective_gbps ÷ the CPU memory-read bandwidth of the same run.
    pub fraction_of_cpu_bandwidth: f64,
    /// GPU time per token from timestamp queries (first pass start to last
    /// pass end of each submit), where the adapter has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_ms_per_token: Option<f64>,
    /// CPU time per token spent encoding and submitting the recorded commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encode_ms_per_token: Option<f64>,
}

/// What `model_figure` measures.
#[derive(Clone)]
pub struct ModelBench {
    /// Allocated KV positions.
    pub context: usize,
    pub kv_cache: KvFormat,
    /// Prompt lengths to time prefill at.
    pub prompts: Vec<usize>,
    /// Context lengths to time decode at (the cache is filled by a prefill of
    /// this length, or, past the longest timed prompt, just positioned there:
    /// attention reads every cached position either way).
    pub decode_contexts: Vec<usize>,
    pub decode_tokens: usize,
    /// Prefill the cache before timing decode at a context (else the steps
    /// just start there, over a zeroed cache: the same reads, and no
    /// minutes-long prefill on a CPU adapter).
    pub fill_cache: bool,
    /// Bytes of weights the GPU may hold (a mixture of experts over it caches them).
    pub gpu_memory: Option<u64>,
}

fn random_ids(n: usize, vocab: u64, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % vocab) as u32
        })
        .collect()
}

/// Loads a package and times prefill and decode as `plan` says.
pub async fn model_figure(
    b: &Backend,
    dir: &std::path::Path,
    plan: &ModelBench,
    cpu_gbps: f64,
    mut progress: impl FnMut(&str),
) -> Result<ModelFigure> {
    use crate::formats::package::Package;
    use crate::model::{Decoder, DecoderOptions, ExpertStats, Logits};
    let package = Package::open(dir)?;
    let allocated = || match b {
        Backend::Gpu(g) => g.gpu.storage_bytes(),
        Backend::Cpu(_) => 0,
    };
    let before = allocated();
    let decoder = Decoder::load(
        b,
        &package,
        &DecoderOptions {
            gpu_memory: plan.gpu_memory,
            ..DecoderOptions::new(plan.context, crate::engine::PREFILL_CHUNK, plan.kv_cache)
        },
    )?;
    let memory = decoder.memory();
    let total = match b {
        Backend::Gpu(_) => allocated() - before,
        // Weights and KV cache; activations are small beside them.
        Backend::Cpu(_) => memory.weights + memory.kv_cache,
    };
    let vocab = decoder.config.vocab_size as u64;
    if !plan.prompts.is_empty() || !plan.decode_contexts.is_empty() {
        // Warm-up: the first submits pay for pipeline compilation in the driver.
        decoder.forward(b, &random_ids(64, vocab, 1), 0, Logits::Last).await?;
        decoder.forward(b, &[0], 64, Logits::Last).await?;
    }

    let mut prefill = Vec::new();
    for &n in &plan.prompts {
        progress(&format!("prefill {n} tokens"));
        let ids = random_ids(n, vocab, 7 + n as u64);
        let start = Instant::now();
        for (i, chunk) in ids.chunks(decoder.max_tokens).enumerate() {
            decoder.forward_in_sequence(b, chunk, i * decoder.max_tokens, n, Logits::Last).await?;
        }
        let seconds = start.elapsed().as_secs_f64();
        prefill.push(PrefillFigure { prompt_tokens: n, tokens_per_s: n as f64 / seconds, ttft_ms: seconds * 1e3 });
    }

    let mut decode = Vec::new();
    // The expert cache over the timed steps only (not the prefills filling the KV cache).
    let (mut decode_cache, mut decoded) = (ExpertStats::default(), 0);
    for &context in &plan.decode_contexts {
        progress(&format!("decode at {context} tokens of context"));
        if plan.fill_cache && !plan.prompts.contains(&context) {
            // Fill the cache only when a prefill of this length is cheap.
            let ids = random_ids(context.min(decoder.max_tokens), vocab, 3);
            decoder.forward(b, &ids, context - ids.len(), Logits::Last).await?;
        }
        // Greedy, as generation decodes it (the GPU picks the token), but fed
        // random tokens: random weights' greedy output repeats one token, whose
        // routing an expert cache would hit every time.
        let feed = random_ids(plan.decode_tokens, vocab, 11 + context as u64);
        let cache_before = decoder.expert_stats().unwrap_or_default();
        let timed = match b {
            Backend::Gpu(g) if g.gpu.features.timestamps => Some(&g.gpu),
            _ => None,
        };
        if let Some(gpu) = timed {
            // Every submit of the steps (an expert cache adds some), up to
            // wgpu's 4096 queries a set.
            gpu.start_timer((64 * plan.decode_tokens as u32).min(2048))?;
        }
        let start = Instant::now();
        for (step, &id) in feed.iter().enumerate() {
            let pos = context + step;
            decoder.greedy_in_sequence(b, &[id], pos, pos + 1).await?;
        }
        let per_token = start.elapsed().as_secs_f64() / plan.decode_tokens.max(1) as f64;
        let times = match timed {
            Some(gpu) => gpu.stop_timer().await?,
            None => None,
        };
        let ms_per_token = |d: std::time::Duration| d.as_secs_f64() * 1e3 / plan.decode_tokens.max(1) as f64;
        let cache_after = decoder.expert_stats().unwrap_or_default();
        decode_cache.add(&cache_after.since(&cache_before));
        decoded += plan.decode_tokens;
        let kv_read = decoder.kv_bytes_read(context + plan.decode_tokens / 2);
        let bytes = decoder.weight_bytes() + kv_read;
        let gbps = bytes as f64 / per_token / 1e9;
        decode.push(DecodeFigure {
            context_tokens: context,
            tokens: plan.decode_tokens,
            tokens_per_s: 1.0 / per_token,
            bytes_per_token: bytes,
            effective_gbps: gbps,
            fraction_of_cpu_bandwidth: gbps / cpu_gbps,
            gpu_ms_per_token: times.map(|t| ms_per_token(t.gpu)),
            encode_ms_per_token: times.map(|t| ms_per_token(t.encode)),
        });
    }
    let rate = |f: Option<&DecodeFigure>| f.map_or(f64::NAN, |f| f.tokens_per_s);
    let mb = |b: u64| b as f64 / 1e6;
    Ok(ModelFigure {
        model: package.manifest.name.clone(),
        backend: b.name(),
        threads: match b {
            Backend::Cpu(c) => c.threads,
            Backend::Gpu(_) => 0,
        },
        weights_mb: mb(package.total_bytes()),
        context: plan.context,
        kv_cache: plan.kv_cache.name(),
        gpu_memory: MemoryFigure {
            total_mb: mb(total),
            weights_mb: mb(memory.weights),
            kv_cache_mb: mb(memory.kv_cache),
            scratch_mb: mb(total - memory.weights - memory.kv_cache),
        },
        prefill,
        dispatches_per_token: decoder.dispatches_per_token(b)?,
        decode_long_over_short: rate(decode.last()) / rate(decode.first()),
        decode,
        expert_cache: decoder.expert_stats().map(|stats| ExpertCacheFigure {
            experts_per_layer: stats.experts_per_layer,
            resident_per_layer: stats.resident_per_layer,
            decode_hit_rate: decode_cache.hit_rate(),
            decode_uploaded_bytes_per_token: decode_cache.uploaded_bytes as f64 / decoded.max(1) as f64,
        }),
    })
}

/// Writes a Phi-3-mini-shaped package with random q4_0 weights into `dir`
/// (skipped when a complete one is already there).
pub fn synthetic_phi3_mini(dir: &std::path::Path) -> Result<()> {
    let config = synthetic_config(crate::config::Architecture::Phi3, 3072, 8192, 32, [32, 32, 96], 32064);
    synthetic_package(dir, "synthetic Phi-3-mini (random q4_0)", config, phi3_mini_shapes(32))
}

/// The tensors of Phi-3-mini's decoder with `layers` layers (hidden 3072,
/// MLP 8192, 32 heads of 96, vocabulary 32064).
pub(crate) fn phi3_mini_shapes(layers: usize) -> Vec<(String, Vec<usize>)> {
    let (h, inter, vocab) = (3072, 8192, 32064);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![vocab, h])];
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        shapes.push((p("input_layernorm.weight"), vec![h]));
        shapes.push((p("self_attn.qkv_proj.weight"), vec![3 * h, h]));
        shapes.push((p("self_attn.o_proj.weight"), vec![h, h]));
        shapes.push((p("post_attention_layernorm.weight"), vec![h]));
        shapes.push((p("mlp.gate_up_proj.weight"), vec![2 * inter, h]));
        shapes.push((p("mlp.down_proj.weight"), vec![h, inter]));
    }
    shapes.push(("model.norm.weight".into(), vec![h]));
    shapes.push(("lm_head.weight".into(), vec![vocab, h]));
    shapes
}

/// A Phi-mini-MoE-shaped package with random q4_0 weights and f32 routers:
/// hidden 4096, GQA 32/8 heads of 128, 16 experts of intermediate 960, top-2
/// (7.6 B parameters / 2.4 B active at its 32 layers), `layers` of them.
pub fn synthetic_phi_mini_moe(dir: &std::path::Path, layers: usize) -> Result<()> {
    let (h, inter, experts, vocab, kv) = (4096, 960, 16, 32064, 1024);
    let mut config = synthetic_config(crate::config::Architecture::PhiMoe, h, inter, layers, [32, 8, 128], vocab);
    config.norm = crate::config::NormKind::Layer;
    config.attention_bias = true;
    config.lm_head_bias = true;
    config.sliding_window = None;
    config.moe = Some(crate::config::Moe { experts, experts_per_token: 2, router_jitter: 0.01 });
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![vocab, h])];
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            shapes.push((p(&format!("{norm}.weight")), vec![h]));
            shapes.push((p(&format!("{norm}.bias")), vec![h]));
        }
        for (name, rows) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)] {
            shapes.push((p(&format!("self_attn.{name}.weight")), vec![rows, h]));
            shapes.push((p(&format!("self_attn.{name}.bias")), vec![rows]));
        }
        shapes.push((p("block_sparse_moe.gate.weight"), vec![experts, h]));
        for e in 0..experts {
            shapes.push((p(&format!("block_sparse_moe.experts.{e}.w1.weight")), vec![inter, h]));
            shapes.push((p(&format!("block_sparse_moe.experts.{e}.w3.weight")), vec![inter, h]));
            shapes.push((p(&format!("block_sparse_moe.experts.{e}.w2.weight")), vec![h, inter]));
        }
    }
    for name in ["model.norm.weight", "model.norm.bias", "lm_head.bias"] {
        shapes.push((name.into(), vec![if name == "lm_head.bias" { vocab } else { h }]));
    }
    shapes.push(("lm_head.weight".into(), vec![vocab, h]));
    let name = format!("synthetic Phi-mini-MoE, {layers} of 32 layers (random q4_0)");
    synthetic_package(dir, &name, config, shapes)
}

/// A decoder config with Phi-3's defaults; `heads` = [heads, kv heads, head_dim].
pub(crate) fn synthetic_config(
    architecture: crate::config::Architecture,
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    [num_heads, num_kv_heads, head_dim]: [usize; 3],
    vocab_size: usize,
) -> crate::config::ModelConfig {
    crate::config::ModelConfig {
        architecture,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rotary_dim: head_dim,
        vocab_size,
        max_position_embeddings: 4096,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        longrope: None,
        sliding_window: Some(2047),
        tie_word_embeddings: false,
        activation: crate::config::Activation::Silu,
        norm: crate::config::NormKind::Rms,
        bos_token_id: Some(1),
        eos_token_ids: vec![32000],
        pooling: None,
        attention_scale: None,
        phi3small: None,
        vision: None,
        attention_bias: false,
        lm_head_bias: false,
        moe: None,
    }
}

/// Writes a package of `shapes` into `dir` (skipped when a complete one is
/// already there): random q4_0 matrices, random f32 routers (so tokens spread
/// over the experts), vectors of ones.
pub(crate) fn synthetic_package(
    dir: &std::path::Path,
    name: &str,
    config: crate::config::ModelConfig,
    shapes: Vec<(String, Vec<usize>)>,
) -> Result<()> {
    use crate::formats::package::{Chunk, Manifest, ShardWriter, TensorEntry, FORMAT, MANIFEST, MAX_CHUNK_BYTES};
    if crate::formats::package::Package::open(dir).is_ok_and(|p| p.manifest.tokenizer.is_some()) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut writer = ShardWriter::new(dir, 64 << 20);
    let mut tensors = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (name, shape) in shapes {
        let router = name.ends_with("block_sparse_moe.gate.weight");
        let vision = name.starts_with(crate::formats::hf_import::VISION_PREFIX);
        let (format, rows, cols) = match shape[..] {
            [n] => (WeightFormat::F32, 1, n),
            [rows, cols] if router => (WeightFormat::F32, rows, cols),
            // As `convert` stores an image tower.
            [rows, cols] if vision => {
                (crate::formats::hf_import::vision_matrix_format(&name, WeightFormat::Q4_0, cols), rows, cols)
            }
            [rows, cols] => (WeightFormat::Q4_0, rows, cols),
            _ => return Err(crate::Error::Config { message: format!("synthetic tensor {name}: shape {shape:?}") }),
        };
        // Row chunks a GPU binding can hold, as `convert` writes them (an
        // even row count keeps 2-byte scales aligned).
        let row_payload = quant::gpu_size(format, 1, cols).0.max(1) as u64;
        let chunk_rows = ((MAX_CHUNK_BYTES / row_payload) as usize).max(2) & !1;
        let mut chunks = Vec::new();
        for first in (0..rows).step_by(chunk_rows) {
            let n = chunk_rows.min(rows - first);
            let (shard, offset) = writer.position();
            let (payload, scales) = quant::gpu_size(format, n, cols);
            let mut layout = GpuLayout { data: vec![0u8; payload], scales: Vec::with_capacity(scales) };
            if router {
                for w in layout.data.chunks_exact_mut(4) {
                    let unit = (next() >> 40) as f32 / (1u64 << 24) as f32;
                    w.copy_from_slice(&(0.02 * unit - 0.01).to_le_bytes());
                }
            } else if format == WeightFormat::F32 && rows > 1 {
                // A table (an image tower's positions): small random values.
                for w in layout.data.chunks_exact_mut(4) {
                    let unit = (next() >> 40) as f32 / (1u64 << 24) as f32;
                    w.copy_from_slice(&(0.02 * unit - 0.01).to_le_bytes());
                }
            } else if format == WeightFormat::F32 {
                // Norm weights 1, biases 0 (a LayerNorm bias of 1 would route every token alike).
                let value = if name.ends_with(".bias") { 0.0f32 } else { 1.0 };
                layout.data.chunks_exact_mut(4).for_each(|w| w.copy_from_slice(&value.to_le_bytes()));
            } else if format == WeightFormat::F16 {
                for w in layout.data.chunks_exact_mut(2) {
                    let unit = (next() >> 40) as f32 / (1u64 << 24) as f32;
                    w.copy_from_slice(&half::f16::from_f32(0.02 * unit - 0.01).to_le_bytes());
                }
            } else {
                layout.data.chunks_exact_mut(8).for_each(|word| word.copy_from_slice(&next().to_le_bytes()));
                let scale = half::f16::from_f32(0.02).to_le_bytes();
                while layout.scales.len() < scales {
                    layout.scales.extend_from_slice(&scale);
                }
            }
            writer.write(&layout.data)?;
            writer.write(&layout.scales)?;
            chunks.push(Chunk { rows: n, shard, offset, payload_bytes: payload as u64, scales_bytes: scales as u64 });
        }
        tensors.push(TensorEntry { name, format: format.name().into(), shape, chunks });
    }
    let tokenizer = "tokenizer.json";
    let vocab = synthetic_tokenizer(config.vocab_size);
    std::fs::write(dir.join(tokenizer), vocab).map_err(|e| crate::Error::io(&dir.join(tokenizer), e))?;
    let manifest = Manifest {
        format: FORMAT.into(),
        name: name.into(),
        config,
        tokenizer: Some(tokenizer.into()),
        // Phi-3's template, so a browser bench can chat with it.
        chat_template: Some(
            "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}<|assistant|>\n"
                .into(),
        ),
        bos_token: None,
        eos_token: None,
        stop_token_ids: vec![32000],
        quantization: "q4_0 for matrices, f32 for vectors and routers".into(),
        source: "phi-web bench".into(),
        tensors,
        shards: writer.finish()?,
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| crate::Error::format(MANIFEST, e.to_string()))?;
    std::fs::write(dir.join(MANIFEST), json).map_err(|e| crate::Error::io(&dir.join(MANIFEST), e))
}

/// A word-level tokenizer.json of `vocab` made-up words ("t0" is the unknown
/// one): synthetic weights have no real vocabulary, but a chat needs one.
fn synthetic_tokenizer(vocab: usize) -> String {
    let words: serde_json::Map<String, serde_json::Value> = (0..vocab).map(|i| (format!("t{i}"), i.into())).collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": words, "unk_token": "t0" },
    })
    .to_string()
}

/// The report as the Markdown table the README carries: per model, prefill
/// and decode rates and decode's fraction of this machine's memory bandwidth
/// (ratios within one run; absolute times on shared machines are noisy).
pub fn markdown(report: &KernelReport) -> String {
    let mut out = format!(
        "Adapter: {}. CPU read bandwidth in the same run: {:.1} GB/s ({} threads).\n\n",
        report.adapter, report.cpu_read_gbps_all_threads, report.threads
    );
    out += "| model | backend | context, KV cache | memory (weights + KV + scratch) | prefill tok/s | decode tok/s | decode ÷ memory bandwidth | long ÷ short context decode | per decode token: dispatches, MB read, GPU ms (CPU encode ms) |\n";
    out += "|---|---|---|---|---|---|---|---|---|\n";
    for m in &report.models {
        let g = &m.gpu_memory;
        let prefill: Vec<String> =
            m.prefill.iter().map(|p| format!("{:.2} @ {}", p.tokens_per_s, p.prompt_tokens)).collect();
        let decode: Vec<String> =
            m.decode.iter().map(|d| format!("{:.3} @ {}", d.tokens_per_s, d.context_tokens)).collect();
        let fraction: Vec<String> =
            m.decode.iter().map(|d| format!("{:.1} %", 100.0 * d.fraction_of_cpu_bandwidth)).collect();
        let or_dash = |v: Vec<String>| if v.is_empty() { "—".to_string() } else { v.join(", ") };
        let per_token = match m.decode.first() {
            Some(d) => {
                let ms = match (d.gpu_ms_per_token, d.encode_ms_per_token) {
                    (Some(gpu), Some(encode)) => format!(", {gpu:.2} ({encode:.2}) @ {}", d.context_tokens),
                    _ => String::new(),
                };
                format!("{}, {:.0}{ms}", m.dispatches_per_token, d.bytes_per_token as f64 / 1e6)
            }
            None => "—".into(),
        };
        let cache = m.expert_cache.as_ref().map_or(String::new(), |c| {
            format!(
                ", expert cache {}/{} per layer (decode hit rate {:.2}, {:.1} MB uploaded per token)",
                c.resident_per_layer,
                c.experts_per_layer,
                c.decode_hit_rate,
                c.decode_uploaded_bytes_per_token / 1e6
            )
        });
        out += &format!(
            "| {}{cache} | {} | {}, {} | {:.0} MB ({:.0} + {:.0} + {:.0}) | {} | {} | {} | {} | {per_token} |\n",
            m.model,
            match m.backend {
                "cpu" => format!("CPU, {} thread{}", m.threads, if m.threads == 1 { "" } else { "s" }),
                _ => "WebGPU".into(),
            },
            m.context,
            m.kv_cache,
            g.total_mb,
            g.weights_mb,
            g.kv_cache_mb,
            g.scratch_mb,
            or_dash(prefill),
            or_dash(decode),
            or_dash(fraction),
            if m.decode.len() > 1 { format!("{:.2}", m.decode_long_over_short) } else { "—".into() },
        );
    }
    if let Some(s) = &report.structured {
        out += &structured::markdown(s);
    }
    if !report.vision.is_empty() {
        out += &vision::markdown(&report.vision);
    }
    if !report.blocksparse_kv_read.is_empty() {
        out += &phi3small::markdown(&report.blocksparse_kv_read);
    }
    out += "\n| kernel | shape | GB/s | ÷ memory bandwidth |\n|---|---|---|---|\n";
    for k in &report.kernels {
        out += &format!(
            "| {} | {} | {:.3} | {:.1} % |\n",
            k.kernel,
            k.shape,
            k.effective_gbps,
            100.0 * k.fraction_of_cpu_bandwidth
        );
    }
    out
}
