//! The HF `tokenizers` wrapper, chat templates rendered from the model's own
//! Jinja template (minijinja), and an incremental detokenizer that never
//! splits UTF-8 or drops SentencePiece spaces.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::package::Manifest;
use crate::structured::tools::ToolCall;

/// A chat message, OpenAI-shaped: an assistant's may carry `tool_calls`
/// (its `content` then null), a `tool` message answers one by `tool_call_id`.
/// `content` is a string or a list of parts: `{"type": "text", "text"}`
/// and `{"type": "image", "index"}` (an image of the request's, already
/// decoded; the JavaScript API turns `image_url` parts into these).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "RawMessage")]
pub struct Message {
    pub role: String,
    /// The text, with [`IMAGE_MARK`] where each image part stands.
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The request's images this message shows, in the order of their marks.
    #[serde(skip_serializing)]
    pub images: Vec<usize>,
}

/// Where an image part stands in a message's text (U+FFFC, the object
/// replacement character; removed from text parts), followed by a newline:
/// the engine puts the image's rows there, as Phi-3-vision's processor
/// does for `<|image_k|>\n`.
pub const IMAGE_MARK: char = '\u{FFFC}';

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        let content = content.replace(IMAGE_MARK, "");
        Message { role: role.into(), content, tool_calls: Vec::new(), tool_call_id: None, images: Vec::new() }
    }

    /// A message showing the request's images `images`, then saying `text`.
    pub fn with_images(role: &str, images: &[usize], text: &str) -> Message {
        let mut message = Message::new(role, text);
        message.content = images.iter().flat_map(|_| [IMAGE_MARK, '\n']).chain(message.content.chars()).collect();
        message.images = images.to_vec();
        message
    }
}

/// One part of a message's content.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentPart {
    Text { text: String },
    Image { index: usize },
    ImageUrl {},
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    #[serde(default)]
    content: Option<RawContent>,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

impl From<RawMessage> for Message {
    fn from(raw: RawMessage) -> Message {
        let mut message = Message::new(&raw.role, "");
        message.tool_calls = raw.tool_calls;
        message.tool_call_id = raw.tool_call_id;
        match raw.content {
            None => {}
            Some(RawContent::Text(text)) => message.content = text.replace(IMAGE_MARK, ""),
            Some(RawContent::Parts(parts)) => {
                for part in parts {
                    match part {
                        ContentPart::Text { text } => message.content.push_str(&text.replace(IMAGE_MARK, "")),
                        ContentPart::Image { index } => {
                            message.content.extend([IMAGE_MARK, '\n']);
                            message.images.push(index);
                        }
                        // Unresolved URLs (only the JavaScript API fetches them):
                        // an index no request has, which the engine reports.
                        ContentPart::ImageUrl {} => {
                            message.content.extend([IMAGE_MARK, '\n']);
                            message.images.push(usize::MAX);
                        }
                    }
                }
            }
        }
        message
    }
}

