//! The generate loop: reuse the KV cache for the prompt's common prefix with
//! what the cache already holds, prefill the rest in chunks, then decode one
//! token per submit, sample, detokenize incrementally, stop on stop tokens,
//! stop strings or the token limit.
//!
//! LongRoPE: positions past `original_max_position_embeddings` use the long
//! factors for the whole sequence. Like transformers' Phi-3
//! `prepare_inputs_for_generation`, the first time a sequence crosses that
//! point the whole cache is recomputed with the long factors.
//!
//! Images (a vision model): a [`PromptImage`]'s rows stand in for the
//! embeddings of its positions, whose ids are placeholders; the cache is
//! reused across turns only while the images agree too.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
// std's Instant panics in wasm32-unknown-unknown; web-time's is performance.now() there.
use web_time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{Decoder, ExpertStats, ImageRows, Logits};
use crate::sampler::{Sampler, SamplingOptions};
use crate::structured::Constraint;
use crate::tokenizer::{Detokenizer, Tokenizer};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingOptions,
    pub stop_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    /// Checked before every token; set from elsewhere to stop early.
    pub interrupt: Interrupt,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampling: SamplingOptions::default(),
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            interrupt: Interrupt::default(),
        }
    }
}

/// A flag another task (a UI's Stop button, an AbortSignal) sets to end a
/// generation at the next token; finish_reason is then "abort".
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// An image in a prompt: the rows of its embedding ([n, hidden], from
/// [`crate::model::ImageEncoder::embed`]) stand at positions start..start + n,
/// in place of those tokens' embeddings.
#[derive(Clone, Debug)]
pub struct PromptImage {
    pub start: usize,
    pub rows: Rc<Vec<f32>>,
    /// Tells two images apart for the KV cache's reuse ([`crate::image::Rgb::fingerprint`]).
    pub fingerprint: u64,
}

impl PromptImage {
    fn span(&self, hidden: usize) -> ImageSpan {
        ImageSpan { start: self.start, len: self.rows.len() / hidden, fingerprint: self.fingerprint }
    }
}

/// Token ids, and the images whose rows replace some of their embeddings
/// (the ids there are placeholders, any id of the vocabulary).
#[derive(Clone, Copy, Debug)]
pub struct Prompt<'a> {
    pub ids: &'a [u32],
    pub images: &'a [PromptImage],
}

impl<'a> From<&'a [u32]> for Prompt<'a> {
    fn from(ids: &'a [u32]) -> Prompt<'a> {
        Prompt { ids, images: &[] }
    }
}

impl<'a> From<&'a Vec<u32>> for Prompt<'a> {
    fn from(ids: &'a Vec<u32>) -> Prompt<'a> {
        Prompt { ids, images: &[] }
    }
}

/// Where an image's rows sit in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ImageSpan {
    start: usize,
    len: usize,
    fingerprint: u64,
}

/// What the decoder's KV cache holds, so a conversation's next turn only
/// prefills what is new. One session per decoder.
#[derive(Debug, Default)]
pub struct Session {
    /// Token ids whose keys and values are in the cache, from position 0.
    cached: Vec<u32>,
    /// The images among them.
    images: Vec<ImageSpan>,
    /// Whether the cache was computed with LongRoPE's long factors.
    long: bool,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// The token ids whose keys and values the cache holds, from position 0.
    pub fn cached(&self) -> &[u32] {
        &self.cached
    }

    /// Forgets the cache (e.g. after an error mid-step).
    pub fn reset(&mut self) {
        self.cached.clear();
        self.images.clear();
        self.long = false;
    }

    /// Keeps positions 0..len.
    fn truncate(&mut self, len: usize) {
        self.cached.truncate(len);
        self.images.retain(|s| s.start + s.len <= len);
    }
}

/// The first position from which `cached` and `prompt` images differ
/// (usize::MAX when they agree): their placeholder ids are alike, so ids
/// alone cannot tell two images apart.
fn first_image_difference(cached: &[ImageSpan], prompt: &[ImageSpan]) -> usize {
    for i in 0..cached.len().max(prompt.len()) {
        match (cached.get(i), prompt.get(i)) {
            (Some(a), Some(b)) if a == b => continue,
            (a, b) => return a.into_iter().chain(b).map(|s| s.start).min().unwrap_or(usize::MAX),
        }
    }
    usize::MAX
}

