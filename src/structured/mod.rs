//! Constrained decoding: a JSON schema, a Lark grammar or a tool call becomes
//! a per-token mask that llguidance computes from the tokenizer's vocabulary
//! and the session applies to the logits before sampling, so the answer is
//! valid by construction (a truncated one ends with finish_reason "length").
//!
//! Per step: the mask for the next token is computed on the CPU while the GPU
//! runs the forward pass (`Decoder::forward_last_while`), then the sampled
//! token is committed to the matcher. The vocabulary's token trie is built
//! once per engine ([`Grammars`]); each request compiles its own grammar.

pub mod tools;

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde::Deserialize;
use serde_json::Value;
use web_time::Instant;

use crate::error::{Error, Result};

/// What the answer must be: OpenAI's `response_format`, plus phi-web's
/// `{ type: "grammar", grammar }` in llguidance's Lark syntax.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    JsonSchema {
        json_schema: JsonSchema,
    },
    Grammar {
        grammar: String,
    },
}

/// `response_format.json_schema`.
#[derive(Clone, Debug, Deserialize)]
pub struct JsonSchema {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "any_object")]
    pub schema: Value,
    /// true: a keyword llguidance cannot enforce is an error; false (the
    /// default, as OpenAI's): such keywords are ignored, the rest enforced.
    #[serde(default)]
    pub strict: bool,
}

fn any_object() -> Value {
    serde_json::json!({ "type": "object" })
}

