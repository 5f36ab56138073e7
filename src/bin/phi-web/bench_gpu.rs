//! `phi-web bench-gpu`: the GPU benchmark (src/bench/gpu.rs) with its report
//! written as JSON and Markdown.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use phi_web::backend::{Backend, GpuBackend};
use phi_web::bench::gpu::{GpuBenchPlan, GpuBenchReport};
use phi_web::gpu::{Gpu, GpuOptions, Kernels};

use crate::cli::{Outcome, Stages};

#[derive(Args)]
pub struct BenchGpuArgs {
    /// Folder for bench-gpu.json and bench-gpu.md.
    #[arg(long, default_value = "target/bench-gpu")]
    out: PathBuf,
    /// quick: the tuning presets only, no 1024-token prefill or cache fills
    /// (minutes on a CPU adapter); full: the whole sweep; auto: quick on a
    /// software adapter.
    #[arg(long, value_enum, default_value_t = Profile::Auto)]
    profile: Profile,
    /// Where the synthetic Phi-3-mini q4_0 (2.2 GB) is written once.
    #[arg(long, default_value = "target/bench/synthetic-phi3-mini")]
    model_dir: PathBuf,
    /// Kernels only: no synthetic model.
    #[arg(long)]
    kernels_only: bool,
    /// The device's memory bandwidth by its datasheet, GB/s (the H200's is
    /// 4800): the decode goal is then taken against it, not the read ceiling.
    #[arg(long)]
    nominal_gbps: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    Auto,
    Quick,
    Full,
}

pub fn bench_gpu(options: &GpuOptions, args: &BenchGpuArgs) -> Outcome {
    let gpu = pollster::block_on(Gpu::new(options))?;
    let quick = match args.profile {
        Profile::Quick => true,
        Profile::Full => false,
        Profile::Auto => gpu.adapter.is_software(),
    };
    eprintln!("bench-gpu on {} ({} profile)", gpu.adapter, if quick { "quick" } else { "full" });
    let kernels = Kernels::new(&gpu);
    let backend = Backend::Gpu(GpuBackend { gpu, kernels });
    let plan = GpuBenchPlan {
        quick,
        model_dir: (!args.kernels_only).then(|| args.model_dir.clone()),
        nominal_gbps: args.nominal_gbps,
    };
    let stages = Stages::new();
    let report: GpuBenchReport =
        pollster::block_on(phi_web::bench::gpu::run(&backend, &plan, |s| stages.log(&format!("  {s}"))))?;
    stages.finish();
    phi_web::bench::gpu::write(&report, &args.out)?;
    print!("{}", phi_web::bench::gpu::markdown(&report));
    eprintln!("wrote {}", args.out.join("bench-gpu.json").display());
    Ok(())
}
