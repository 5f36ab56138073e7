//! A Hugging Face `tokenizer.json` rebuilt from the vocabulary GGUF stores in
//! its metadata (`tokenizer.ggml.*`), so a GGUF converts into a package that
//! can chat. Two families:
//!
//! - `gpt2`: byte-level BPE with the file's merges; the pre-tokenizer comes
//!   from `tokenizer.ggml.pre` (GPT-2, SmolLM, Llama-3, and tiktoken's cl100k
//!   (`dbrx`, Phi-4) and o200k (`gpt-4o`, Phi-4-mini) regexes).
//! - `llama`: SentencePiece BPE (Phi-3, Phi-3.5, Phi-3-medium, Llama-2).
//!   SentencePiece merges the adjacent pair whose merged piece has the best
//!   score; the BPE below has one merge per split of a piece into two
//!   pieces, ordered by the merged piece's score (as transformers'
//!   `SentencePieceExtractor` builds them), byte fallback for characters
//!   outside the vocabulary, and `▁` for spaces with one prepended to the
//!   text (and, as in llama.cpp and transformers, after each special token).

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::formats::gguf::Gguf;
use crate::formats::tiktoken::{CL100K_PATTERN, O200K_PATTERN};

/// GGUF token types (llama.cpp's llama_token_type).
const TOKEN_NORMAL: u64 = 1;
const TOKEN_UNKNOWN: u64 = 2;
const TOKEN_CONTROL: u64 = 3;
const TOKEN_USER_DEFINED: u64 = 4;

/// SentencePiece's space.
const SPACE: &str = "\u{2581}";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// A regex split followed by byte-level mapping (Llama-3 and tiktoken vocabularies).
fn split_then_bytes(pattern: &str) -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

/// The pre-tokenizer for `tokenizer.ggml.pre`, and whether whole pre-tokens
/// are looked up before merging (tiktoken's rule).
fn pre_tokenizer(pre: &str) -> Result<(Value, bool)> {
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => (byte_level(true), false),
        // SmolLM / StarCoder: every digit is its own piece, then GPT-2's regex.
        "smollm" | "starcoder" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        // Llama-3's regex is cl100k_base's; `dbrx` is cl100k_base itself (Phi-4).
        "llama-bpe" | "llama3" | "dbrx" => (split_then_bytes(CL100K_PATTERN), true),
        // o200k_base: Phi-4-mini.
        "gpt-4o" => (split_then_bytes(O200K_PATTERN), true),
        other => {
            return Err(Error::Unsupported {
                what: format!("GGUF pre-tokenizer `{other}`"),
                supported: "default, gpt-2, smollm, starcoder, llama-bpe, dbrx (cl100k), gpt-4o (o200k)".into(),
            })
        }
    })
}

/// The vocabulary arrays of a GGUF.
struct Vocab<'a> {
    tokens: Vec<&'a str>,
    types: Vec<u64>,
    scores: Vec<f32>,
}

impl<'a> Vocab<'a> {
    fn read(gguf: &'a Gguf) -> Result<Vocab<'a>> {
        let tokens = strings(gguf, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let numbers = |key: &str| gguf.get(key).and_then(|v| v.as_array());
        let types: Vec<u64> = match numbers("tokenizer.ggml.token_type") {
            Some(a) => a.iter().map(|t| t.as_u64().unwrap_or(TOKEN_NORMAL)).collect(),
            None => vec![TOKEN_NORMAL; n],
        };
        let scores: Vec<f32> = match numbers("tokenizer.ggml.scores") {
            Some(a) => a.iter().map(|s| s.as_f64().unwrap_or(0.0) as f32).collect(),
            None => vec![0.0; n],
        };
        if types.len() != n || scores.len() != n {
            return Err(Error::format(
                gguf.path.display(),
                format!("{n} tokens but {} token types and {} scores", types.len(), scores.len()),
            ));
        }
        Ok(Vocab { tokens, types, scores })
    }

    fn map(&self) -> serde_json::Map<String, Value> {
        self.tokens.iter().enumerate().map(|(id, t)| (t.to_string(), json!(id))).collect()
    }

    /// Unknown, control and user-defined tokens, matched whole in the text
    /// before the model runs. `rstrip(token)`: whether it swallows the whitespace after it.
    fn added(&self, rstrip: impl Fn(&str) -> bool) -> Vec<Value> {
        self.types
            .iter()
            .enumerate()
            .filter(|(_, &t)| matches!(t, TOKEN_UNKNOWN | TOKEN_CONTROL | TOKEN_USER_DEFINED))
            .map(|(id, &t)| {
                let content = self.tokens[id];
                json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": rstrip(content),
                       "normalized": false, "special": t != TOKEN_USER_DEFINED})
            })
            .collect()
    }
}

