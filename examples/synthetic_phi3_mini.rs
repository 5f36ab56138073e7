//! Writes the benchmark's synthetic Phi-3-mini package (random q4_0, 2.1 GB)
//! to DIR, borrowing a tokenizer from another package so that the browser
//! runtime, which needs one, can load it. For load and memory measurements
//! (tests/web/load-memory.mjs); its outputs are noise.
//!
//!   cargo run --release --example synthetic_phi3_mini -- DIR TOKENIZER_PACKAGE_DIR

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, tokenizer_from] = args.as_slice() else {
        return Err("usage: synthetic_phi3_mini DIR TOKENIZER_PACKAGE_DIR".into());
    };
    let (dir, donor) = (Path::new(dir), Path::new(tokenizer_from));
    phi_web::bench::synthetic_phi3_mini(dir)?;
    let donor_manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(donor.join("model.json"))?)?;
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("model.json"))?)?;
    std::fs::copy(donor.join("tokenizer.json"), dir.join("tokenizer.json"))?;
    manifest["tokenizer"] = "tokenizer.json".into();
    manifest["chat_template"] = donor_manifest["chat_template"].clone();
    std::fs::write(dir.join("model.json"), serde_json::to_string_pretty(&manifest)?)?;
    println!("wrote {}", dir.display());
    Ok(())
}
