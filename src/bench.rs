//! Kernel benchmarks (native only): effective memory bandwidth of the decode
//! matvec at Phi-3-mini shapes, next to this machine's CPU memory-read
//! bandwidth measured in the same run, so that the ratio means something on
//! a shared, noisy machine.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::gpu::{AttentionScratch, AttentionShape, Dispatch, Gpu, Kernels, Matrix};
use crate::quant::{self, GpuLayout, WeightFormat};

#[derive(Serialize)]
pub struct KernelReport {
    pub adapter: String,
    pub features: String,
    /// CPU memory-read bandwidth, GB/s (sum over a 512 MiB buffer, best of 3).
    pub cpu_read_gbps_1_thread: f64,
    pub cpu_read_gbps_all_threads: f64,
    pub threads: usize,
    pub kernels: Vec<KernelFigure>,
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
    Matrix::upload(gpu, "bench weights", format, rows, cols, &layout)
}

/// Median seconds per dispatch list: `reps` copies in one submit, `trials` times.
fn time_dispatches(gpu: &Gpu, dispatches: &[&Dispatch], reps: usize, trials: usize) -> Result<f64> {
    let list: Vec<&Dispatch> = (0..reps).flat_map(|_| dispatches.iter().copied()).collect();
    gpu.run(&list); // warm-up: pipeline and memory first touch
    gpu.wait()?;
    let mut times: Vec<f64> = (0..trials)
        .map(|_| {
            let start = Instant::now();
            gpu.run(&list);
            gpu.wait().map(|_| start.elapsed().as_secs_f64() / reps as f64)
        })
        .collect::<Result<_>>()?;
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

    // Decode attention over a 4k f16 cache, Phi-3-mini heads (32 x 96).
    progress("attention decode");
    let (heads, head_dim, capacity) = (32, 96, 4096);
    let shape = AttentionShape {
        tokens: 1,
        heads,
        kv_heads: heads,
        head_dim,
        q_stride: heads * head_dim,
        capacity,
        window: 0,
        scale: 0.1,
        splits: AttentionShape::default_splits(1, capacity),
    };
    let cache_bytes = (capacity * heads * head_dim * 2) as u64;
    let (k, v) = (gpu.storage("k", cache_bytes)?, gpu.storage("v", cache_bytes)?);
    let (q, out) =
        (gpu.storage("q", (heads * head_dim * 4) as u64)?, gpu.storage("out", (heads * head_dim * 4) as u64)?);
    let scratch = AttentionScratch::new(gpu, &shape)?;
    let step = gpu.step_buffer(capacity as u32 - 1);
    let [split_pass, combine] = kernels.attention(&step, &q, &k, &v, &scratch, &out, &shape)?;
    let seconds = time_dispatches(gpu, &[&split_pass, &combine], 5, 3)?;
    push(
        "attention_decode".into(),
        format!("{heads} heads x {head_dim}, kv {capacity}, {} splits", shape.splits),
        seconds,
        2 * cache_bytes,
    );

    Ok(KernelReport {
        adapter: gpu.adapter.to_string(),
        features: format!("{:?}", gpu.features),
        cpu_read_gbps_1_thread: cpu_1,
        cpu_read_gbps_all_threads: cpu_all,
        threads,
        kernels: figures,
    })
}