/// A piece of a text for retrieval: [start, end) in UTF-16 code units.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TextChunk {
    pub start: usize,
    pub end: usize,
    pub tokens: usize,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner` without its own truncation and padding (tokenizer.json files of
    /// embedding models carry both), made on first use by the embedding paths.
    plain: std::sync::OnceLock<tokenizers::Tokenizer>,
    chat_template: Option<String>,
    bos_token: String,
    eos_token: String,
}

fn tokenizer_error(e: impl std::fmt::Display) -> Error {
    Error::Format { file: "tokenizer.json".into(), message: e.to_string() }
}

impl Tokenizer {
    /// From tokenizer.json bytes and the package manifest (template, special tokens).
    pub fn from_bytes(json: &[u8], manifest: &Manifest) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(tokenizer_error)?;
        Ok(Tokenizer {
            inner,
            plain: std::sync::OnceLock::new(),
            chat_template: manifest.chat_template.clone(),
            bos_token: manifest.bos_token.clone().unwrap_or_default(),
            eos_token: manifest.eos_token.clone().unwrap_or_default(),
        })
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(tokenizer_error)?.get_ids().to_vec())
    }

    /// Token ids of each text for an embedding model: with the model's
    /// special tokens ([CLS] … [SEP]), truncated to `max_len`, never padded.
    pub fn encode_for_embedding(&self, texts: &[String], max_len: usize) -> Result<Vec<Vec<u32>>> {
        let plain = self.plain()?;
        let added = plain.get_post_processor().map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        texts
            .iter()
            .map(|text| {
                let mut encoding = plain.encode(text.as_str(), false).map_err(tokenizer_error)?;
                encoding.truncate(max_len.saturating_sub(added), 0, tokenizers::TruncationDirection::Right);
                let encoding = plain.post_process(encoding, None, true).map_err(tokenizer_error)?;
                Ok(encoding.get_ids().to_vec())
            })
            .collect()
    }

    fn plain(&self) -> Result<&tokenizers::Tokenizer> {
        if let Some(plain) = self.plain.get() {
            return Ok(plain);
        }
        let mut plain = self.inner.clone();
        plain.with_truncation(None).map_err(tokenizer_error)?;
        plain.with_padding(None);
        Ok(self.plain.get_or_init(|| plain))
    }

    /// Splits `text` into windows of at most `max_tokens` tokens (room is
    /// left for the model's [CLS] and [SEP]) that overlap by `overlap`
    /// tokens, for retrieval. Offsets are in UTF-16 code units, as
    /// JavaScript strings index.
    pub fn chunk(&self, text: &str, max_tokens: usize, overlap: usize) -> Result<Vec<TextChunk>> {
        let body = max_tokens.saturating_sub(2).max(1);
        let stride = body.saturating_sub(overlap).max(1);
        let encoding = self.plain()?.encode(text, false).map_err(tokenizer_error)?;
        let offsets = encoding.get_offsets();
        // Byte offset → UTF-16 offset, for every char boundary.
        let mut utf16 = vec![0usize; text.len() + 1];
        let mut units = 0;
        for (byte, c) in text.char_indices() {
            utf16[byte] = units;
            units += c.len_utf16();
        }
        utf16[text.len()] = units;
        let mut chunks = Vec::new();
        let mut first = 0;
        while first < offsets.len() {
            let last = (first + body).min(offsets.len());
            chunks.push(TextChunk {
                start: utf16[offsets[first].0.min(text.len())],
                end: utf16[offsets[last - 1].1.min(text.len())],
                tokens: last - first,
            });
            if last == offsets.len() {
                break;
            }
            first += stride;
        }
        Ok(chunks)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tokenizer_error)
    }

    /// tokenizer.json as a JSON document (for the constrained-decoding vocabulary).
    pub fn to_json(&self) -> Result<serde_json::Value> {
        let text = self.inner.to_string(false).map_err(tokenizer_error)?;
        serde_json::from_str(&text).map_err(tokenizer_error)
    }

    /// The id of the end-of-sequence token the manifest names, if any.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.inner.token_to_id(&self.eos_token)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The prompt text for `messages` from the model's chat template.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Config { message: "this model has no chat template; use a raw prompt".into() })?;
        render_chat_template(template, messages, &self.bos_token, &self.eos_token)
    }
}

/// Renders a Jinja chat template (Hugging Face's conventions: `messages`,
/// `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`).
pub fn render_chat_template(template: &str, messages: &[Message], bos_token: &str, eos_token: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    let render_error = |e: minijinja::Error| Error::Config { message: format!("chat template: {e}") };
    env.add_template("chat", template).map_err(render_error)?;
    let context = minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    env.get_template("chat").and_then(|t| t.render(context)).map_err(render_error)
}

/// Turns a stream of token ids into text deltas. Decodes a short window of
/// ids so that context-dependent decoders (SentencePiece's leading spaces,
/// byte fallback) see their neighbours, and holds text back while it ends in
/// an incomplete UTF-8 sequence.
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.ids[self.prefix..])?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let delta = after.get(before.len()..).unwrap_or_default().to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }
}
