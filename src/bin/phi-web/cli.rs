//! The command line: clap's derive parser (per-command help with examples,
//! typed values, `help <command>`, shell completions), how a failure becomes
//! an exit code, and the commands that need more than a few lines.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use phi_web::backend::{Backend, BackendChoice, GpuBackend};
use phi_web::bench::ModelBench;
use phi_web::convert::{self, ConvertOptions};
use phi_web::engine::{EngineOptions, Request, DEFAULT_CONTEXT};
use phi_web::formats::package::Package;
use phi_web::gpu::{Gpu, GpuOptions, Kernels, KvFormat};
use phi_web::model::ExpertSizes;
use phi_web::quant::WeightFormat;
use phi_web::structured::{JsonSchema, ResponseFormat};

const EXIT_CODES: &str = "\
Exit codes: 0 success; 1 the command failed (the message starts with the
error's kind, as JavaScript names it: ModelFormatError, GPUError, ...);
2 bad usage (an unknown command or flag, a value that does not parse).";

#[derive(Parser)]
#[command(name = "phi-web", version, about = "Phi models on WebGPU: convert, run, serve and benchmark them", after_help = EXIT_CODES)]
pub struct Cli {
    /// Use neither shader-f16 nor subgroups (the path every device has).
    #[arg(long, global = true)]
    portable: bool,
    /// Where models run: auto (WebGPU on a hardware adapter, else the CPU), webgpu or cpu.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_backend)]
    backend: BackendChoice,
    /// Threads of the CPU backend (default: one per core).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// GGUF file or Hugging Face folder -> phi-web package (model.json + shards).
    #[command(after_help = "Examples:\n  phi-web convert Phi-3.5-mini-instruct-Q4_0.gguf phi-3.5-mini/\n  \
                            phi-web convert ~/hf/Phi-3-mini-4k-instruct phi-3-mini/ --quant q4_0")]
    Convert(ConvertArgs),
    /// Generate text: the prompt raw, or with --chat one user message through the chat template.
    #[command(
        after_help = "Examples:\n  phi-web generate smollm2/ --chat --prompt \"What is the capital of France?\"\n  \
                            phi-web generate smollm2/ --prompt \"Once upon a time\" --max-tokens 64 --json"
    )]
    Generate(GenerateArgs),
    /// Interactive chat, streamed; each turn reuses the KV cache (/reset, /exit).
    #[command(after_help = "Example:\n  phi-web chat smollm2/ --system \"Answer in one sentence.\"")]
    Chat(ChatArgs),
    /// Sentence embeddings (BERT-family package) as JSON lines.
    #[command(
        after_help = "Examples:\n  phi-web embed minilm/ --text \"A sentence\"\n  phi-web embed minilm/ --file lines.txt"
    )]
    Embed(EmbedArgs),
    /// Logits of one sequence as JSON, one row per position.
    #[command(after_help = "Example:\n  phi-web logits smollm2/ --tokens 1,2,3 --top 5")]
    Logits(LogitsArgs),
    /// Token ids of a text as JSON, as a prompt is encoded (no GPU needed).
    #[command(after_help = "Example:\n  phi-web tokenize phi-3-mini/ --text '<|user|>\\nHello<|end|>'")]
    Tokenize(TokenizeArgs),
    /// Check every shard's size and sha256, and the manifest's tensor table.
    #[command(after_help = "Example:\n  phi-web verify smollm2/")]
    Verify {
        /// A package folder.
        dir: PathBuf,
    },
    /// Metadata and tensors of a GGUF file, a Hugging Face folder or a package.
    #[command(after_help = "Example:\n  phi-web inspect model.gguf")]
    Inspect {
        /// A GGUF file, a Hugging Face folder or a package folder.
        path: PathBuf,
    },
    /// The GPU adapter, its features and limits as JSON.
    Info,
    /// Benchmark the kernels, SmolLM2, a synthetic Phi-3-mini, Phi-mini-MoE and Phi-3-small (JSON on stdout).
    #[command(
        after_help = "Examples:\n  phi-web bench --kernels-only\n  phi-web bench --only phi-mini-moe --out target/bench/moe.json"
    )]
    Bench(BenchArgs),
    /// The GPU benchmark: read ceiling, matvec tuning sweep, attention, a synthetic Phi-3-mini (`make bench-gpu`).
    #[command(
        name = "bench-gpu",
        after_help = "Examples:\n  phi-web bench-gpu --out target/bench-gpu\n  phi-web bench-gpu --profile full --nominal-gbps 4800"
    )]
    BenchGpu(crate::bench_gpu::BenchGpuArgs),
    /// Static server for a page using phi-web: application/wasm, COOP/COEP, ranges, no listings.
    #[command(
        after_help = "Example:\n  phi-web serve web --mount /pkg=pkg --mount /models=target/demo/models --port 8080"
    )]
    Serve(ServeArgs),
    /// A shell completion script on stdout.
    #[command(
        after_help = "Example:\n  phi-web completions bash > ~/.local/share/bash-completion/completions/phi-web"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct ConvertArgs {
    /// A GGUF file, or a Hugging Face folder (config.json, safetensors, tokenizer.json).
    input: PathBuf,
    /// The package folder to write.
    out_dir: PathBuf,
    /// Matrix format (default: q4_0 for Hugging Face folders, the GGUF's own types, f16 for BERT).
    #[arg(long, value_parser = parse_quant)]
    quant: Option<WeightFormat>,
    /// Shard size in MiB (fractions too).
    #[arg(long, value_name = "MIB", default_value_t = 64.0, value_parser = parse_positive)]
    shard_mb: f64,
    /// Context the summary's KV-cache figure is computed for.
    #[arg(long, default_value_t = 4096)]
    context: usize,
}

