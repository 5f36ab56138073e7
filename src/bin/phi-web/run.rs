//! `phi-web generate` and `phi-web logits`: the engine from the command line.

use std::io::{IsTerminal, Write};
use std::path::Path;

use phi_web::engine::{Engine, EngineOptions, Request, DEFAULT_CONTEXT};
use phi_web::formats::package::Package;
use phi_web::gpu::{GpuOptions, KvFormat};
use phi_web::tokenizer::{Message, Tokenizer};

use crate::cli::flag_value;

fn parse<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> Result<T, String> {
    match flag_value(args, flag)? {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{flag} {v}: not a valid value")),
    }
}

/// Opens and (unless `--no-verify`) hash-checks the package, then loads it
/// (with its tokenizer when `tokenizer`).
fn load(dir: &Path, args: &[String], options: &GpuOptions, tokenizer: bool) -> Result<Engine, String> {
    let context: usize = parse(args, "--context", DEFAULT_CONTEXT)?;
    let kv_cache = match flag_value(args, "--kv-cache")? {
        None => KvFormat::default(),
        Some(name) => KvFormat::parse(&name).ok_or(format!("--kv-cache {name}: expected f16, q8 or f32"))?,
    };
    let package = Package::open(dir).map_err(|e| e.to_string())?;
    if !args.iter().any(|a| a == "--no-verify") {
        package
            .verify(|_| {})
            .map_err(|e| format!("{e}\n(convert the model again, or pass --no-verify to skip this check)"))?;
    }
    let tokenizer = match tokenizer {
        true => Some(load_tokenizer(dir, &package)?),
        false => None,
    };
    let gpu_memory = match flag_value(args, "--gpu-memory")? {
        None => None,
        Some(mb) => Some(
            mb.parse::<f64>().ok().filter(|mb| *mb > 0.0).ok_or(format!("--gpu-memory {mb}: expected megabytes"))?,
        ),
    };
    let gpu_memory = gpu_memory.map(|mb| (mb * 1e6) as u64);
    let options = EngineOptions { context, kv_cache, gpu: options.clone(), gpu_memory };
    pollster::block_on(Engine::load(&package, tokenizer, &options)).map_err(|e| e.to_string())
}

fn load_tokenizer(dir: &Path, package: &Package) -> Result<Tokenizer, String> {
    let manifest = &package.manifest;
    let file =
        manifest.tokenizer.as_ref().ok_or("this package has no tokenizer: it can compute logits but not generate")?;
    let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
    Tokenizer::from_bytes(&bytes, manifest).map_err(|e| e.to_string())
}

/// Sampling and stopping from the flags shared by `generate` and `chat`;
/// what a flag leaves out is `Request`'s default.
fn request(args: &[String]) -> Result<Request, String> {
    let d = Request::default();
    Ok(Request {
        messages: Vec::new(),
        max_tokens: parse(args, "--max-tokens", d.max_tokens)?,
        temperature: parse(args, "--temperature", d.temperature)?,
        top_k: parse(args, "--top-k", d.top_k)?,
        top_p: parse(args, "--top-p", d.top_p)?,
        repetition_penalty: parse(args, "--repetition-penalty", d.repetition_penalty)?,
        seed: parse(args, "--seed", d.seed)?,
        stop: crate::cli::flag_values(args, "--stop"),
    })
}

pub fn generate(dir: &Path, args: &[String], options: &GpuOptions) -> Result<(), String> {
    let prompt = flag_value(args, "--prompt")?.ok_or("generate needs --prompt TEXT")?;
    let chat = args.iter().any(|a| a == "--chat");
    let json = args.iter().any(|a| a == "--json");
    let engine = load(dir, args, options, true)?;
    let mut request = request(args)?;
    let mut stdout = std::io::stdout();
    let on_text = |delta: &str| {
        if !json {
            let _ = stdout.write_all(delta.as_bytes());
            let _ = stdout.flush();
        }
    };
    let result = if chat {
        if let Some(system) = flag_value(args, "--system")? {
            request.messages.push(Message::new("system", &system));
        }
        request.messages.push(Message::new("user", &prompt));
        pollster::block_on(engine.chat(&request, on_text))
    } else {
        let ids = engine.tokenizer().and_then(|t| t.encode(&prompt)).map_err(|e| e.to_string())?;
        pollster::block_on(engine.complete(&ids, &request, on_text))
    }
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
    let engine = load(dir, args, options, true)?;
    let mut request = request(args)?;
    let system = flag_value(args, "--system")?;
    let fresh = || system.iter().map(|s| Message::new("system", s)).collect::<Vec<_>>();
    request.messages = fresh();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "phi-web chat: {} ({} tokens of context). /reset starts over, /exit or Ctrl-D quits.",
            dir.display(),
            engine.decoder.capacity
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
                request.messages = fresh();
                continue;
            }
            text => request.messages.push(Message::new("user", text)),
        }
        let result = pollster::block_on(engine.chat(&request, |delta| {
            let _ = stdout.write_all(delta.as_bytes());
            let _ = stdout.flush();
        }));
        println!();
        match result {
            Ok(g) => {
                let s = &g.stats;
                eprintln!(
                    "[{} prompt tokens, {} reused from the cache; {:.0} ms to first token; {:.1} tokens/s; {}]",
                    s.prompt_tokens, s.cached_tokens, s.ttft_ms, s.decode_tokens_per_s, g.finish_reason
                );
                request.messages.push(Message::new("assistant", &g.text));
            }
            Err(e) => {
                // e.g. the conversation outgrew the context: say so and let the user go on.
                eprintln!("error: {e}");
                request.messages.pop();
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
    let engine = load(dir, args, options, false)?;
    let vocab = engine.decoder.config.vocab_size;
    let rows = pollster::block_on(engine.logits(&ids)).map_err(|e| match ids.len() > engine.decoder.capacity {
        true => format!("{e}; pass --context {}", ids.len()),
        false => e.to_string(),
    })?;
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