fn strings<'a>(gguf: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    gguf.get(key)
        .and_then(|v| v.as_array())
        .ok_or_else(|| Error::format(gguf.path.display(), format!("no {key} array")))?
        .iter()
        .map(|v| v.as_str().ok_or_else(|| Error::format(gguf.path.display(), format!("{key} holds a non-string"))))
        .collect()
}

/// The tokenizer.json text for `gguf`'s vocabulary.
pub fn tokenizer_json(gguf: &Gguf) -> Result<String> {
    let model = gguf.get("tokenizer.ggml.model").and_then(|v| v.as_str()).unwrap_or("");
    let tokenizer = match model {
        "gpt2" => byte_level_bpe(gguf)?,
        "llama" => sentencepiece_bpe(gguf)?,
        _ => {
            return Err(Error::Unsupported {
                what: format!("GGUF tokenizer model `{model}`"),
                supported: "gpt2 (byte-level BPE), llama (SentencePiece BPE)".into(),
            })
        }
    };
    serde_json::to_string(&tokenizer).map_err(|e| Error::format("tokenizer.json", e.to_string()))
}

fn byte_level_bpe(gguf: &Gguf) -> Result<Value> {
    let vocab = Vocab::read(gguf)?;
    let merges = strings(gguf, "tokenizer.ggml.merges")?;
    let pre = gguf.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre)?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added(|_| false),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                  "vocab": vocab.map(), "merges": merges},
    }))
}

fn sentencepiece_bpe(gguf: &Gguf) -> Result<Value> {
    let vocab = Vocab::read(gguf)?;
    let add_space_prefix = gguf.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(true);
    let unk = vocab.types.iter().position(|&t| t == TOKEN_UNKNOWN).map(|id| vocab.tokens[id]);
    // Phi-3's special tokens swallow the whitespace after them, except
    // <unk>, <s> and <|endoftext|> (its tokenizer.json; llama.cpp does the same).
    let arch = gguf.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
    let name = gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or("").to_lowercase();
    let phi3 = arch == "phi3" || name.contains("phi-3") || name.contains("phi3");
    let rstrip = |token: &str| phi3 && !matches!(token, "<unk>" | "<s>" | "<|endoftext|>");

    let mut normalizers = Vec::new();
    let mut decoders = vec![json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "})];
    decoders.extend([json!({"type": "ByteFallback"}), json!({"type": "Fuse"})]);
    if add_space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": SPACE}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE}));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added(rstrip),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab.map(), "merges": sentencepiece_merges(&vocab)},
    }))
}

/// One merge per split of a normal piece into two pieces of the vocabulary,
/// best-scored merged piece first; a piece's own splits by (left id, right id).
fn sentencepiece_merges(vocab: &Vocab) -> Vec<Value> {
    let id_of: HashMap<&str, usize> = vocab.tokens.iter().enumerate().map(|(id, t)| (*t, id)).collect();
    // (score, merged id, left id, right id)
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in vocab.tokens.iter().enumerate() {
        if vocab.types[id] != TOKEN_NORMAL {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (id_of.get(&piece[..split]), id_of.get(&piece[split..])) {
                merges.push((vocab.scores[id], id, l, r));
            }
        }
    }
    // Equal scores keep vocabulary order, as in transformers.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then((a.2, a.3).cmp(&(b.2, b.3))));
    merges.iter().map(|&(_, _, l, r)| json!([vocab.tokens[l], vocab.tokens[r]])).collect()
}
