//! The generate loop: prefill the prompt in chunks, then decode one token per
//! submit, sample, detokenize incrementally, stop on stop tokens, stop
//! strings or the token limit.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernels};
use crate::model::{Decoder, Logits};
use crate::sampler::{Sampler, SamplingOptions};
use crate::tokenizer::{Detokenizer, Tokenizer};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingOptions,
    pub stop_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub ttft_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    /// "stop" (a stop token or string) or "length" (max tokens or context).
    pub finish_reason: &'static str,
    pub stats: Stats,
}

/// Generates from `prompt` (token ids) with an empty KV cache; `on_text`
/// receives each text delta as it is decoded.
pub async fn generate(
    gpu: &Gpu,
    kernels: &Kernels,
    decoder: &Decoder,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Shape { op: "generate", message: "the prompt is empty".into() });
    }
    if prompt.len() >= decoder.capacity {
        return Err(Error::Shape {
            op: "generate",
            message: format!(
                "the prompt has {} tokens but the context holds {}; shorten it or raise --context",
                prompt.len(),
                decoder.capacity
            ),
        });
    }
    let start = Instant::now();
    let mut logits = Vec::new();
    let mut pos = 0;
    for chunk in prompt.chunks(decoder.max_tokens) {
        logits = decoder.forward(gpu, kernels, chunk, pos, Logits::Last).await?;
        pos += chunk.len();
    }
    let ttft = start.elapsed().as_secs_f64();

    let mut sampler = Sampler::new(options.sampling.clone());
    let mut detokenizer = Detokenizer::default();
    let mut context: Vec<u32> = prompt.to_vec();
    let (mut tokens, mut text) = (Vec::new(), String::new());
    let mut finish_reason = "length";
    let decode_start = Instant::now();
    while tokens.len() < options.max_tokens {
        let id = sampler.sample(&mut logits, &context);
        tokens.push(id);
        context.push(id);
        if options.stop_token_ids.contains(&id) {
            finish_reason = "stop";
            break;
        }
        let delta = detokenizer.push(tokenizer, id)?;
        text.push_str(&delta);
        if let Some(at) = options.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(at);
            finish_reason = "stop";
            break;
        }
        on_text(&delta);
        if tokens.len() == options.max_tokens || pos >= decoder.capacity {
            break; // finish_reason stays "length"
        }
        logits = decoder.forward(gpu, kernels, &[id], pos, Logits::Last).await?;
        pos += 1;
    }
    let decode_secs = decode_start.elapsed().as_secs_f64();
    let decoded = tokens.len().saturating_sub(1).max(1);
    Ok(Generation {
        text,
        tokens,
        finish_reason,
        stats: Stats {
            prompt_tokens: prompt.len(),
            prefill_tokens_per_s: prompt.len() as f64 / ttft.max(1e-9),
            decode_tokens_per_s: decoded as f64 / decode_secs.max(1e-9),
            ttft_ms: ttft * 1e3,
        },
    })
}
