//! The native `phi-web` command: GPU info and benchmarks today; convert,
//! generate, logits and serve arrive with their issues.

// The CLI is native only; on wasm32 (built by `cargo test --target wasm32`)
// the binary is empty.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::process::ExitCode;

    use phi_web::gpu::{Gpu, GpuOptions, Kernels};

    const USAGE: &str = "\
    usage: phi-web <command> [options]

    commands:
      info                 print the GPU adapter, its features and limits as JSON
      bench [--out FILE]   benchmark the kernels; JSON on stdout (and in FILE)

    options:
      --portable           use neither shader-f16 nor subgroups (the path every device has)
    ";

    pub fn main() -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("phi-web: {message}");
                ExitCode::FAILURE
            }
        }
    }

    fn run(args: &[String]) -> Result<(), String> {
        let portable = args.iter().any(|a| a == "--portable");
        let options = GpuOptions { allow_f16: !portable, allow_subgroups: !portable, ..Default::default() };
        match args.first().map(String::as_str) {
            Some("info") => {
                let gpu = pollster::block_on(Gpu::new(&options)).map_err(|e| e.to_string())?;
                let l = &gpu.limits;
                let info = serde_json::json!({
                    "adapter": gpu.adapter.name,
                    "backend": gpu.adapter.backend,
                    "device_type": gpu.adapter.device_type,
                    "driver": gpu.adapter.driver,
                    "features": { "shader_f16": gpu.features.shader_f16, "subgroups": gpu.features.subgroups, "timestamps": gpu.features.timestamps },
                    "limits": {
                        "max_buffer_size": l.max_buffer_size,
                        "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
                        "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
                        "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
                        "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
                        "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
                    },
                });
                println!("{}", serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?);
                Ok(())
            }
            Some("bench") => {
                let out = flag_value(args, "--out")?;
                let gpu = pollster::block_on(Gpu::new(&options)).map_err(|e| e.to_string())?;
                let kernels = pollster::block_on(Kernels::new(&gpu)).map_err(|e| e.to_string())?;
                eprintln!("benchmarking on {}", gpu.adapter);
                let report =
                    pollster::block_on(phi_web::bench::kernel_report(&gpu, &kernels, |stage| eprintln!("  {stage}")))
                        .map_err(|e| e.to_string())?;
                let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
                println!("{json}");
                if let Some(path) = out {
                    if let Some(dir) = std::path::Path::new(&path).parent() {
                        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    }
                    std::fs::write(&path, json + "\n").map_err(|e| format!("{path}: {e}"))?;
                    eprintln!("wrote {path}");
                }
                Ok(())
            }
            Some("help") | Some("--help") | Some("-h") => {
                print!("{USAGE}");
                Ok(())
            }
            Some(other) => Err(format!("unknown command '{other}'\n\n{USAGE}")),
            None => Err(USAGE.to_string()),
        }
    }

    /// The value after `--flag`, if the flag is present.
    fn flag_value(args: &[String], flag: &str) -> Result<Option<String>, String> {
        match args.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) => args.get(i + 1).cloned().map(Some).ok_or_else(|| format!("{flag} needs a value")),
        }
    }
}