/// How a generating model is loaded.
#[derive(Args)]
pub struct LoadArgs {
    /// Positions of context to allocate (capped at the model's maximum).
    #[arg(long, default_value_t = DEFAULT_CONTEXT)]
    pub context: usize,
    /// How the KV cache stores keys and values.
    #[arg(long, default_value = "f16", value_parser = parse_kv_cache)]
    pub kv_cache: KvFormat,
    /// Skip the sha256 check of the shards when loading.
    #[arg(long)]
    pub no_verify: bool,
    /// Weights the GPU may hold, in MB; a mixture of experts over it caches its experts.
    #[arg(long, value_name = "MB", value_parser = parse_positive)]
    pub gpu_memory: Option<f64>,
}

/// Sampling and stopping; what is left out is `Request`'s default.
#[derive(Args)]
pub struct SamplingArgs {
    /// New tokens at most.
    #[arg(long, value_name = "N", default_value_t = Request::default().max_tokens)]
    pub max_tokens: usize,
    /// 0 is greedy (the GPU picks each token).
    #[arg(long, default_value_t = Request::default().temperature)]
    pub temperature: f32,
    #[arg(long, default_value_t = Request::default().top_p)]
    pub top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = Request::default().top_k)]
    pub top_k: usize,
    #[arg(long, default_value_t = Request::default().repetition_penalty)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = Request::default().seed)]
    pub seed: u64,
    /// Stop at this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// A system message (with --chat, or in chat).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    #[command(flatten)]
    pub format: FormatArgs,
}

/// The answer's shape: at most one of these (constrained decoding).
#[derive(Args)]
#[group(multiple = false)]
pub struct FormatArgs {
    /// Answer with JSON valid against this JSON schema (a file).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// Answer in this Lark grammar (llguidance's syntax; a file).
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
    /// Answer with any JSON object (--json prints the result as JSON instead).
    #[arg(long)]
    pub json_object: bool,
}

impl FormatArgs {
    /// The request's response_format, the files read.
    pub fn response_format(&self) -> Result<Option<ResponseFormat>, Failure> {
        let read = |path: &PathBuf| std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
        if let Some(path) = &self.json_schema {
            let schema = serde_json::from_str(&read(path)?).map_err(|e| phi_web::Error::Shape {
                op: "--json-schema",
                message: format!("{}: not JSON: {e}", path.display()),
            })?;
            let json_schema = JsonSchema { name: None, schema, strict: true };
            return Ok(Some(ResponseFormat::JsonSchema { json_schema }));
        }
        if let Some(path) = &self.grammar {
            return Ok(Some(ResponseFormat::Grammar { grammar: read(path)? }));
        }
        Ok(self.json_object.then_some(ResponseFormat::JsonObject))
    }
}

