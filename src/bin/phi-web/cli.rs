//! Command dispatch and the commands that need more than a few lines.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use phi_web::bench::ModelBench;
use phi_web::convert::{self, ConvertOptions, Eta};
use phi_web::formats::package::Package;
use phi_web::gpu::{Gpu, GpuOptions, Kernels, KvFormat};
use phi_web::model::ExpertSizes;
use phi_web::quant::WeightFormat;

const USAGE: &str = "\
usage: phi-web <command> [options]

commands:
  convert INPUT OUT_DIR [--quant q4_0|q4_1|q8_0|f16|f32] [--shard-mb 64] [--context N]
                       GGUF file or Hugging Face folder -> phi-web package (model.json + shards)
  generate MODEL_DIR --prompt TEXT [--chat] [--system TEXT] [--max-tokens N] [--temperature T]
           [--top-p P] [--top-k K] [--repetition-penalty R] [--seed S] [--stop TEXT]... [--context N] [--kv-cache f16|q8] [--json]
           [--gpu-memory MB]
                       generate text (raw prompt, or one user message through the chat template)
  chat MODEL_DIR [--system TEXT] [sampling options as for generate]
                       interactive chat with streaming output; each turn reuses the KV cache
  embed MODEL_DIR (--text TEXT | --file FILE)
                       sentence embeddings (BERT-family package) as JSON: one embedding for
                       --text, or one line with index and embedding per line of FILE
  logits MODEL_DIR --tokens 1,2,3 [--top K]
                       logits of one sequence as JSON, one row per position
  verify DIR           check every shard's size and sha256, and the manifest's tensor table
  inspect FILE|DIR     metadata and tensors of a GGUF file, a Hugging Face folder or a package
  info                 the GPU adapter, its features and limits as JSON
  bench [--out FILE] [--long] [--kernels-only] [--only smollm2|phi3-mini|phi-mini-moe]
                       benchmark the kernels, SmolLM2, a synthetic Phi-3-mini and Phi-mini-MoE; JSON on
                       stdout (and in FILE); --long adds the 1024-token Phi-3-mini prefill
  serve ROOT [--mount /PREFIX=DIR]... [--port N] [--host ADDR]
                       static server for a page using phi-web: application/wasm, COOP/COEP,
                       range requests, no listings; port from --port, $PORT or 8080

options:
  --portable           use neither shader-f16 nor subgroups (the path every device has)
  --no-verify          (generate, chat, logits) skip the sha256 check of the shards when loading
  --gpu-memory MB      (generate, chat, logits) weights the GPU may hold; a mixture of experts over
                       it keeps each layer's other experts in the package and caches the used ones
";

pub fn run(args: &[String]) -> Result<(), String> {
    let portable = args.iter().any(|a| a == "--portable");
    let gpu_options = GpuOptions { allow_f16: !portable, allow_subgroups: !portable, ..Default::default() };
    let positional: Vec<&String> = positionals(args);
    match args.first().map(String::as_str) {
        Some("convert") => match positional.as_slice() {
            [input, out] => convert(Path::new(input), Path::new(out), args),
            _ => Err(format!("convert needs INPUT and OUT_DIR\n\n{USAGE}")),
        },
        Some("generate") => match positional.as_slice() {
            [dir] => crate::run::generate(Path::new(dir), args, &gpu_options),
            _ => Err(format!("generate needs a package folder\n\n{USAGE}")),
        },
        Some("chat") => match positional.as_slice() {
            [dir] => crate::run::chat(Path::new(dir), args, &gpu_options),
            _ => Err(format!("chat needs a package folder\n\n{USAGE}")),
        },
        Some("embed") => match positional.as_slice() {
            [dir] => crate::embed::embed(Path::new(dir), args, &gpu_options),
            _ => Err(format!("embed needs a package folder\n\n{USAGE}")),
        },
        Some("logits") => match positional.as_slice() {
            [dir] => crate::run::logits(Path::new(dir), args, &gpu_options),
            _ => Err(format!("logits needs a package folder\n\n{USAGE}")),
        },
        Some("verify") => match positional.as_slice() {
            [dir] => verify(Path::new(dir)),
            _ => Err(format!("verify needs a package folder\n\n{USAGE}")),
        },
        Some("inspect") => match positional.as_slice() {
            [path] => {
                let text = crate::inspect::inspect(Path::new(path)).map_err(|e| e.to_string())?;
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = std::io::stdout().write_all(text.as_bytes());
                Ok(())
            }
            _ => Err(format!("inspect needs a GGUF file, a Hugging Face folder or a package\n\n{USAGE}")),
        },
        Some("info") => info(&gpu_options),
        Some("bench") => bench(&gpu_options, flag_value(args, "--out")?, args),
        Some("serve") => match positional.as_slice() {
            [root] => {
                let port = match flag_value(args, "--port")?.or_else(|| std::env::var("PORT").ok()) {
                    None => 8080,
                    Some(p) => p.parse().map_err(|_| format!("port {p}: expected a number from 0 to 65535"))?,
                };
                let host = flag_value(args, "--host")?.unwrap_or_else(|| "127.0.0.1".into());
                let mounts = flag_values(args, "--mount");
                crate::serve::serve(Path::new(root), &mounts, &host, port)
            }
            _ => Err(format!("serve needs the folder to serve at /\n\n{USAGE}")),
        },
        Some("help") | Some("--help") | Some("-h") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command '{other}'\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    }
}

