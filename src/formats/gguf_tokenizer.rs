//! A Hugging Face `tokenizer.json` rebuilt from the vocabulary GGUF stores in
//! its metadata (`tokenizer.ggml.*`), so a GGUF converts into a package that
//! can chat. Byte-level BPE ("gpt2" models: SmolLM2, Llama-3 style) is
//! supported; SentencePiece ("llama" models: Phi-3 GGUFs) is not yet, and is
//! reported as such.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::formats::gguf::Gguf;

/// GGUF token types (llama.cpp's llama_token_type).
const TOKEN_CONTROL: u64 = 3;
const TOKEN_USER_DEFINED: u64 = 4;

fn pre_tokenizer(pre: &str) -> Result<Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        // SmolLM / StarCoder: every digit is its own piece, then GPT-2's regex.
        "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}),
        other => {
            return Err(Error::Unsupported {
                what: format!("GGUF pre-tokenizer `{other}`"),
                supported: "default, gpt-2, smollm, starcoder, llama-bpe".into(),
            })
        }
    })
}

/// The tokenizer.json text for `gguf`'s vocabulary.
pub fn tokenizer_json(gguf: &Gguf) -> Result<String> {
    let model = gguf.get("tokenizer.ggml.model").and_then(|v| v.as_str()).unwrap_or("");
    if model != "gpt2" {
        return Err(Error::Unsupported {
            what: format!("GGUF tokenizer model `{model}`"),
            supported: "gpt2 (byte-level BPE)".into(),
        });
    }
    let strings = |key: &str| -> Result<Vec<&str>> {
        gguf.get(key)
            .and_then(|v| v.as_array())
            .ok_or_else(|| Error::format(gguf.path.display(), format!("no {key} array")))?
            .iter()
            .map(|v| v.as_str().ok_or_else(|| Error::format(gguf.path.display(), format!("{key} holds a non-string"))))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = gguf
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|t| t.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let pre = gguf.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");

    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(id, t)| (t.to_string(), json!(id))).collect();
    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED)
        .map(|(id, &t)| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": t == TOKEN_CONTROL})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    serde_json::to_string(&tokenizer).map_err(|e| Error::format("tokenizer.json", e.to_string()))
}