impl SamplingArgs {
    pub fn request(&self) -> Result<Request, Failure> {
        Ok(Request {
            response_format: self.format.response_format()?,
            messages: Vec::new(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop: self.stop.clone(),
            ..Request::default()
        })
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// A package folder (phi-web convert writes one).
    pub dir: PathBuf,
    /// The prompt: raw text (special tokens recognised), or with --chat the user's message.
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// Send the prompt as one user message through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// An image (PNG, JPEG or WebP) shown before the prompt, for a vision
    /// model; repeat for several. Implies --chat.
    #[arg(long, value_name = "FILE")]
    pub image: Vec<PathBuf>,
    /// Print {"text", "tokens", "finish_reason", "stats"} instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args)]
pub struct ChatArgs {
    /// A package folder (phi-web convert writes one).
    pub dir: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct EmbedInput {
    /// One text.
    #[arg(long)]
    pub text: Option<String>,
    /// One text per line.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// An encoder package folder (e.g. all-MiniLM-L6-v2 converted).
    pub dir: PathBuf,
    #[command(flatten)]
    pub input: EmbedInput,
}

#[derive(Args)]
pub struct LogitsArgs {
    /// A package folder (phi-web convert writes one).
    pub dir: PathBuf,
    /// Token ids, comma-separated.
    #[arg(long, value_name = "1,2,3", value_parser = parse_token_ids)]
    pub tokens: TokenIds,
    /// Print each row's K largest logits as [id, logit] instead of the whole row.
    #[arg(long, value_name = "K")]
    pub top: Option<usize>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// A package folder with a tokenizer.
    pub dir: PathBuf,
    /// The text; special tokens written in it (<|user|>, <|end|>, ...) are
    /// recognised, no bos is added and no chat template applied.
    #[arg(long)]
    pub text: String,
}

#[derive(Clone)]
pub struct TokenIds(pub Vec<u32>);

#[derive(Args)]
struct BenchArgs {
    /// Also write the JSON here (and the Markdown table beside it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Add the 1024-token Phi-3-mini prefill (tens of minutes on a CPU adapter).
    #[arg(long)]
    long: bool,
    /// Only the kernels.
    #[arg(long)]
    kernels_only: bool,
    /// One model (or the structured-output figures) only.
    #[arg(long, value_enum)]
    only: Option<BenchModel>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchModel {
    Smollm2,
    Phi3Mini,
    PhiMiniMoe,
    /// A synthetic Phi-3-small (4 of 32 layers), published and all-dense, at 2k and 8k of context.
    Phi3Small,
    /// Constrained decoding: mask cost per token, decode with ÷ without a schema.
    Structured,
    /// A synthetic Phi-3.5-vision (4 of 32 decoder layers): the image tower per crop and per image, a prompt with an image.
    Phi3Vision,
}

#[derive(Args)]
struct ServeArgs {
    /// The folder served at /.
    root: PathBuf,
    /// Serve DIR under /PREFIX (repeatable).
    #[arg(long = "mount", value_name = "/PREFIX=DIR")]
    mounts: Vec<String>,
    /// 0 picks a free port.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

fn parse_quant(name: &str) -> Result<WeightFormat, String> {
    WeightFormat::parse(name).ok_or_else(|| "expected q4_0, q4_1, q8_0, f16 or f32".into())
}

fn parse_backend(name: &str) -> Result<BackendChoice, String> {
    BackendChoice::parse(name).ok_or_else(|| format!("unknown backend {name:?}; expected auto, webgpu or cpu"))
}

fn parse_kv_cache(name: &str) -> Result<KvFormat, String> {
    KvFormat::parse(name).ok_or_else(|| "expected f16, q8 or f32".into())
}

fn parse_positive(value: &str) -> Result<f64, String> {
    value.parse().ok().filter(|v: &f64| *v > 0.0 && v.is_finite()).ok_or_else(|| "expected a positive number".into())
}

fn parse_token_ids(list: &str) -> Result<TokenIds, String> {
    let ids = list.split(',').map(|t| t.trim().parse().map_err(|_| format!("`{t}` is not a token id")));
    ids.collect::<Result<_, _>>().map(TokenIds)
}

/// Why a command failed; `main` prints it and exits with 1.
pub enum Failure {
    /// A phi-web error keeps its kind.
    Engine(phi_web::Error),
    Message(String),
}

impl From<phi_web::Error> for Failure {
    fn from(e: phi_web::Error) -> Failure {
        Failure::Engine(e)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Message(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::Message(message.into())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Engine(e) => write!(f, "{}: {e}", e.js_name()),
            Failure::Message(message) => f.write_str(message),
        }
    }
}

pub type Outcome = Result<(), Failure>;

/// Parses the arguments (clap exits with 2 on bad usage, 0 for --help) and
/// runs the command.
pub fn run() -> Outcome {
    let cli = Cli::parse();
    let gpu = GpuOptions { allow_f16: !cli.portable, allow_subgroups: !cli.portable, ..Default::default() };
    let device = EngineOptions {
        backend: cli.backend,
        threads: cli.threads.map(usize::from),
        gpu: gpu.clone(),
        ..Default::default()
    };
    match cli.command {
        Command::Convert(args) => convert(&args),
        Command::Generate(args) => crate::run::generate(&args, &device),
        Command::Chat(args) => crate::run::chat(&args, &device),
        Command::Embed(args) => crate::embed::embed(&args, &device),
        Command::Logits(args) => crate::run::logits(&args, &device),
        Command::Tokenize(args) => crate::run::tokenize(&args),
        Command::Verify { dir } => verify(&dir),
        Command::Inspect { path } => {
            let text = crate::inspect::inspect(&path)?;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(text.as_bytes());
            Ok(())
        }
        Command::Info => info(&gpu),
        Command::Bench(args) => bench(&gpu, &args, device.threads),
        Command::BenchGpu(args) => crate::bench_gpu::bench_gpu(&gpu, &args),
        Command::Serve(args) => Ok(crate::serve::serve(&args.root, &args.mounts, &args.host, args.port)?),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "phi-web", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Progress of a long step on stderr: an indicatif bar on a terminal, and
/// elsewhere (CI logs) a plain line every 5 seconds.
pub struct Progress {
    bar: ProgressBar,
    what: &'static str,
    terminal: bool,
    last_line: Option<Instant>,
}

impl Progress {
    /// `total` bytes of work.
    pub fn bytes(what: &'static str, total: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let target = if terminal { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let template =
            "{prefix} {wide_msg} {bar:30} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(what);
        Progress { bar, what, terminal, last_line: None }
    }

    /// `done` bytes so far; `detail` names the current piece (a tensor).
    pub fn update(&mut self, done: u64, detail: &str) {
        let detail = if detail.is_empty() { "done" } else { detail };
        self.bar.set_position(done);
        if self.terminal {
            self.bar.set_message(detail.to_string());
            return;
        }
        let finished = Some(done) == self.bar.length();
        if finished || self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            self.last_line = Some(Instant::now());
            let mb = |b: u64| b as f64 / 1e6;
            let (total, rate) = (self.bar.length().unwrap_or(done), self.bar.per_sec() / 1e6);
            eprintln!(
                "{} {detail}: {:.1} / {:.1} MB, {rate:.1} MB/s, ETA {}s",
                self.what,
                mb(done),
                mb(total),
                self.bar.eta().as_secs()
            );
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    pub fn elapsed(&self) -> Duration {
        self.bar.elapsed()
    }
}

fn convert(args: &ConvertArgs) -> Outcome {
    let (input, out) = (args.input.as_path(), args.out_dir.as_path());
    let options =
        ConvertOptions { quant: args.quant, shard_bytes: (args.shard_mb * 1048576.0) as u64, ..Default::default() };
    let mut progress: Option<Progress> = None;
    let result = convert::convert(input, out, &options, &mut |p| {
        progress.get_or_insert_with(|| Progress::bytes("converting", p.total)).update(p.done, p.tensor);
    });
    let elapsed = progress.as_ref().map_or(Duration::ZERO, |p| {
        p.finish();
        p.elapsed()
    });
    let summary = result?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    let c = &summary.config;
    let kv = c.kv_bytes_per_token() as u64 * args.context as u64;
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
        "  GPU memory     {:.1} MB weights + {:.1} MB f16 KV cache at {} tokens",
        summary.total_bytes as f64 / 1e6,
        kv as f64 / 1e6,
        args.context
    );
    println!("  time           {:.1}s", elapsed.as_secs_f64());
    Ok(())
}

fn verify(dir: &Path) -> Outcome {
    let package = Package::open(dir)?;
    let mut progress = Progress::bytes("verifying", package.total_bytes());
    let result = package.verify(|done| progress.update(done, "shards"));
    progress.finish();
    let checked = result?;
    println!(
        "ok: {} shards, {checked} bytes, {} tensors match {}",
        package.manifest.shards.len(),
        package.manifest.tensors.len(),
        dir.join("model.json").display()
    );
    Ok(())
}

fn info(options: &GpuOptions) -> Outcome {
    let gpu = pollster::block_on(Gpu::new(options))?;
    let kernels = Kernels::new(&gpu);
    let l = &gpu.limits;
    let info = serde_json::json!({
        "adapter": gpu.adapter.name,
        "backend": gpu.adapter.backend,
        "device_type": gpu.adapter.device_type,
        "driver": gpu.adapter.driver,
        "features": { "shader_f16": gpu.features.shader_f16, "subgroups": gpu.features.subgroups, "timestamps": gpu.features.timestamps },
        "kernels": format!("{} ({})", kernels.variant(), kernels.tuning().matvec_name()),
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

/// Mask cost on SmolLM2's vocabulary and Phi-4-mini's (o200k, from the npm
/// package js-tiktoken in tests/web), and SmolLM2's decode with ÷ without a schema.
fn structured_bench(stages: &Stages) -> Result<phi_web::bench::structured::StructuredReport, Failure> {
    use phi_web::bench::structured as s;
    let mut report = s::StructuredReport { masks: Vec::new(), decode: None };
    let smollm2 = Path::new("target/bench/smollm2");
    let gguf = Path::new(".models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.exists() {
        if !smollm2.join("model.json").exists() {
            convert::convert(gguf, smollm2, &ConvertOptions::default(), &mut |_| {})?;
        }
        stages.log("  grammar masks on SmolLM2's vocabulary");
        let (tokens, eos) = s::package_vocabulary(smollm2)?;
        report.masks.push(s::mask_figure("SmolLM2 (byte-level BPE)", &tokens, eos)?);
    }
    let o200k = Path::new("tests/web/node_modules/js-tiktoken/dist/ranks/o200k_base.js");
    if o200k.exists() {
        stages.log("  grammar masks on Phi-4-mini's vocabulary (o200k)");
        let (tokens, eos) = s::o200k_vocabulary(o200k)?;
        report.masks.push(s::mask_figure("Phi-4-mini (o200k)", &tokens, eos)?);
    } else {
        stages.log(&format!(
            "  Phi-4-mini's vocabulary skipped: {} is missing (npm ci --prefix tests/web)",
            o200k.display()
        ));
    }
    if gguf.exists() {
        stages.log("  SmolLM2 decode with and without a JSON schema");
        report.decode = Some(s::constrained_decode(smollm2, 48)?);
    }
    Ok(report)
}

/// `threads`: the CPU backend's (default: one per core, and SmolLM2 again on one).
fn bench(options: &GpuOptions, args: &BenchArgs, threads: Option<usize>) -> Outcome {
    let gpu = pollster::block_on(Gpu::new(options))?;
    let kernels = Kernels::new(&gpu);
    let backend = Backend::Gpu(GpuBackend { gpu, kernels });
    let GpuBackend { gpu, kernels } = backend.gpu_only("the kernel benchmark")?;
    eprintln!("benchmarking on {}", gpu.adapter);
    let stages = Stages::new();
    let mut report =
        pollster::block_on(phi_web::bench::kernel_report(gpu, kernels, |s| stages.log(&format!("  {s}"))))?;
    if args.kernels_only {
        return write_report(&report, args.out.as_deref());
    }
    // End to end: SmolLM2 (converted from .models when present), a synthetic
    // Phi-3-mini and a synthetic Phi-mini-MoE (random q4_0 weights, the real
    // shapes); `--only NAME` runs one of them.
    let want = |model: BenchModel| args.only.is_none_or(|o| o == model);
    let cpu = report.cpu_read_gbps_all_threads;
    let figure_on = |backend: &Backend, dir: &Path, plan: &ModelBench| {
        pollster::block_on(phi_web::bench::model_figure(backend, dir, plan, cpu, |s| stages.log(&format!("    {s}"))))
    };
    let figure = |dir: &Path, plan: &ModelBench| figure_on(&backend, dir, plan);
    // The CPU backend (one thread per core unless --threads) on the same packages.
    let cpu_backend = Backend::Cpu(phi_web::cpu::Cpu::new(threads));
    let decode_plan = |prompts: Vec<usize>, decode_tokens: usize| ModelBench {
        context: 4096,
        kv_cache: KvFormat::F16,
        prompts,
        decode_contexts: vec![64, 2048],
        decode_tokens,
        gpu_memory: None,
        fill_cache: true,
    };
    let gguf = Path::new(".models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if want(BenchModel::Smollm2) && gguf.exists() {
        stages.log("  SmolLM2 end to end");
        let dir = Path::new("target/bench/smollm2");
        convert::convert(gguf, dir, &ConvertOptions::default(), &mut |_| {})?;
        let plan = decode_plan(vec![128, 1024], 16);
        report.models.push(figure(dir, &plan)?);
        stages.log("  SmolLM2 with an 8-bit KV cache");
        let q8 = ModelBench { kv_cache: KvFormat::Q8, prompts: vec![], ..plan.clone() };
        report.models.push(figure(dir, &q8)?);
        stages.log("  SmolLM2 on the CPU backend");
        report.models.push(figure_on(&cpu_backend, dir, &ModelBench { decode_tokens: 64, ..plan.clone() })?);
        report.models.push(figure_on(&cpu_backend, dir, &ModelBench { decode_tokens: 64, ..q8 })?);
        if threads.is_none() {
            // Beside llama.cpp's one-thread figures.
            stages.log("  SmolLM2 on the CPU backend, one thread");
            let one = Backend::Cpu(phi_web::cpu::Cpu::new(Some(1)));
            report.models.push(figure_on(&one, dir, &ModelBench { decode_tokens: 64, ..plan })?);
        }
    } else if want(BenchModel::Smollm2) {
        stages.log("  SmolLM2 skipped: run `make models`");
    }
    if want(BenchModel::Phi3Mini) {
        let dir = Path::new("target/bench/synthetic-phi3-mini");
        stages.log(&format!("  synthetic Phi-3-mini q4_0 (writing it to {} once)", dir.display()));
        phi_web::bench::synthetic_phi3_mini(dir)?;
        // A 1024-token Phi-3-mini prefill takes tens of minutes on a CPU adapter.
        let prompts = if args.long { vec![128, 1024] } else { vec![128] };
        let plan = decode_plan(prompts, 4);
        report.models.push(figure(dir, &plan)?);
        stages.log("  synthetic Phi-3-mini on the CPU backend");
        report.models.push(figure_on(&cpu_backend, dir, &ModelBench { decode_tokens: 8, ..plan.clone() })?);
        stages.log("  synthetic Phi-3-mini with an 8-bit KV cache");
        let plan = ModelBench { kv_cache: KvFormat::Q8, prompts: vec![], ..plan };
        report.models.push(figure(dir, &plan)?);
        for kv_cache in KvFormat::ALL {
            stages.log(&format!("  synthetic Phi-3-mini GPU memory at a 1k context, {} KV cache", kv_cache.name()));
            let plan = ModelBench {
                context: 1024,
                kv_cache,
                prompts: vec![],
                decode_contexts: vec![],
                decode_tokens: 0,
                gpu_memory: None,
                fill_cache: true,
            };
            report.models.push(figure(dir, &plan)?);
        }
    }
    if want(BenchModel::PhiMiniMoe) {
        // Phi-mini-MoE's widths, 8 of its 32 layers (1.2 GB instead of 4.3):
        // decode GB/s counts the active bytes (attention, routers, two
        // experts per layer, lm_head), the floor of what a token must read.
        let dir = Path::new("target/bench/synthetic-phi-mini-moe");
        stages.log(&format!("  synthetic Phi-mini-MoE q4_0, 8 layers (writing it to {} once)", dir.display()));
        phi_web::bench::synthetic_phi_mini_moe(dir, 8)?;
        report.models.push(figure(dir, &decode_plan(vec![128], 4))?);
        // Half of each layer's experts on the GPU: misses read the package.
        let sizes = ExpertSizes::of(&Package::open(dir)?)?;
        stages.log("  synthetic Phi-mini-MoE with an expert cache of 8 of 16 experts per layer");
        let plan = ModelBench { gpu_memory: Some(sizes.budget_for(8)), ..decode_plan(vec![128], 16) };
        report.models.push(figure(dir, &plan)?);
    }
    if want(BenchModel::Phi3Small) {
        // Phi-3-small's widths, 4 of its 32 layers (two block-sparse, two
        // dense; 0.7 GB instead of 4.2), and the same weights all dense:
        // decode at 2k and 8k with each KV cache, GPU memory at 8k.
        let (dir, dense) =
            (Path::new("target/bench/synthetic-phi3-small"), Path::new("target/bench/synthetic-phi3-small-dense"));
        stages.log(&format!("  synthetic Phi-3-small q4_0, 4 layers (writing it to {} once)", dir.display()));
        phi_web::bench::phi3small::synthetic_phi3_small(dir, dense, 4)?;
        for kv_cache in [KvFormat::F16, KvFormat::Q8] {
            for (dir, what) in [(dir, "as published"), (dense, "every layer dense")] {
                stages.log(&format!("  synthetic Phi-3-small, {what}, {} KV cache", kv_cache.name()));
                let plan = ModelBench {
                    context: 8192,
                    kv_cache,
                    prompts: if kv_cache == KvFormat::F16 { vec![128] } else { vec![] },
                    decode_contexts: vec![2048, 8000],
                    decode_tokens: 8,
                    gpu_memory: None,
                    fill_cache: true,
                };
                report.models.push(figure(dir, &plan)?);
            }
            for context in [2048, 8000] {
                report.blocksparse_kv_read.push(phi_web::bench::phi3small::kv_read(gpu, kernels, context, kv_cache)?);
            }
        }
    }
    if want(BenchModel::Phi3Vision) {
        let dir = Path::new("target/bench/synthetic-phi3-vision");
        stages.log(&format!("  synthetic Phi-3.5-vision, 4 decoder layers (writing it to {} once)", dir.display()));
        phi_web::bench::vision::synthetic_phi3_vision(dir, 4)?;
        for b in [&backend, &cpu_backend] {
            stages.log(&format!("  synthetic Phi-3.5-vision on {}", b.name()));
            let log = |s: &str| stages.log(&format!("    {s}"));
            report.vision.push(pollster::block_on(phi_web::bench::vision::figure(b, dir, log))?);
        }
    }
    if want(BenchModel::Structured) {
        report.structured = Some(structured_bench(&stages)?);
    }
    stages.finish();
    write_report(&report, args.out.as_deref())
}

/// The bench's stages on stderr: on a terminal each is logged above a spinner
/// that names the running one with its elapsed time; elsewhere a line each.
pub struct Stages {
    spinner: Option<ProgressBar>,
}

impl Stages {
    pub fn new() -> Stages {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let spinner = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
                spinner.set_style(style);
            }
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        Stages { spinner }
    }

    pub fn log(&self, stage: &str) {
        match &self.spinner {
            Some(spinner) => {
                spinner.println(stage);
                spinner.set_message(stage.trim().to_string());
            }
            None => eprintln!("{stage}"),
        }
    }

    pub fn finish(&self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}

/// The benchmark JSON on stdout and, with --out, in a file.
fn write_report(report: &phi_web::bench::KernelReport, out: Option<&Path>) -> Outcome {
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    println!("{json}");
    if let Some(path) = out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        let table = path.with_extension("md");
        std::fs::write(&table, phi_web::bench::markdown(report)).map_err(|e| format!("{}: {e}", table.display()))?;
        eprintln!("wrote {} and {}", path.display(), table.display());
    }
    Ok(())
}