/// How JSON is written: compact, without free whitespace (a small model
/// given room for whitespace can spend its whole budget on newlines).
fn with_layout(mut schema: Value, what: &str, lenient: bool) -> Result<Value> {
    let kind = json_kind(&schema);
    let object = schema.as_object_mut().ok_or_else(|| Error::Shape {
        op: "response_format",
        message: format!("{what} must be a JSON object (a schema), not {kind}"),
    })?;
    object.insert(
        "x-guidance".into(),
        serde_json::json!({
            "whitespace_flexible": false,
            "lenient": lenient,
        }),
    );
    Ok(schema)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON schema, with phi-web's layout, as a Lark `%json` block (for the
/// tool-call grammar, which embeds one per tool).
pub(crate) fn json_block(schema: &Value, what: &str, lenient: bool) -> Result<String> {
    let schema = with_layout(schema.clone(), what, lenient)?;
    Ok(format!("%json {schema}"))
}

/// The tokenizer's vocabulary as llguidance sees it: every token's bytes in a
/// trie, built once per engine.
pub struct Grammars {
    factory: ParserFactory,
    /// Token ids the trie knows; logits past it (padding rows) are masked.
    vocab: usize,
}

impl Grammars {
    /// `tokens[id]`: the bytes of token `id` (special tokens prefixed with
    /// 0xFF, as `token_bytes_from_tokenizer_json` writes them); `eos`: the
    /// token that ends an answer.
    pub fn new(tokens: &[Vec<u8>], eos: u32) -> Result<Grammars> {
        let trie = TokTrie::from(&TokRxInfo::new(tokens.len() as u32, eos), tokens);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let slices = SlicedBiasComputer::general_slices();
        let mut factory = ParserFactory::new(&env, InferenceCapabilities::default(), &slices)
            .map_err(|e| Error::Config { message: format!("building the constrained-decoding vocabulary: {e}") })?;
        factory.quiet();
        Ok(Grammars { factory, vocab: tokens.len() })
    }

    /// From a tokenizer.json document (byte-level BPE or SentencePiece).
    pub fn from_tokenizer_json(json: &Value, eos: u32) -> Result<Grammars> {
        let tokens = llguidance::token_bytes_from_tokenizer_json(json).map_err(|e| Error::Format {
            file: "tokenizer.json".into(),
            message: format!("its vocabulary cannot be used for constrained decoding: {e}"),
        })?;
        Grammars::new(&tokens, eos)
    }

    /// Token ids of `text` by a greedy walk of the vocabulary's trie (close
    /// to, not always equal to, the tokenizer's own ids; for benchmarks).
    pub fn greedy_tokens(&self, text: &str) -> Vec<u32> {
        self.factory.tok_env().tok_trie().greedy_tokenize(text.as_bytes())
    }

    /// The constraint for `format`; None for plain text.
    pub fn response_format(&self, format: &ResponseFormat) -> Result<Option<Constraint>> {
        let grammar = match format {
            ResponseFormat::Text => return Ok(None),
            ResponseFormat::JsonObject => TopLevelGrammar::from_json_schema(with_layout(any_object(), "", false)?),
            ResponseFormat::JsonSchema { json_schema } => {
                let what = format!(
                    "json_schema.schema{}",
                    json_schema.name.as_ref().map_or(String::new(), |n| format!(" ({n})"))
                );
                TopLevelGrammar::from_json_schema(with_layout(json_schema.schema.clone(), &what, !json_schema.strict)?)
            }
            ResponseFormat::Grammar { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
        };
        let op = match format {
            ResponseFormat::Grammar { .. } => "grammar",
            _ => "json_schema",
        };
        self.compile(grammar, op, None).map(Some)
    }

    /// A Lark grammar; with `trigger`, the mask applies only once the answer
    /// starts with that text (and never if it does not).
    pub(crate) fn lark(&self, lark: String, op: &'static str, trigger: Option<String>) -> Result<Constraint> {
        self.compile(TopLevelGrammar::from_lark(lark), op, trigger)
    }

    fn compile(&self, grammar: TopLevelGrammar, op: &'static str, trigger: Option<String>) -> Result<Constraint> {
        let parser = self.factory.create_parser(grammar).map_err(|e| Error::Shape { op, message: e.to_string() })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(message) = matcher.get_error() {
            return Err(Error::Shape { op, message });
        }
        let state = if trigger.is_some() { State::Tentative } else { State::Constrained };
        Ok(Constraint { matcher, trigger, state, vocab: self.vocab, mask: None, masks: 0, mask_secs: 0.0 })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Every token is masked.
    Constrained,
    /// The answer may still become the trigger's text: tokens are checked
    /// against the grammar but not masked; a token it rejects frees the answer.
    Tentative,
    /// The answer did not start with the trigger: nothing is masked.
    Free,
}

/// One request's grammar state: the matcher and the mask for the next token.
pub struct Constraint {
    matcher: Matcher,
    trigger: Option<String>,
    state: State,
    vocab: usize,
    /// The next token's mask once computed.
    mask: Option<SimpleVob>,
    masks: usize,
    mask_secs: f64,
}

impl Constraint {
    /// Computes the next token's mask (while the GPU runs the forward pass).
    pub fn prepare(&mut self) -> Result<()> {
        if self.state == State::Free || self.mask.is_some() {
            return Ok(());
        }
        let start = Instant::now();
        let mask = self.matcher.compute_mask().map_err(|e| internal(e.to_string()))?;
        self.mask_secs += start.elapsed().as_secs_f64();
        self.masks += 1;
        self.mask = Some(mask);
        Ok(())
    }

    /// Sets the logits of tokens the grammar does not allow to -inf.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<()> {
        if self.state != State::Constrained {
            return Ok(());
        }
        self.prepare()?;
        let Some(mask) = &self.mask else { return Ok(()) };
        if mask.num_set() == 0 {
            return Err(internal("the grammar allows no next token".into()));
        }
        for (id, logit) in logits.iter_mut().enumerate() {
            if id >= self.vocab || !mask.is_allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves the grammar past `token`; `text` is the answer so far, this token included.
    pub fn commit(&mut self, token: u32, text: &str) -> Result<()> {
        if self.state == State::Free {
            return Ok(());
        }
        self.prepare()?;
        let allowed = self.mask.take().is_some_and(|mask| mask.is_allowed(token));
        match (self.state, allowed) {
            (_, false) if self.state != State::Constrained => self.state = State::Free,
            (_, false) => return Err(internal(format!("token {token} is outside the grammar"))),
            (_, true) => {
                self.matcher.consume_token(token).map_err(|e| internal(e.to_string()))?;
                let trigger = self.trigger.as_deref().unwrap_or_default();
                if self.state == State::Tentative && text.starts_with(trigger) {
                    self.state = State::Constrained;
                }
            }
        }
        Ok(())
    }

    /// Whether the grammar is complete and admits nothing more.
    pub fn is_finished(&self) -> bool {
        self.state != State::Free && self.matcher.is_stopped()
    }

    /// Whether the answer is held to the grammar (for "auto" tool choice:
    /// whether it became a tool call).
    pub fn is_constrained(&self) -> bool {
        self.state == State::Constrained
    }

    /// Masks computed so far and the milliseconds they took on average.
    pub fn mask_stats(&self) -> (usize, f64) {
        (self.masks, 1e3 * self.mask_secs / self.masks.max(1) as f64)
    }
}

fn internal(message: String) -> Error {
    Error::Shape { op: "constrained decoding", message }
}