/// Checks that images sit inside the prompt, in order, without overlapping.
pub(crate) fn check_images(prompt: &Prompt, hidden: usize) -> Result<()> {
    let mut end = 0;
    for (k, image) in prompt.images.iter().enumerate() {
        let n = image.rows.len() / hidden;
        if n == 0 || !image.rows.len().is_multiple_of(hidden) || image.start < end || image.start + n > prompt.ids.len()
        {
            return Err(Error::Shape {
                op: "generate",
                message: format!(
                    "image {} ({} values at position {}) does not fit the prompt's {} tokens of width {hidden}",
                    k + 1,
                    image.rows.len(),
                    image.start,
                    prompt.ids.len()
                ),
            });
        }
        end = image.start + n;
    }
    Ok(())
}

/// The image rows among positions pos..pos + len, for one forward call.
pub(crate) fn rows_in<'a>(images: &'a [PromptImage], pos: usize, len: usize, hidden: usize) -> Vec<ImageRows<'a>> {
    images
        .iter()
        .filter_map(|image| {
            let n = image.rows.len() / hidden;
            let (from, to) = (image.start.max(pos), (image.start + n).min(pos + len));
            (from < to).then(|| ImageRows {
                at: from - pos,
                rows: &image.rows[(from - image.start) * hidden..(to - image.start) * hidden],
            })
        })
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV cache was reused from the previous turn.
    pub cached_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub ttft_ms: f64,
    /// What the expert cache did in this generation (a mixture of experts
    /// whose experts do not all fit the GPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experts: Option<ExpertUse>,
    /// Grammar masks computed (a constrained answer) and their mean cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masks: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_ms: Option<f64>,
    /// The prompt's images (a vision model): what they took, before the prefill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageUse>,
}

/// A prompt's images: positions, crops and the image tower's time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImageUse {
    pub images: usize,
    /// Positions they take in the prompt.
    pub tokens: usize,
    /// Crops (with each image's global view) through the tower; rows of an
    /// image the engine had embedded before are reused, not counted.
    pub crops: usize,
    pub encode_ms: f64,
}

/// An expert cache's work over some tokens.
#[derive(Clone, Debug, Serialize)]
pub struct ExpertUse {
    #[serde(flatten)]
    pub counts: ExpertStats,
    pub hit_rate: f64,
    pub uploaded_bytes_per_token: f64,
}

