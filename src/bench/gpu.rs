//! `phi-web bench-gpu` (`make bench-gpu`, `scripts/device-bench.sh`): the
//! benchmark prepared for a real GPU, run end to end on lavapipe here.
//!
//! 1. The read ceiling: `read_bandwidth.wgsl` over >= 2 GiB of buffers.
//! 2. The decode matvec per weight format at Phi-3-mini's shapes, over 16
//!    rotating copies of each matrix (an H200's 60 MB L2 holds one copy of
//!    any Phi-3 matrix: one copy would measure L2), swept over the tuning
//!    knobs ([`Tuning::matvec_sweep`]), portable and with subgroups.
//! 3. Decode attention at 512, 2048 and 4096 positions, f16 and q8 caches,
//!    Phi-3-mini's 32 heads of 96, over 16 layers' caches.
//! 4. A synthetic Phi-3-mini q4_0 written on the spot: prefill 128 and 1024,
//!    decode at 64, 2048 and 4000 with f16 and q8 caches, GPU ms per token
//!    from timestamp queries beside the CPU's encode time.
//!
//! Kernel times are GPU times from timestamp queries where the adapter has
//! them (else wall time around a submit and wait). The quick profile, the
//! default on a software adapter, sweeps only the presets and skips the
//! 1024-token prefill and the cache fills (minutes each on lavapipe).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::{model_figure, random_layout, time_list, ModelBench, ModelFigure};
use crate::backend::{Backend, GpuBackend};
use crate::error::Result;
use crate::gpu::{AttentionScratch, Dispatch, Gpu, Kernels, KvFormat, Matrix, Tuning};
use crate::quant::WeightFormat;

/// Copies of each matrix the matvec rotates through.
pub const COPIES: usize = 16;
/// Bytes the read-ceiling probe reads per pass.
const CEILING_BYTES: u64 = 2 << 30;

/// Phi-3-mini's decode matrices, [rows, cols] = [out, in].
const PHI3_MINI: [(&str, usize, usize); 4] =
    [("qkv_proj", 9216, 3072), ("o_proj", 3072, 3072), ("gate_up_proj", 16384, 3072), ("down_proj", 3072, 8192)];

/// What to run.
#[derive(Clone, Debug)]
pub struct GpuBenchPlan {
    /// Presets only, no 1024-token prefill, no cache fills, 4 decode tokens.
    pub quick: bool,
    /// Where the synthetic Phi-3-mini is written (once); None skips the model.
    pub model_dir: Option<std::path::PathBuf>,
    /// The device's memory bandwidth by its datasheet, GB/s, for the goals
    /// (else they are taken against the measured read ceiling).
    pub nominal_gbps: Option<f64>,
}

#[derive(Serialize)]
pub struct GpuBenchReport {
    pub adapter: String,
    pub features: String,
    pub limits: String,
    pub kernel_tuning: String,
    pub profile: &'static str,
    pub timing: &'static str,
    pub nominal_gbps: Option<f64>,
    pub read_ceiling: ReadFigure,
    /// Every (format, matrix, tuning, subgroups) point measured.
    pub matvec: Vec<MatvecFigure>,
    /// The fastest point of each (format, matrix), and the default tuning's.
    pub matvec_best: Vec<MatvecBest>,
    pub attention: Vec<AttentionFigure>,
    pub models: Vec<ModelFigure>,
    pub goals: Vec<Goal>,
    pub seconds: f64,
}

#[derive(Serialize)]
pub struct ReadFigure {
    pub bytes: u64,
    pub buffers: usize,
    pub seconds: f64,
    pub gbps: f64,
}

#[derive(Serialize, Clone)]
pub struct MatvecFigure {
    pub format: &'static str,
    pub matrix: &'static str,
    pub shape: String,
    pub tuning: String,
    pub subgroups: bool,
    pub microseconds: f64,
    pub gbps: f64,
    pub fraction_of_ceiling: f64,
}

#[derive(Serialize)]
pub struct MatvecBest {
    pub best: MatvecFigure,
    /// The figure of the tuning this adapter gets by default.
    pub default: MatvecFigure,
}

#[derive(Serialize)]
pub struct AttentionFigure {
    pub kv_cache: &'static str,
    pub context: usize,
    pub splits: usize,
    pub microseconds: f64,
    pub gbps: f64,
    pub fraction_of_ceiling: f64,
}

#[derive(Serialize)]
pub struct Goal {
    pub what: String,
    pub value: f64,
    pub target: f64,
    pub met: bool,
}

