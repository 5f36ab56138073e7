//! What constrained decoding costs: the grammar mask per token on a small
//! (SmolLM2, 49k) and a large (Phi-4-mini's o200k, 200k) vocabulary, and
//! SmolLM2's decode rate with a JSON schema ÷ without one, in one run.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::engine::{Engine, EngineOptions, Request};
use crate::error::{Error, Result};
use crate::formats::package::Package;
use crate::structured::{Grammars, JsonSchema, ResponseFormat};
use crate::tokenizer::{Message, Tokenizer};

#[derive(Serialize)]
pub struct StructuredReport {
    pub masks: Vec<MaskFigure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode: Option<ConstrainedDecodeFigure>,
}

#[derive(Serialize)]
pub struct MaskFigure {
    pub vocabulary: String,
    pub tokens: usize,
    /// Building the token trie and llguidance's slices (once per engine).
    pub vocabulary_build_ms: f64,
    /// Compiling the schema (once per request).
    pub compile_ms: f64,
    /// Tokens of the replayed answer (one mask each).
    pub answer_tokens: usize,
    pub mask_ms_mean: f64,
    pub mask_ms_max: f64,
}

#[derive(Serialize)]
pub struct ConstrainedDecodeFigure {
    pub model: String,
    pub tokens: usize,
    pub free_tokens_per_s: f64,
    pub schema_tokens_per_s: f64,
    /// schema ÷ free: what a schema costs in decode rate (mask, logits readback).
    pub ratio: f64,
    pub mask_ms_mean: f64,
}

/// The schema the figures use, and an answer valid against it.
fn person_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "maxLength": 40 },
            "age": { "type": "integer", "minimum": 0, "maximum": 150 },
            "hobbies": { "type": "array", "items": { "type": "string" }, "maxItems": 5 },
            "role": { "enum": ["student", "teacher", "engineer", "artist"] },
            "address": {
                "type": "object",
                "properties": { "city": { "type": "string" }, "zip": { "type": "string", "pattern": "^[0-9]{5}$" } },
                "required": ["city"],
                "additionalProperties": false,
            },
        },
        "required": ["name", "age", "role"],
        "additionalProperties": false,
    })
}

const PERSON_ANSWER: &str = r#"{"name":"Ada Lovelace","age":36,"hobbies":["chess","poetry","mathematics of engines"],"role":"engineer","address":{"city":"London","zip":"12345"}}"#;

fn person_format() -> ResponseFormat {
    ResponseFormat::JsonSchema { json_schema: JsonSchema { name: None, schema: person_schema(), strict: true } }
}

/// Replays PERSON_ANSWER through the schema's matcher, a mask per token.
pub fn mask_figure(name: &str, tokens: &[Vec<u8>], eos: u32) -> Result<MaskFigure> {
    let start = Instant::now();
    let grammars = Grammars::new(tokens, eos)?;
    let vocabulary_build_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let mut constraint = grammars.response_format(&person_format())?.expect("a schema constrains");
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let ids = grammars.greedy_tokens(PERSON_ANSWER);
    let (mut text, mut max) = (String::new(), 0f64);
    for &id in &ids {
        let start = Instant::now();
        constraint.prepare()?;
        max = max.max(start.elapsed().as_secs_f64() * 1e3);
        text.push_str(&String::from_utf8_lossy(&tokens[id as usize]));
        constraint.commit(id, &text)?;
    }
    let (_, mean) = constraint.mask_stats();
    Ok(MaskFigure {
        vocabulary: name.into(),
        tokens: tokens.len(),
        vocabulary_build_ms,
        compile_ms,
        answer_tokens: ids.len(),
        mask_ms_mean: mean,
        mask_ms_max: max,
    })
}

/// A tokenizer package's vocabulary as token bytes, and its first stop token.
pub fn package_vocabulary(dir: &Path) -> Result<(Vec<Vec<u8>>, u32)> {
    let package = Package::open(dir)?;
    let file = package.manifest.tokenizer.as_ref().ok_or_else(|| Error::format(dir.display(), "no tokenizer"))?;
    let bytes = std::fs::read(dir.join(file)).map_err(|e| Error::io(&dir.join(file), e))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::format(file, e.to_string()))?;
    let tokens = llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| Error::format(file, e.to_string()))?;
    Ok((tokens, package.manifest.stop_token_ids.first().copied().unwrap_or(0)))
}