/// Arguments after the command that are neither flags nor flag values.
fn positionals(args: &[String]) -> Vec<&String> {
    const WITH_VALUE: [&str; 22] = [
        "--quant",
        "--gpu-memory",
        "--kv-cache",
        "--shard-mb",
        "--out",
        "--context",
        "--prompt",
        "--system",
        "--max-tokens",
        "--temperature",
        "--top-p",
        "--top-k",
        "--seed",
        "--repetition-penalty",
        "--stop",
        "--tokens",
        "--top",
        "--mount",
        "--port",
        "--host",
        "--text",
        "--file",
    ];
    let mut out = Vec::new();
    let mut skip = false;
    for a in args.iter().skip(1) {
        if skip {
            skip = false;
        } else if WITH_VALUE.contains(&a.as_str()) {
            skip = true;
        } else if !a.starts_with("--") {
            out.push(a);
        }
    }
    out
}

/// The values after every `--flag` (a repeatable flag).
pub fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect()
}

/// The value after `--flag`, if the flag is present.
pub fn flag_value(args: &[String], flag: &str) -> Result<Option<String>, String> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => args.get(i + 1).cloned().map(Some).ok_or_else(|| format!("{flag} needs a value")),
    }
}

fn convert(input: &Path, out: &Path, args: &[String]) -> Result<(), String> {
    let quant = match flag_value(args, "--quant")? {
        None => None,
        Some(q) => {
            Some(WeightFormat::parse(&q).ok_or_else(|| format!("--quant {q}: expected q4_0, q4_1, q8_0, f16 or f32"))?)
        }
    };
    let shard_mb: f64 = match flag_value(args, "--shard-mb")? {
        None => 64.0,
        Some(v) => v
            .parse()
            .ok()
            .filter(|&v: &f64| v * 1048576.0 >= 1.0)
            .ok_or_else(|| format!("--shard-mb {v}: expected a positive number of MiB"))?,
    };
    let context: usize = match flag_value(args, "--context")? {
        None => 4096,
        Some(v) => v.parse().map_err(|_| format!("--context {v}: expected an integer"))?,
    };
    let options = ConvertOptions { quant, shard_bytes: (shard_mb * 1048576.0) as u64, ..Default::default() };
    let eta = Eta::default();
    let mut line = ProgressLine::default();
    let result = convert::convert(input, out, &options, &mut |p| {
        line.update(&format!("converting {}: {}", p.tensor, eta.line(p.done, p.total)), p.done == p.total);
    });
    line.finish();
    let summary = result.map_err(|e| e.to_string())?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    let c = &summary.config;
    let kv = c.kv_bytes_per_token() as u64 * context as u64;
    println!("converted {} -> {}", input.display(), out.display());
    println!(
        "  architecture   {:?}, {} layers, hidden {}, vocab {}",
        c.architecture, c.num_layers, c.hidden_size, c.vocab_size
    );
    println!(
        "  tensors        {} ({})",
        summary.tensors,
        summary.formats.iter().map(|(f, n)| format!("{n} {f}")).collect::<Vec<_>>().join(", ")
    );
    println!("  bytes          {:.1} MB in {} shards", summary.total_bytes as f64 / 1e6, summary.shards);
    println!("  max |error|    {:.3e} against the source (0 = bit-exact)", summary.max_abs_error);
    println!(
        "  GPU memory     {:.1} MB weights + {:.1} MB f16 KV cache at {context} tokens",
        summary.total_bytes as f64 / 1e6,
        kv as f64 / 1e6
    );
    println!("  time           {:.1}s", eta.elapsed());
    Ok(())
}

