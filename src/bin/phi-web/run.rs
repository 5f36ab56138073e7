//! `phi-web generate` and `phi-web logits`: the engine from the command line.

use std::io::{IsTerminal, Write};
use std::path::Path;

use phi_web::formats::package::Package;
use phi_web::gpu::{Gpu, GpuOptions, Kernels, KvFormat};
use phi_web::model::{Decoder, Logits};
use phi_web::sampler::SamplingOptions;
use phi_web::session::{self, GenerateOptions, Session};
use phi_web::tokenizer::{Message, Tokenizer};

use crate::cli::flag_value;

/// Tokens per prefill call.
const PREFILL_CHUNK: usize = 64;

fn parse<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> Result<T, String> {
    match flag_value(args, flag)? {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{flag} {v}: not a valid value")),
    }
}

struct Loaded {
    gpu: Gpu,
    kernels: Kernels,
    package: Package,
    decoder: Decoder,
}

/// Opens and (unless `--no-verify`) hash-checks the package, then loads it.
fn load(dir: &Path, args: &[String], options: &GpuOptions) -> Result<Loaded, String> {
    let context: usize = parse(args, "--context", 4096)?;
    let kv = match flag_value(args, "--kv-cache")? {
        None => KvFormat::F16,
        Some(name) => KvFormat::parse(&name).ok_or(format!("--kv-cache {name}: expected f16 or q8"))?,
    };
    let package = Package::open(dir).map_err(|e| e.to_string())?;
    if !args.iter().any(|a| a == "--no-verify") {
        package
            .verify(|_| {})
            .map_err(|e| format!("{e}\n(convert the model again, or pass --no-verify to skip this check)"))?;
    }
    let gpu = pollster::block_on(Gpu::new(options)).map_err(|e| e.to_string())?;
    let kernels = pollster::block_on(Kernels::new(&gpu)).map_err(|e| e.to_string())?;
    let context = context.min(package.manifest.config.max_position_embeddings);
    let decoder = Decoder::load(&gpu, &package, context, PREFILL_CHUNK, kv).map_err(|e| e.to_string())?;
    Ok(Loaded { gpu, kernels, package, decoder })
}

fn load_tokenizer(dir: &Path, package: &Package) -> Result<Tokenizer, String> {
    let manifest = &package.manifest;
    let file =
        manifest.tokenizer.as_ref().ok_or("this package has no tokenizer: it can compute logits but not generate")?;
    let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
    Tokenizer::from_bytes(&bytes, manifest).map_err(|e| e.to_string())
}

/// Sampling and stopping from the flags shared by `generate` and `chat`.
fn generate_options(args: &[String], package: &Package) -> Result<GenerateOptions, String> {
    let sampling = SamplingOptions {
        temperature: parse(args, "--temperature", 0.0)?,
        top_k: parse(args, "--top-k", 0)?,
        top_p: parse(args, "--top-p", 1.0)?,
        repetition_penalty: parse(args, "--repetition-penalty", 1.0)?,
        seed: parse(args, "--seed", 0)?,
    };
    let stop_strings = crate::cli::flag_values(args, "--stop");
    Ok(GenerateOptions {
        max_tokens: parse(args, "--max-tokens", 256)?,
        sampling,
        stop_token_ids: package.manifest.stop_token_ids.clone(),
        stop_strings,
        interrupt: Default::default(),
    })
}

pub fn generate(dir: &Path, args: &[String], options: &GpuOptions) -> Result<(), String> {
    let prompt = flag_value(args, "--prompt")?.ok_or("generate needs --prompt TEXT")?;
    let chat = args.iter().any(|a| a == "--chat");
    let json = args.iter().any(|a| a == "--json");
    let m = load(dir, args, options)?;
    let tokenizer = load_tokenizer(dir, &m.package)?;
    let text = if chat {
        let mut messages = Vec::new();
        if let Some(system) = flag_value(args, "--system")? {
            messages.push(Message::new("system", &system));
        }
        messages.push(Message::new("user", &prompt));
        tokenizer.apply_chat_template(&messages).map_err(|e| e.to_string())?
    } else {
        prompt
    };
    let ids = tokenizer.encode(&text).map_err(|e| e.to_string())?;
    let options = generate_options(args, &m.package)?;
    let mut stdout = std::io::stdout();
    let result = pollster::block_on(session::generate(
        &m.gpu,
        &m.kernels,
        &m.decoder,
        &mut Session::new(),
        &tokenizer,
        &ids,
        &options,
        |delta| {
            if !json {
                let _ = stdout.write_all(delta.as_bytes());
                let _ = stdout.flush();
            }
        },
    ))
    .map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string(&result).map_err(|e| e.to_string())?);
    } else {
        println!();
    }
    Ok(())
}

