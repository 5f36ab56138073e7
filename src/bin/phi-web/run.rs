//! `phi-web generate`, `chat`, `logits` and `tokenize`: the engine from the command line.

use std::io::{IsTerminal, Write};
use std::path::Path;

use phi_web::engine::{Engine, EngineOptions};
use phi_web::formats::package::Package;
use phi_web::image::Rgb;
use phi_web::structured::tools::Delta;
use phi_web::tokenizer::{Message, Tokenizer};

use crate::cli::{ChatArgs, Failure, GenerateArgs, LoadArgs, LogitsArgs, Outcome, TokenizeArgs};

/// Opens and (unless `--no-verify`) hash-checks the package, then loads it
/// (with its tokenizer when `tokenizer`).
fn load(dir: &Path, args: &LoadArgs, device: &EngineOptions, tokenizer: bool) -> Result<Engine, Failure> {
    let package = Package::open(dir)?;
    if !args.no_verify {
        package.verify(|_| {}).map_err(|e| {
            format!("{}: {e}\n(convert the model again, or pass --no-verify to skip this check)", e.js_name())
        })?;
    }
    let tokenizer = match tokenizer {
        true => Some(load_tokenizer(dir, &package)?),
        false => None,
    };
    let options = EngineOptions {
        context: args.context,
        kv_cache: args.kv_cache,
        gpu_memory: args.gpu_memory.map(|mb| (mb * 1e6) as u64),
        ..device.clone()
    };
    Ok(pollster::block_on(Engine::load(&package, tokenizer, &options))?)
}

fn load_tokenizer(dir: &Path, package: &Package) -> Result<Tokenizer, Failure> {
    let manifest = &package.manifest;
    let file =
        manifest.tokenizer.as_ref().ok_or("this package has no tokenizer: it can compute logits but not generate")?;
    let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
    Ok(Tokenizer::from_bytes(&bytes, manifest)?)
}

pub fn generate(args: &GenerateArgs, device: &EngineOptions) -> Outcome {
    let engine = load(&args.dir, &args.load, device, true)?;
    let mut request = args.sampling.request()?;
    let mut stdout = std::io::stdout();
    let json = args.json;
    let mut on_text = |delta: &str| {
        if !json {
            let _ = stdout.write_all(delta.as_bytes());
            let _ = stdout.flush();
        }
    };
    let result = if args.chat || !args.image.is_empty() {
        if let Some(system) = &args.sampling.system {
            request.messages.push(Message::new("system", system));
        }
        let mut images = Vec::with_capacity(args.image.len());
        for path in &args.image {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            images.push(Rgb::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        let shown: Vec<usize> = (0..images.len()).collect();
        request.messages.push(Message::with_images("user", &shown, &args.prompt));
        pollster::block_on(engine.chat_with_images(&request, &images, |delta| {
            if let Delta::Text(text) = delta {
                on_text(text)
            }
        }))
    } else {
        let ids = engine.tokenizer().and_then(|t| t.encode(&args.prompt))?;
        pollster::block_on(engine.complete(&ids, &request, on_text))
    }?;
    if json {
        println!("{}", serde_json::to_string(&result).map_err(|e| e.to_string())?);
    } else {
        println!();
    }
    if result.finish_reason == "length" && request.response_format.is_some() {
        eprintln!("phi-web: the answer reached --max-tokens before its structure closed (finish_reason \"length\")");
    }
    Ok(())
}

/// `phi-web chat`: one line per user turn, the reply streamed; the session
/// keeps the conversation's KV cache so each turn prefills only what is new.
/// `/image FILE` shows an image with the next message (a vision model).
pub fn chat(args: &ChatArgs, device: &EngineOptions) -> Outcome {
    let (dir, engine) = (&args.dir, load(&args.dir, &args.load, device, true)?);
    let mut request = args.sampling.request()?;
    let system = &args.sampling.system;
    let fresh = || system.iter().map(|s| Message::new("system", s)).collect::<Vec<_>>();
    request.messages = fresh();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "phi-web chat: {} ({} tokens of context). /reset starts over, /exit or Ctrl-D quits{}.",
            dir.display(),
            engine.decoder.capacity,
            if engine.vision.is_some() { ", /image FILE shows an image with the next message" } else { "" }
        );
    }
    let mut stdout = std::io::stdout();
    let mut line = String::new();
    // The conversation's images (every turn sends them again: their rows and
    // KV cache are reused) and those waiting for the next message.
    let (mut images, mut pending) = (Vec::new(), Vec::new());
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
                (images, pending) = (Vec::new(), Vec::new());
                continue;
            }
            text if text.starts_with("/image ") => {
                let path = Path::new(text["/image ".len()..].trim());
                match std::fs::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| Rgb::decode(&b).map_err(|e| e.to_string()))
                {
                    Ok(image) => {
                        pending.push(images.len());
                        images.push(image);
                        eprintln!("[{} attached: it goes with your next message]", path.display());
                    }
                    Err(e) => eprintln!("error: {}: {e}", path.display()),
                }
                continue;
            }
            text => request.messages.push(Message::with_images("user", &std::mem::take(&mut pending), text)),
        }
        let result = pollster::block_on(engine.chat_with_images(&request, &images, |delta| {
            if let Delta::Text(text) = delta {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
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
                if let Some(message) = request.messages.pop() {
                    images.truncate(images.len() - message.images.len()); // its images went with it
                }
            }
        }
    }
}

pub fn logits(args: &LogitsArgs, device: &EngineOptions) -> Outcome {
    let (ids, top) = (&args.tokens.0, args.top);
    let engine = load(&args.dir, &args.load, device, false)?;
    let vocab = engine.decoder.config.vocab_size;
    let rows = pollster::block_on(engine.logits(ids)).map_err(|e| match ids.len() > engine.decoder.capacity {
        true => Failure::Message(format!("{}: {e}; pass --context {}", e.js_name(), ids.len())),
        false => Failure::Engine(e),
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

/// `phi-web tokenize`: {"ids": [...]} on stdout, from the package's tokenizer alone.
pub fn tokenize(args: &TokenizeArgs) -> Outcome {
    let package = Package::open(&args.dir)?;
    let ids = load_tokenizer(&args.dir, &package)?.encode(&args.text)?;
    let _ = std::io::stdout().write_all(format!("{}\n", serde_json::json!({ "ids": ids })).as_bytes());
    Ok(())
}