impl ExpertUse {
    /// What the decoder's caches did since `before`, over `tokens` forwarded tokens.
    pub fn since(decoder: &Decoder, before: Option<ExpertStats>, tokens: usize) -> Option<ExpertUse> {
        let counts = decoder.expert_stats()?.since(&before.unwrap_or_default());
        let uploaded_bytes_per_token = counts.uploaded_bytes as f64 / tokens.max(1) as f64;
        Some(ExpertUse { counts, hit_rate: counts.hit_rate(), uploaded_bytes_per_token })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    /// "stop" (a stop token or string, or a finished grammar), "length"
    /// (max tokens or context), "abort" (interrupted) or "tool_calls".
    pub finish_reason: &'static str,
    /// The calls the answer made (then `text` is empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::structured::tools::ToolCall>,
    pub stats: Stats,
}

/// Generates from `prompt` (token ids); `on_text` receives each text delta
/// as it is decoded. With a `constraint`, every token is sampled from the
/// logits its grammar allows, and the answer ends when the grammar does.
#[allow(clippy::too_many_arguments)]
pub async fn generate(
    backend: &Backend,
    decoder: &Decoder,
    session: &mut Session,
    tokenizer: &Tokenizer,
    prompt: impl Into<Prompt<'_>>,
    options: &GenerateOptions,
    mut constraint: Option<&mut Constraint>,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let Prompt { ids: prompt, images } = prompt.into();
    let hidden = decoder.config.hidden_size;
    check_images(&Prompt { ids: prompt, images }, hidden)?;
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
    let needs_long = |len: usize| decoder.config.uses_long_rope(len);
    // Reuse the common prefix, but always run at least the last prompt token.
    let mut reuse = session.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
    let spans: Vec<ImageSpan> = images.iter().map(|i| i.span(hidden)).collect();
    reuse = reuse.min(first_image_difference(&session.images, &spans));
    if needs_long(prompt.len()) != session.long || !decoder.can_resume(session.cached.len(), reuse) {
        reuse = 0; // rotated with the other LongRoPE factors, or overwritten (ring cache)
    }
    session.truncate(reuse);

    let start = Instant::now();
    let experts_before = decoder.expert_stats();
    let mut forwarded = prompt.len() - reuse; // tokens through the model, for per-token figures
    let mut context: Vec<u32> = prompt.to_vec();
    // A grammar masks the logits, so they are read back even when greedy.
    let greedy = options.sampling.is_greedy() && constraint.is_none();
    let mask_error = Cell::new(None);
    let during = || prepare_mask(&mut constraint, &mask_error);
    let prefilled = prefill(backend, decoder, session, &context, images, reuse, &options.interrupt, greedy, during);
    let prefilled = prefilled.await?;
    let ttft = start.elapsed().as_secs_f64();
    let Some(mut next) = prefilled else {
        // Interrupted during the prompt: what was computed stays cached.
        let computed = session.cached.len() - reuse;
        return Ok(Generation {
            text: String::new(),
            tokens: Vec::new(),
            finish_reason: "abort",
            stats: Stats {
                prompt_tokens: prompt.len(),
                cached_tokens: reuse,
                prefill_tokens_per_s: computed as f64 / ttft.max(1e-9),
                decode_tokens_per_s: 0.0,
                ttft_ms: ttft * 1e3,
                experts: ExpertUse::since(decoder, experts_before, computed),
                masks: None,
                mask_ms: None,
                images: None,
            },
            tool_calls: Vec::new(),
        });
    };

    let mut sampler = Sampler::new(options.sampling.clone());
    let mut detokenizer = Detokenizer::default();
    let (mut tokens, mut text) = (Vec::new(), String::new());
    let mut finish_reason = "length";
    let decode_start = Instant::now();
    while tokens.len() < options.max_tokens {
        if options.interrupt.is_set() {
            finish_reason = "abort";
            break;
        }
        if let Some(e) = mask_error.take() {
            return Err(e);
        }
        let id = match &mut next {
            Next::Token(id) => *id,
            Next::Logits(logits) => {
                if let Some(c) = constraint.as_deref_mut() {
                    c.apply(logits)?;
                }
                sampler.sample(logits, &context)
            }
        };
        tokens.push(id);
        context.push(id);
        if options.stop_token_ids.contains(&id) {
            finish_reason = "stop";
            break;
        }
        let delta = detokenizer.push(tokenizer, id)?;
        text.push_str(&delta);
        if let Some(c) = constraint.as_deref_mut() {
            c.commit(id, &text)?;
        }
        if let Some(at) = options.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(at);
            finish_reason = "stop";
            break;
        }
        on_text(&delta);
        if constraint.as_deref().is_some_and(Constraint::is_finished) {
            finish_reason = "stop"; // the grammar admits nothing more
            break;
        }
        let pos = context.len() - 1;
        if tokens.len() == options.max_tokens || pos >= decoder.capacity {
            break; // finish_reason stays "length"
        }
        next = if needs_long(context.len()) && !session.long {
            // Crossing into LongRoPE's long factors: recompute the whole cache.
            session.cached.clear();
            forwarded += context.len();
            let during = || prepare_mask(&mut constraint, &mask_error);
            match prefill(backend, decoder, session, &context, images, 0, &options.interrupt, greedy, during).await? {
                Some(next) => next,
                None => {
                    finish_reason = "abort";
                    break;
                }
            }
        } else {
            forwarded += 1;
            let during = || prepare_mask(&mut constraint, &mask_error);
            let result = forward_step(backend, decoder, &[id], &[], pos, pos + 1, greedy, during).await;
            session.cached.push(id);
            result.inspect_err(|_| session.reset())?
        };
    }
    let decode_secs = decode_start.elapsed().as_secs_f64();
    let decoded = tokens.len().saturating_sub(1).max(1);
    let (masks, mask_ms) = constraint.as_deref().map(Constraint::mask_stats).unzip();
    Ok(Generation {
        text,
        tokens,
        finish_reason,
        tool_calls: Vec::new(),
        stats: Stats {
            prompt_tokens: prompt.len(),
            cached_tokens: reuse,
            prefill_tokens_per_s: (prompt.len() - reuse) as f64 / ttft.max(1e-9),
            decode_tokens_per_s: decoded as f64 / decode_secs.max(1e-9),
            ttft_ms: ttft * 1e3,
            experts: ExpertUse::since(decoder, experts_before, forwarded),
            masks,
            mask_ms,
            images: None,
        },
    })
}