/// `phi-web chat`: one line per user turn, the reply streamed; the session
/// keeps the conversation's KV cache so each turn prefills only what is new.
pub fn chat(dir: &Path, args: &[String], options: &GpuOptions) -> Result<(), String> {
    let m = load(dir, args, options)?;
    let tokenizer = load_tokenizer(dir, &m.package)?;
    let options = generate_options(args, &m.package)?;
    let system = flag_value(args, "--system")?;
    let fresh = || system.iter().map(|s| Message::new("system", s)).collect::<Vec<_>>();
    let mut messages = fresh();
    let mut session = Session::new();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "phi-web chat: {} ({} tokens of context). /reset starts over, /exit or Ctrl-D quits.",
            dir.display(),
            m.decoder.capacity
        );
    }
    let mut stdout = std::io::stdout();
    let mut line = String::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        if std::io::stdin().read_line(&mut line).map_err(|e| format!("reading stdin: {e}"))? == 0 {
            return Ok(());
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages = fresh();
                continue;
            }
            text => messages.push(Message::new("user", text)),
        }
        let prompt = tokenizer.apply_chat_template(&messages).map_err(|e| e.to_string())?;
        let ids = tokenizer.encode(&prompt).map_err(|e| e.to_string())?;
        let result = pollster::block_on(session::generate(
            &m.gpu,
            &m.kernels,
            &m.decoder,
            &mut session,
            &tokenizer,
            &ids,
            &options,
            |delta| {
                let _ = stdout.write_all(delta.as_bytes());
                let _ = stdout.flush();
            },
        ));
        println!();
        match result {
            Ok(g) => {
                let s = &g.stats;
                eprintln!(
                    "[{} prompt tokens, {} reused from the cache; {:.0} ms to first token; {:.1} tokens/s; {}]",
                    s.prompt_tokens, s.cached_tokens, s.ttft_ms, s.decode_tokens_per_s, g.finish_reason
                );
                messages.push(Message::new("assistant", &g.text));
            }
            Err(e) => {
                // e.g. the conversation outgrew the context: say so and let the user go on.
                eprintln!("error: {e}");
                messages.pop();
            }
        }
    }
}

pub fn logits(dir: &Path, args: &[String], options: &GpuOptions) -> Result<(), String> {
    let tokens = flag_value(args, "--tokens")?.ok_or("logits needs --tokens 1,2,3")?;
    let ids: Vec<u32> = tokens
        .split(',')
        .map(|t| t.trim().parse().map_err(|_| format!("--tokens: `{t}` is not a token id")))
        .collect::<Result<_, _>>()?;
    let top: Option<usize> = match flag_value(args, "--top")? {
        None => None,
        Some(v) => Some(v.parse().map_err(|_| format!("--top {v}: expected an integer"))?),
    };
    let m = load(dir, args, options)?;
    if ids.len() > m.decoder.capacity {
        return Err(format!(
            "{} tokens exceed the context of {}; pass --context {}",
            ids.len(),
            m.decoder.capacity,
            ids.len()
        ));
    }
    let vocab = m.decoder.config.vocab_size;
    let mut rows: Vec<f32> = Vec::with_capacity(ids.len() * vocab);
    for (i, chunk) in ids.chunks(m.decoder.max_tokens).enumerate() {
        let pos = i * m.decoder.max_tokens;
        rows.extend(
            pollster::block_on(m.decoder.forward_in_sequence(&m.gpu, &m.kernels, chunk, pos, ids.len(), Logits::All))
                .map_err(|e| e.to_string())?,
        );
    }
    let out = match top {
        None => serde_json::json!({ "logits": rows.chunks(vocab).collect::<Vec<_>>() }),
        Some(k) => {
            let top: Vec<Vec<(usize, f32)>> = rows
                .chunks(vocab)
                .map(|row| {
                    let mut indexed: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
                    indexed.sort_by(|a, b| b.1.total_cmp(&a.1));
                    indexed.truncate(k);
                    indexed
                })
                .collect();
            serde_json::json!({ "top": top })
        }
    };
    let _ = std::io::stdout().write_all(format!("{out}\n").as_bytes());
    Ok(())
}