/// Runs the plan on `b`'s GPU.
pub async fn run(b: &Backend, plan: &GpuBenchPlan, mut progress: impl FnMut(&str)) -> Result<GpuBenchReport> {
    let started = Instant::now();
    let GpuBackend { gpu, kernels } = b.gpu_only("bench-gpu")?;
    let reps = if plan.quick { 3 } else { 7 };

    progress("read ceiling");
    let read_ceiling = read_ceiling(gpu, kernels, reps)?;
    let ceiling = read_ceiling.gbps;

    let mut matvec = Vec::new();
    let mut matvec_best = Vec::new();
    let sweep = match plan.quick {
        true => {
            let mut presets = vec![kernels.tuning()];
            for preset in [Tuning::GPU, Tuning::SOFTWARE, Tuning::CPU] {
                if !presets.contains(&preset) {
                    presets.push(preset);
                }
            }
            presets
        }
        false => kernels.tuning().matvec_sweep(),
    };
    for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::F16] {
        for (i, &(name, rows, cols)) in PHI3_MINI.iter().enumerate() {
            progress(&format!("matvec {} {name} [{rows}, {cols}], {} tunings", format.name(), sweep.len()));
            let layout = random_layout(format, rows, cols, 1 + i as u64);
            let copies: Vec<Matrix> = (0..COPIES)
                .map(|_| Matrix::upload(gpu, "bench weights", format, rows, cols, &layout))
                .collect::<Result<_>>()?;
            let x = gpu.storage("x", cols as u64 * 4)?;
            let y = gpu.storage("y", rows as u64 * 4)?;
            let bytes = copies[0].read_bytes() + cols as u64 * 4;
            let mut points = Vec::new();
            for tuning in &sweep {
                for subgroups in [false, true] {
                    if subgroups && !gpu.features.subgroups {
                        continue;
                    }
                    let k = Kernels::with_tuning(gpu, *tuning, subgroups)?;
                    let list: Vec<Dispatch> = copies.iter().map(|w| k.matvec(w, &x, &y)).collect::<Result<_>>()?;
                    let seconds = time_list(gpu, &list, reps)? / COPIES as f64;
                    let gbps = bytes as f64 / seconds / 1e9;
                    points.push(MatvecFigure {
                        format: format.name(),
                        matrix: name,
                        shape: format!("{rows}x{cols}"),
                        tuning: tuning.matvec_name(),
                        subgroups,
                        microseconds: seconds * 1e6,
                        gbps,
                        fraction_of_ceiling: gbps / ceiling,
                    });
                }
            }
            let best = points.iter().max_by(|a, b| a.gbps.total_cmp(&b.gbps)).cloned();
            let default = points
                .iter()
                .find(|p| p.tuning == kernels.tuning().matvec_name() && p.subgroups == kernels.subgroups())
                .cloned();
            if let (Some(best), Some(default)) = (best, default) {
                matvec_best.push(MatvecBest { best, default });
            }
            matvec.extend(points);
        }
    }

    let mut attention = Vec::new();
    for kv_format in [KvFormat::F16, KvFormat::Q8] {
        for context in [512, 2048, 4096] {
            progress(&format!("attention decode, {} cache, {context} positions", kv_format.name()));
            attention.push(attention_figure(gpu, kernels, kv_format, context, ceiling, reps)?);
        }
    }

    let mut models = Vec::new();
    if let Some(dir) = &plan.model_dir {
        progress(&format!("synthetic Phi-3-mini q4_0 (writing it to {} once)", dir.display()));
        super::synthetic_phi3_mini(dir)?;
        for kv_cache in [KvFormat::F16, KvFormat::Q8] {
            let prompts = match (plan.quick, kv_cache) {
                (_, KvFormat::Q8) => vec![],
                (true, _) => vec![128],
                (false, _) => vec![128, 1024],
            };
            let bench = ModelBench {
                context: 4096,
                kv_cache,
                prompts,
                decode_contexts: vec![64, 2048, 4000],
                decode_tokens: if plan.quick { 4 } else { 32 },
                fill_cache: !plan.quick,
                gpu_memory: None,
            };
            let cpu_gbps = ceiling; // model_figure's "fraction" is then of the GPU's read ceiling
            models.push(model_figure(b, dir, &bench, cpu_gbps, |s| progress(&format!("  {s}"))).await?);
        }
    }

    let goals = goals(&matvec_best, &models, ceiling, plan.nominal_gbps);
    Ok(GpuBenchReport {
        adapter: gpu.adapter.to_string(),
        features: format!("{:?}", gpu.features),
        limits: format!(
            "max buffer {} MiB, max storage binding {} MiB, {} invocations per workgroup",
            gpu.limits.max_buffer_size >> 20,
            gpu.limits.max_storage_buffer_binding_size >> 20,
            gpu.limits.max_compute_invocations_per_workgroup
        ),
        kernel_tuning: format!("{:?}: {}", gpu.tuning, kernels.tuning().matvec_name()),
        profile: if plan.quick { "quick" } else { "full" },
        timing: if gpu.features.timestamps { "GPU timestamp queries" } else { "wall clock around submit + wait" },
        nominal_gbps: plan.nominal_gbps,
        read_ceiling,
        matvec,
        matvec_best,
        attention,
        models,
        goals,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `read_bandwidth.wgsl` over >= 2 GiB in buffers as large as a binding may be.
fn read_ceiling(gpu: &Gpu, kernels: &Kernels, reps: usize) -> Result<ReadFigure> {
    let limit = gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size).min(1 << 30);
    let chunk = limit / 16 * 16;
    let buffers = CEILING_BYTES.div_ceil(chunk) as usize;
    let words = (chunk / 16) as usize;
    let workgroups = (words / (256 * 32)).clamp(1, gpu.limits.max_compute_workgroups_per_dimension as usize);
    let out = gpu.storage("read ceiling out", workgroups as u64 * 4)?;
    let data: Vec<wgpu::Buffer> =
        (0..buffers).map(|_| gpu.storage("read ceiling data", chunk)).collect::<Result<_>>()?;
    let list: Vec<Dispatch> =
        data.iter().map(|d| kernels.read_bandwidth(d, &out, workgroups)).collect::<Result<_>>()?;
    let seconds = time_list(gpu, &list, reps)?;
    let bytes = chunk * buffers as u64;
    Ok(ReadFigure { bytes, buffers, seconds, gbps: bytes as f64 / seconds / 1e9 })
}

/// One decode query per head over `context` cached positions, across 16
/// layers' caches in turn (one layer's f16 cache at 4k is 50 MB: L2-sized).
fn attention_figure(
    gpu: &Gpu,
    kernels: &Kernels,
    kv_format: KvFormat,
    context: usize,
    ceiling: f64,
    reps: usize,
) -> Result<AttentionFigure> {
    let shape = super::phi3_mini_decode_attention(gpu, kv_format, context);
    let (heads, head_dim, capacity) = (shape.heads, shape.head_dim, shape.slots);
    let cache_bytes = (capacity * kv_format.row_bytes(heads * head_dim)) as u64;
    let q = gpu.storage("q", (heads * head_dim * 4) as u64)?;
    let out = gpu.storage("out", (heads * head_dim * 4) as u64)?;
    let scratch = AttentionScratch::new(gpu, &shape)?;
    let step = gpu.step_buffer(context as u32 - 1);
    let mut list = Vec::new();
    let mut caches = Vec::new();
    for _ in 0..COPIES {
        caches.push((gpu.storage("k", cache_bytes)?, gpu.storage("v", cache_bytes)?));
    }
    for (k, v) in &caches {
        list.extend(kernels.attention(&step, &q, k, v, &scratch, &out, &shape)?);
    }
    let seconds = time_list(gpu, &list, reps)? / COPIES as f64;
    let bytes = 2 * (context * kv_format.row_bytes(heads * head_dim)) as u64;
    let gbps = bytes as f64 / seconds / 1e9;
    Ok(AttentionFigure {
        kv_cache: kv_format.name(),
        context,
        splits: shape.splits,
        microseconds: seconds * 1e6,
        gbps,
        fraction_of_ceiling: gbps / ceiling,
    })
}

/// Issue 18's goals, as far as this run measured them.
fn goals(best: &[MatvecBest], models: &[ModelFigure], ceiling: f64, nominal: Option<f64>) -> Vec<Goal> {
    let mut goals = Vec::new();
    let mut goal = |what: String, value: f64, target: f64| {
        goals.push(Goal { what, value, target, met: value >= target });
    };
    if let Some(b) = best.iter().find(|b| b.best.format == "q4_0" && b.best.matrix == "gate_up_proj") {
        goal("q4_0 gate_up matvec ÷ read ceiling (best tuning)".into(), b.best.fraction_of_ceiling, 0.70);
        goal("q4_0 gate_up matvec ÷ read ceiling (default tuning)".into(), b.default.fraction_of_ceiling, 0.70);
    }
    let (bandwidth, of) = match nominal {
        Some(n) => (n, "the datasheet bandwidth"),
        None => (ceiling, "the read ceiling"),
    };
    let decode_at = |kv: &str, context: usize| {
        models.iter().filter(|m| m.kv_cache == kv).flat_map(|m| m.decode.iter()).find(|d| d.context_tokens == context)
    };
    if let Some(d) = decode_at("f16", 64) {
        goal(format!("Phi-3-mini q4 decode at 64 ÷ {of}"), d.effective_gbps / bandwidth, 0.15);
    }
    if let (Some(short), Some(long)) = (decode_at("q8", 64), decode_at("q8", 2048)) {
        goal("decode at 2048 ÷ decode at 64, q8 cache".into(), long.tokens_per_s / short.tokens_per_s, 0.80);
    }
    goals
}

/// The short Markdown table beside the JSON.
pub fn markdown(r: &GpuBenchReport) -> String {
    let mut out = format!(
        "# phi-web bench-gpu\n\nAdapter: {}. Features: {}. {}. Tuning: {}. Profile: {}, timed by {}, {:.0} s in all.\n\n",
        r.adapter, r.features, r.limits, r.kernel_tuning, r.profile, r.timing, r.seconds
    );
    out += &format!(
        "Read ceiling: **{:.1} GB/s** ({} buffers, {:.2} GiB)\n\n",
        r.read_ceiling.gbps,
        r.read_ceiling.buffers,
        r.read_ceiling.bytes as f64 / (1u64 << 30) as f64
    );
    out += "| matvec | shape | default tuning: µs, GB/s, ÷ ceiling | best tuning | best: µs, GB/s, ÷ ceiling |\n|---|---|---|---|---|\n";
    for b in &r.matvec_best {
        let (d, x) = (&b.default, &b.best);
        out += &format!(
            "| {} {} | {} | {:.1}, {:.1}, {:.0} % | {}{} | {:.1}, {:.1}, {:.0} % |\n",
            d.format,
            d.matrix,
            d.shape,
            d.microseconds,
            d.gbps,
            100.0 * d.fraction_of_ceiling,
            x.tuning,
            if x.subgroups { ", subgroups" } else { "" },
            x.microseconds,
            x.gbps,
            100.0 * x.fraction_of_ceiling
        );
    }
    out += "\n| attention decode | context | splits | µs | GB/s | ÷ ceiling |\n|---|---|---|---|---|---|\n";
    for a in &r.attention {
        out += &format!(
            "| {} cache | {} | {} | {:.1} | {:.1} | {:.0} % |\n",
            a.kv_cache,
            a.context,
            a.splits,
            a.microseconds,
            a.gbps,
            100.0 * a.fraction_of_ceiling
        );
    }
    if !r.models.is_empty() {
        out += "\n| synthetic Phi-3-mini q4_0 | prefill tok/s | decode tok/s @ context | GPU ms (encode ms) per token | GB/s | dispatches per token |\n|---|---|---|---|---|---|\n";
        for m in &r.models {
            let prefill: Vec<String> =
                m.prefill.iter().map(|p| format!("{:.1} @ {}", p.tokens_per_s, p.prompt_tokens)).collect();
            let decode: Vec<String> =
                m.decode.iter().map(|d| format!("{:.2} @ {}", d.tokens_per_s, d.context_tokens)).collect();
            let ms: Vec<String> = m
                .decode
                .iter()
                .map(|d| match (d.gpu_ms_per_token, d.encode_ms_per_token) {
                    (Some(g), Some(e)) => format!("{g:.2} ({e:.2})"),
                    _ => "—".into(),
                })
                .collect();
            let gbps: Vec<String> = m.decode.iter().map(|d| format!("{:.1}", d.effective_gbps)).collect();
            let or_dash = |v: Vec<String>| if v.is_empty() { "—".to_string() } else { v.join(", ") };
            out += &format!(
                "| {} cache | {} | {} | {} | {} | {} |\n",
                m.kv_cache,
                or_dash(prefill),
                or_dash(decode),
                ms.join(", "),
                gbps.join(", "),
                m.dispatches_per_token
            );
        }
    }
    out += "\n| goal | value | target | met |\n|---|---|---|---|\n";
    for g in &r.goals {
        out += &format!("| {} | {:.3} | {:.2} | {} |\n", g.what, g.value, g.target, if g.met { "yes" } else { "no" });
    }
    out
}

/// Writes the report's JSON and Markdown into `dir` (bench-gpu.json, .md).
pub fn write(r: &GpuBenchReport, dir: &Path) -> Result<()> {
    use crate::error::Error;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_string_pretty(r)
        .map_err(|e| Error::Io { path: dir.display().to_string(), message: e.to_string() })?;
    let (json_path, md_path) = (dir.join("bench-gpu.json"), dir.join("bench-gpu.md"));
    std::fs::write(&json_path, json + "\n").map_err(|e| Error::io(&json_path, e))?;
    std::fs::write(&md_path, markdown(r)).map_err(|e| Error::io(&md_path, e))?;
    Ok(())
}