/// Phi-4-mini's vocabulary (200064 ids) from the o200k ranks that the npm
/// package js-tiktoken ships (`dist/ranks/o200k_base.js`: lines of
/// "<char> <first rank> <base64 token> …"), with its special tokens as
/// 0xFF-marked placeholders from 199999 up and `<|end|>` (200020) the stop token.
pub fn o200k_vocabulary(ranks_js: &Path) -> Result<(Vec<Vec<u8>>, u32)> {
    let mut tokens = vec![Vec::new(); 200_064];
    for (token, rank) in crate::formats::tiktoken::parse_js_tiktoken(ranks_js)? {
        *tokens.get_mut(rank as usize).ok_or_else(|| Error::format(ranks_js.display(), "a rank past 200064"))? = token;
    }
    for (id, token) in tokens.iter_mut().enumerate().skip(199_999) {
        let name = match id {
            199_999 => "<|endoftext|>".to_string(),
            200_020 => "<|end|>".to_string(),
            _ => format!("<|special_{id}|>"),
        };
        *token = [&[0xFF][..], name.as_bytes()].concat();
    }
    Ok((tokens, 200_020))
}

/// SmolLM2 decoding `tokens` tokens greedily, free and held to a schema whose
/// answer is longer than that (both end at the token limit).
pub fn constrained_decode(dir: &Path, tokens: usize) -> Result<ConstrainedDecodeFigure> {
    let package = Package::open(dir)?;
    let file = dir.join(package.manifest.tokenizer.as_deref().unwrap_or("tokenizer.json"));
    let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
    let tokenizer = Tokenizer::from_bytes(&bytes, &package.manifest)?;
    let engine = pollster::block_on(Engine::load(
        &package,
        Some(tokenizer),
        &EngineOptions { context: 512, ..Default::default() },
    ))?;
    let schema = serde_json::json!({
        "type": "object",
        "properties": { "story": { "type": "string", "minLength": 2000 } },
        "required": ["story"],
    });
    let messages = vec![Message::new("user", "Tell me a long story about a lighthouse keeper.")];
    let free = Request { messages, max_tokens: tokens, ..Request::default() };
    let format = ResponseFormat::JsonSchema { json_schema: JsonSchema { name: None, schema, strict: true } };
    let held = Request { response_format: Some(format), ..free.clone() };
    // Warm-up (pipelines, the vocabulary), then one timed run of each.
    pollster::block_on(engine.chat(&held, |_| {}))?;
    let (free_run, held_run) =
        (pollster::block_on(engine.chat(&free, |_| {}))?, pollster::block_on(engine.chat(&held, |_| {}))?);
    let (f, h) = (free_run.stats.decode_tokens_per_s, held_run.stats.decode_tokens_per_s);
    Ok(ConstrainedDecodeFigure {
        model: package.manifest.name.clone(),
        tokens: held_run.tokens.len(),
        free_tokens_per_s: f,
        schema_tokens_per_s: h,
        ratio: h / f,
        mask_ms_mean: held_run.stats.mask_ms.unwrap_or(f64::NAN),
    })
}

/// The report's Markdown section.
pub fn markdown(report: &StructuredReport) -> String {
    let mut out = String::from("\n| vocabulary | tokens | vocabulary build ms | schema compile ms | mask ms/token (mean, max) |\n|---|---|---|---|---|\n");
    for m in &report.masks {
        out += &format!(
            "| {} | {} | {:.0} | {:.1} | {:.3}, {:.3} over {} tokens |\n",
            m.vocabulary, m.tokens, m.vocabulary_build_ms, m.compile_ms, m.mask_ms_mean, m.mask_ms_max, m.answer_tokens
        );
    }
    if let Some(d) = &report.decode {
        out += &format!(
            "\n{}: decode {:.2} tok/s with a JSON schema, {:.2} without ({:.2}x, {} tokens; mask {:.3} ms/token)\n",
            d.model, d.schema_tokens_per_s, d.free_tokens_per_s, d.ratio, d.tokens, d.mask_ms_mean
        );
    }
    out
}