fn verify(dir: &Path) -> Result<(), String> {
    let package = Package::open(dir).map_err(|e| e.to_string())?;
    let total = package.total_bytes();
    let eta = Eta::default();
    let mut line = ProgressLine::default();
    let result = package.verify(|done| line.update(&format!("verifying: {}", eta.line(done, total)), done == total));
    line.finish();
    let checked = result.map_err(|e| e.to_string())?;
    println!(
        "ok: {} shards, {checked} bytes, {} tensors match {}",
        package.manifest.shards.len(),
        package.manifest.tensors.len(),
        dir.join("model.json").display()
    );
    Ok(())
}

/// A progress line on stderr: redrawn in place on a terminal, otherwise
/// printed every few seconds (logs stay readable).
struct ProgressLine {
    last: Option<Instant>,
    terminal: bool,
    drawn: bool,
}

impl Default for ProgressLine {
    fn default() -> Self {
        ProgressLine { last: None, terminal: std::io::stderr().is_terminal(), drawn: false }
    }
}

impl ProgressLine {
    fn update(&mut self, text: &str, last: bool) {
        let every = if self.terminal { Duration::from_millis(100) } else { Duration::from_secs(5) };
        if !last && self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let mut stderr = std::io::stderr();
        let _ = if self.terminal { write!(stderr, "\r\x1b[2K{text}") } else { writeln!(stderr, "{text}") };
        self.drawn = true;
    }

    fn finish(&self) {
        if self.terminal && self.drawn {
            eprintln!();
        }
    }
}