/// Computes the constraint's next mask (while the GPU runs); an error waits
/// in `error` until the step that needs the mask.
fn prepare_mask(constraint: &mut Option<&mut Constraint>, error: &Cell<Option<Error>>) {
    if let Some(Err(e)) = constraint.as_deref_mut().map(Constraint::prepare) {
        error.set(Some(e));
    }
}

/// What a forward call hands the sampler: the logits, or on greedy steps
/// the token the GPU already picked.
enum Next {
    Logits(Vec<f32>),
    Token(u32),
}

/// One forward call of `ids` at `pos` in a sequence of `sequence_len`
/// tokens; `during` runs on the CPU while the GPU computes.
#[allow(clippy::too_many_arguments)]
async fn forward_step(
    backend: &Backend,
    decoder: &Decoder,
    ids: &[u32],
    images: &[ImageRows<'_>],
    pos: usize,
    sequence_len: usize,
    greedy: bool,
    during: impl FnOnce(),
) -> Result<Next> {
    Ok(match greedy {
        true => {
            during(); // nothing to mask on the greedy path
            Next::Token(decoder.greedy_with_images(backend, ids, images, pos, sequence_len).await?)
        }
        false => {
            let logits = decoder.forward_while(backend, ids, images, pos, sequence_len, Logits::Last, during);
            Next::Logits(logits.await?)
        }
    })
}

/// Runs `tokens[from..]` at positions from.. in chunks; returns the last
/// step's result, or None when `interrupt` is set before a chunk (a long
/// prompt on a slow GPU can take minutes; Stop must not wait for all of it).
#[allow(clippy::too_many_arguments)]
async fn prefill(
    backend: &Backend,
    decoder: &Decoder,
    session: &mut Session,
    tokens: &[u32],
    images: &[PromptImage],
    from: usize,
    interrupt: &Interrupt,
    greedy: bool,
    during: impl FnOnce(),
) -> Result<Option<Next>> {
    let hidden = decoder.config.hidden_size;
    // Every chunk uses the factors of the whole sequence's length.
    session.long = decoder.config.uses_long_rope(tokens.len());
    let mut next = None;
    let mut pos = from;
    let mut during = Some(during); // with the first chunk
    for chunk in tokens[from..].chunks(decoder.max_tokens) {
        if interrupt.is_set() {
            return Ok(None);
        }
        let once = during.take();
        let during = move || once.into_iter().for_each(|f| f());
        let rows = rows_in(images, pos, chunk.len(), hidden);
        let result = forward_step(backend, decoder, chunk, &rows, pos, tokens.len(), greedy, during).await;
        next = Some(result.inspect_err(|_| session.reset())?);
        pos += chunk.len();
        session.cached.extend_from_slice(chunk);
        // The images this chunk completed are in the cache now.
        let done = |s: &ImageSpan| s.start + s.len <= pos && s.start + s.len > pos - chunk.len();
        session.images.extend(images.iter().map(|i| i.span(hidden)).filter(done));
    }
    Ok(next)
}
