//! `phi-web embed`: sentence embeddings from an encoder package (BERT family).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use phi_web::formats::package::Package;
use phi_web::gpu::{Gpu, GpuOptions, Kernels};
use phi_web::model::Encoder;
use phi_web::tokenizer::Tokenizer;

use crate::cli::flag_value;

/// Texts embedded per GPU batch when reading a file.
const BATCH: usize = 64;

pub fn embed(dir: &Path, args: &[String], options: &GpuOptions) -> Result<(), String> {
    let texts: Vec<String> = match (flag_value(args, "--text")?, flag_value(args, "--file")?) {
        (Some(text), None) => vec![text],
        (None, Some(file)) => {
            std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?.lines().map(String::from).collect()
        }
        _ => return Err("embed needs exactly one of --text TEXT or --file FILE (one text per line)".into()),
    };
    let package = Package::open(dir).map_err(|e| e.to_string())?;
    let file = package.manifest.tokenizer.as_ref().ok_or("this package has no tokenizer")?;
    let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
    let tokenizer = Tokenizer::from_bytes(&bytes, &package.manifest).map_err(|e| e.to_string())?;
    let gpu = pollster::block_on(Gpu::new(options)).map_err(|e| e.to_string())?;
    let kernels = Kernels::new(&gpu);
    let encoder = pollster::block_on(Encoder::load_from(&gpu, &package, 4096)).map_err(|e| e.to_string())?;

    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let single = flag_value(args, "--text")?.is_some();
    let mut tokens = 0;
    for (batch_index, batch) in texts.chunks(BATCH).enumerate() {
        let ids = tokenizer.encode_for_embedding(batch, encoder.max_seq_length()).map_err(|e| e.to_string())?;
        tokens += ids.iter().map(Vec::len).sum::<usize>();
        let vectors = pollster::block_on(encoder.embed(&gpu, &kernels, &ids)).map_err(|e| e.to_string())?;
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