fn info(options: &GpuOptions) -> Result<(), String> {
    let gpu = pollster::block_on(Gpu::new(options)).map_err(|e| e.to_string())?;
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

fn bench(options: &GpuOptions, out: Option<String>, args: &[String]) -> Result<(), String> {
    let only = flag_value(args, "--only")?;
    let models = ["smollm2", "phi3-mini", "phi-mini-moe"];
    if let Some(name) = only.as_deref().filter(|name| !models.contains(name)) {
        return Err(format!("--only {name}: the models are {}", models.join(", ")));
    }
    let gpu = pollster::block_on(Gpu::new(options)).map_err(|e| e.to_string())?;
    let kernels = Kernels::new(&gpu);
    eprintln!("benchmarking on {}", gpu.adapter);
    let mut report = pollster::block_on(phi_web::bench::kernel_report(&gpu, &kernels, |stage| eprintln!("  {stage}")))
        .map_err(|e| e.to_string())?;
    if args.iter().any(|a| a == "--kernels-only") {
        return write_report(&report, out);
    }
    // End to end: SmolLM2 (converted from .models when present), a synthetic
    // Phi-3-mini and a synthetic Phi-mini-MoE (random q4_0 weights, the real
    // shapes); `--only NAME` runs one of them.
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let cpu = report.cpu_read_gbps_all_threads;
    let figure = |dir: &Path, plan: &ModelBench| {
        pollster::block_on(phi_web::bench::model_figure(&gpu, &kernels, dir, plan, cpu, |s| eprintln!("    {s}")))
            .map_err(|e| e.to_string())
    };
    let decode_plan = |prompts: Vec<usize>, decode_tokens: usize| ModelBench {
        context: 4096,
        kv_cache: KvFormat::F16,
        prompts,
        decode_contexts: vec![64, 2048],
        decode_tokens,
        gpu_memory: None,
    };
    let gguf = Path::new(".models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if want("smollm2") && gguf.exists() {
        eprintln!("  SmolLM2 end to end");
        let dir = Path::new("target/bench/smollm2");
        convert::convert(gguf, dir, &ConvertOptions::default(), &mut |_| {}).map_err(|e| e.to_string())?;
        let plan = decode_plan(vec![128, 1024], 16);
        report.models.push(figure(dir, &plan)?);
        eprintln!("  SmolLM2 with an 8-bit KV cache");
        let plan = ModelBench { kv_cache: KvFormat::Q8, prompts: vec![], ..plan };
        report.models.push(figure(dir, &plan)?);
    } else if want("smollm2") {
        eprintln!("  SmolLM2 skipped: run `make models`");
    }
    if want("phi3-mini") {
        let dir = Path::new("target/bench/synthetic-phi3-mini");
        eprintln!("  synthetic Phi-3-mini q4_0 (writing it to {} once)", dir.display());
        phi_web::bench::synthetic_phi3_mini(dir).map_err(|e| e.to_string())?;
        // A 1024-token Phi-3-mini prefill takes tens of minutes on a CPU adapter.
        let prompts = if args.iter().any(|a| a == "--long") { vec![128, 1024] } else { vec![128] };
        let plan = decode_plan(prompts, 4);
        report.models.push(figure(dir, &plan)?);
        eprintln!("  synthetic Phi-3-mini with an 8-bit KV cache");
        let plan = ModelBench { kv_cache: KvFormat::Q8, prompts: vec![], ..plan };
        report.models.push(figure(dir, &plan)?);
        for kv_cache in KvFormat::ALL {
            eprintln!("  synthetic Phi-3-mini GPU memory at a 1k context, {} KV cache", kv_cache.name());
            let plan = ModelBench {
                context: 1024,
                kv_cache,
                prompts: vec![],
                decode_contexts: vec![],
                decode_tokens: 0,
                gpu_memory: None,
            };
            report.models.push(figure(dir, &plan)?);
        }
    }
    if want("phi-mini-moe") {
        // Phi-mini-MoE's widths, 8 of its 32 layers (1.2 GB instead of 4.3):
        // decode GB/s counts the active bytes (attention, routers, two
        // experts per layer, lm_head), the floor of what a token must read.
        let dir = Path::new("target/bench/synthetic-phi-mini-moe");
        eprintln!("  synthetic Phi-mini-MoE q4_0, 8 layers (writing it to {} once)", dir.display());
        phi_web::bench::synthetic_phi_mini_moe(dir, 8).map_err(|e| e.to_string())?;
        report.models.push(figure(dir, &decode_plan(vec![128], 4))?);
        // Half of each layer's experts on the GPU: misses read the package.
        let sizes = Package::open(dir).and_then(|p| ExpertSizes::of(&p)).map_err(|e| e.to_string())?;
        eprintln!("  synthetic Phi-mini-MoE with an expert cache of 8 of 16 experts per layer");
        let plan = ModelBench { gpu_memory: Some(sizes.budget_for(8)), ..decode_plan(vec![128], 16) };
        report.models.push(figure(dir, &plan)?);
    }
    write_report(&report, out)
}

/// The benchmark JSON on stdout and, with --out, in a file.
fn write_report(report: &phi_web::bench::KernelReport, out: Option<String>) -> Result<(), String> {
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    println!("{json}");
    if let Some(path) = out {
        if let Some(dir) = Path::new(&path).parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&path, json + "\n").map_err(|e| format!("{path}: {e}"))?;
        let table = Path::new(&path).with_extension("md");
        std::fs::write(&table, phi_web::bench::markdown(report)).map_err(|e| format!("{}: {e}", table.display()))?;
        eprintln!("wrote {path} and {}", table.display());
    }
    Ok(())
}
