//! `phi-web embed`: sentence embeddings from an encoder package (BERT family).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use phi_web::engine::{open_backend, EngineOptions};
use phi_web::formats::package::Package;
use phi_web::model::Encoder;
use phi_web::tokenizer::Tokenizer;

use crate::cli::{EmbedArgs, Outcome};

/// Texts embedded per GPU batch when reading a file.
const BATCH: usize = 64;

pub fn embed(args: &EmbedArgs, device: &EngineOptions) -> Outcome {
    let dir: &Path = &args.dir;
    // clap lets exactly one of --text and --file through.
    let texts: Vec<String> = match (&args.input.text, &args.input.file) {
        (Some(text), _) => vec![text.clone()],
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| format!("{}: {e}", file.display()))?
            .lines()
            .map(String::from)
            .collect(),
        (None, None) => return Err("embed needs --text TEXT or --file FILE".into()),
    };
    let package = Package::open(dir)?;
    let file = package.manifest.tokenizer.as_ref().ok_or("this package has no tokenizer")?;
    let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
    let tokenizer = Tokenizer::from_bytes(&bytes, &package.manifest)?;
    let (backend, _) = pollster::block_on(open_backend(device, &package.manifest.config))?;
    let encoder = pollster::block_on(Encoder::load_from(&backend, &package, 4096))?;

    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let single = args.input.text.is_some();
    let mut tokens = 0;
    for (batch_index, batch) in texts.chunks(BATCH).enumerate() {
        let ids = tokenizer.encode_for_embedding(batch, encoder.max_seq_length())?;
        tokens += ids.iter().map(Vec::len).sum::<usize>();
        let vectors = pollster::block_on(encoder.embed(&backend, &ids))?;
        for (i, embedding) in vectors.into_iter().enumerate() {
            let line = if single {
                serde_json::json!({ "embedding": embedding })
            } else {
                serde_json::json!({ "index": batch_index * BATCH + i, "embedding": embedding })
            };
            // A closed pipe ends the output quietly.
            if writeln!(stdout, "{line}").is_err() {
                return Ok(());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} texts ({tokens} tokens) in {seconds:.2}s: {:.1} texts/s",
        texts.len(),
        texts.len() as f64 / seconds
    );
    Ok(())
}
