//! What every generating model shares, whatever its architecture: the token
//! ids and positions of a forward call, the KV cache, the recorded command
//! lists (a decode step replays one), and reading the result back — the
//! logits, or on greedy steps only the token the GPU picked. An architecture
//! (`phi3.rs`, ...) provides its weights and records its forward pass through
//! [`CausalLm`]; `session.rs` drives any of them through [`Decoder`].

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::blocks::KvCache;
use super::expert_cache::ExpertStats;
use super::phi3::Phi3;
use super::phi3small::Phi3Small;
use super::phimoe::PhiMoe;
use super::recorder::{Recorder, Segment};
use crate::backend::{Backend, Buf, Commands};
use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::formats::package::ShardSource;
use crate::gpu::{Command, Gpu, KvFormat};

/// One decoder architecture: its weights and scratch, and its forward pass.
pub(crate) trait CausalLm {
    /// Records the forward pass of `r.tokens` tokens of `io.ids` (token t at
    /// position step.pos + t): keys and values into `cache`, logits into
    /// `io.logits` — [T, vocab] with `pass.all_logits`, else the last
    /// token's [vocab].
    fn record(&self, r: &mut Recorder, io: &DecoderIo, cache: &KvCache, pass: Pass) -> Result<()>;
    /// Bytes of weights on the GPU.
    fn weight_gpu_bytes(&self) -> u64;
    /// Bytes of weights one decode step reads (for bandwidth figures).
    fn weight_read_bytes(&self) -> u64;
    /// Runs layer `layer`'s `Segment::Experts` (an architecture with an
    /// expert cache records them).
    fn run_experts<'a>(
        &'a self,
        _gpu: &'a Gpu,
        layer: usize,
        _tokens: usize,
        _commands: &'a [Command],
    ) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>> {
        Box::pin(async move {
            Err(Error::Gpu { context: "forward".into(), message: format!("layer {layer} has no expert cache") })
        })
    }
    /// What the expert caches did so far (None without one).
    fn expert_stats(&self) -> Option<ExpertStats> {
        None
    }
}

/// What a forward pass records besides its token count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pass {
    /// LongRoPE's long factors (the sequence outgrew the original context).
    pub long_rope: bool,
    /// Logits of every token, not only the last.
    pub all_logits: bool,
}

/// What an architecture's loader needs to size its scratch.
pub(crate) struct LoadPlan {
    /// Tokens one forward call may carry.
    pub max_tokens: usize,
    /// Positions the KV cache holds.
    pub capacity: usize,
    /// Bytes of weights the GPU may hold (an expert cache keeps the rest off it).
    pub gpu_memory: Option<u64>,
}

/// How to load a decoder.
#[derive(Clone, Copy, Debug)]
pub struct DecoderOptions {
    /// Positions the KV cache holds.
    pub capacity: usize,
    /// Tokens one forward call may carry, at most `capacity` (longer prompts are chunked by the caller).
    pub max_tokens: usize,
    pub kv: KvFormat,
    /// Bytes of weights the GPU may hold; None: all of them. A mixture of
    /// experts that does not fit keeps a cache of each layer's experts.
    pub gpu_memory: Option<u64>,
}

impl DecoderOptions {
    pub fn new(capacity: usize, max_tokens: usize, kv: KvFormat) -> DecoderOptions {
        DecoderOptions { capacity, max_tokens, kv, gpu_memory: None }
    }
}

/// The buffers a forward call reads and writes, outside the architecture.
pub(crate) struct DecoderIo {
    pub ids: Buf, // [T] u32
    /// A vision model's image rows for the call's image positions.
    pub images: Option<ImageIo>,
    pub logits: Buf,      // [T, vocab]
    step: Buf,            // Step: the position of the first token
    logits_readback: Buf, // [vocab] mappable copy of the last token's logits
    token: Buf,           // [1] u32, argmax of the last token's logits
    token_readback: Buf,  // [1] u32 mappable
}

/// Image feature rows in place of some token embeddings of a forward call.
pub(crate) struct ImageIo {
    pub flags: Buf, // [T] u32: 1 where the row is an image row
    pub rows: Buf,  // [T, H] the image rows at their token's index
    /// Whether `flags` has any set (text-only calls after a clear write nothing).
    flagged: std::cell::Cell<bool>,
}

/// Rows of image features standing in for the token embeddings of a forward
/// call's tokens at..at + rows / hidden_size.
#[derive(Clone, Copy, Debug)]
pub struct ImageRows<'a> {
    pub at: usize,
    pub rows: &'a [f32],
}

/// GPU memory of a loaded decoder, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct DecoderMemory {
    pub weights: u64,
    pub kv_cache: u64,
}

/// Which logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// The last token's row only (generation).
    Last,
    /// One row per token (`phi-web logits`, parity tests).
    All,
}

/// What a forward call reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readout {
    Logits(Logits),
    /// The last token's argmax, picked on the GPU: 4 bytes instead of the
    /// vocabulary's logits.
    Argmax,
}

/// What a recorded command list depends on (positions live in the Step buffer).
#[derive(Clone, Copy, PartialEq, Eq)]
struct RecordKey {
    tokens: usize,
    long_rope: bool,
    readout: Readout,
}

/// Recorded lists kept at most: decode, full prefill chunks and a few tails.
const RECORDED_MAX: usize = 8;

pub struct Decoder {
    pub config: ModelConfig,
    /// Positions the KV cache holds.
    pub capacity: usize,
    /// Tokens one forward call may carry (longer prompts are chunked by the caller).
    pub max_tokens: usize,
    model: Box<dyn CausalLm>,
    io: DecoderIo,
    cache: KvCache,
    /// Passes already recorded, by shape: a decode step replays one instead
    /// of creating bind groups and uniform buffers for every token.
    recorded: std::sync::Mutex<Vec<(RecordKey, Rc<Vec<Segment>>)>>,
}

impl Decoder {
    /// Uploads the package's weights, allocates scratch and a KV cache for
    /// `capacity` positions stored as `kv`, and compiles the pipelines its
    /// forward passes use.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(
        backend: &Backend,
        package: &crate::formats::package::Package,
        options: &DecoderOptions,
    ) -> Result<Decoder> {
        pollster::block_on(Decoder::load_from(backend, package, options))
    }

    /// `load` from any shard source (the browser's cache in wasm), tensor by
    /// tensor in the order of the shards.
    pub async fn load_from(b: &Backend, source: &impl ShardSource, options: &DecoderOptions) -> Result<Decoder> {
        let DecoderOptions { capacity, max_tokens, kv, gpu_memory } = *options;
        let config = source.manifest().config.clone();
        let kv_dim = config.num_kv_heads * config.head_dim;
        if !kv.supports(kv_dim) || (kv == KvFormat::Q8 && !config.head_dim.is_multiple_of(KvFormat::Q8_BLOCK)) {
            return Err(Error::Unsupported {
                what: format!("a {} KV cache for {} heads of {}", kv.name(), config.num_kv_heads, config.head_dim),
                supported: format!(
                    "f16 and f32 for rows a multiple of 4, q8 for heads a multiple of {}",
                    KvFormat::Q8_BLOCK
                ),
            });
        }
        if config.vision.is_some() && config.architecture != Architecture::Phi3 {
            return Err(Error::Unsupported {
                what: format!("an image tower on {:?}", config.architecture),
                supported: "Phi-3-vision and Phi-3.5-vision (a phi3 decoder)".into(),
            });
        }
        // A context shorter than a call's tokens takes calls of its own length.
        let t = max_tokens.clamp(1, capacity.max(1));
        let plan = LoadPlan { max_tokens: t, capacity, gpu_memory };
        let model: Box<dyn CausalLm> = match config.architecture {
            Architecture::Phi3 | Architecture::Llama => Box::new(Phi3::load(b, source, &plan).await?),
            Architecture::PhiMoe => Box::new(PhiMoe::load(b, source, &plan).await?),
            Architecture::Phi3Small => Box::new(Phi3Small::load(b, source, &plan).await?),
            Architecture::Bert => {
                return Err(Error::Unsupported {
                    what: "bert as a generating model".into(),
                    supported: "phi3, phimoe, phi3small, llama".into(),
                })
            }
        };
        let slots = match config.sliding_window {
            Some(window) if window > 0 => capacity.min(window + t),
            _ => capacity,
        };
        let vocab = config.vocab_size;
        let images = match config.vision {
            Some(_) => Some(ImageIo {
                flags: b.storage("image flags", 4 * t as u64)?,
                rows: b.storage("image rows", (4 * t * config.hidden_size) as u64)?,
                flagged: Default::default(),
            }),
            None => None,
        };
        let io = DecoderIo {
            ids: b.storage("ids", 4 * t as u64)?,
            images,
            logits: b.storage("logits", (4 * t * vocab) as u64)?,
            step: b.step_buffer()?,
            logits_readback: b.readback_buffer("logits readback", 4 * vocab as u64)?,
            token: b.storage("token", 4)?,
            token_readback: b.readback_buffer("token readback", 4)?,
        };
        let cache = KvCache::new(b, &config, slots, kv)?;
        let decoder = Decoder { config, capacity, max_tokens: t, model, io, cache, recorded: Default::default() };
        // Warm up: record (and so compile the pipelines of) a decode step and
        // a full prefill chunk; nothing else compiles.
        for tokens in [1, t] {
            decoder.recorded(b, RecordKey { tokens, long_rope: false, readout: Readout::Argmax })?;
        }
        b.check()?;
        Ok(decoder)
    }

    /// Runs `ids` at positions pos.. (the cache must hold 0..pos) and returns
    /// logits: [vocab] for `Logits::Last`, [T, vocab] for `Logits::All`.
    pub async fn forward(&self, b: &Backend, ids: &[u32], pos: usize, which: Logits) -> Result<Vec<f32>> {
        self.forward_in_sequence(b, ids, pos, pos + ids.len(), which).await
    }

    /// `forward` for one chunk of a sequence of `sequence_len` tokens: like
    /// transformers, LongRoPE uses the long factors at every position once the
    /// whole sequence exceeds the original context, so a chunked prefill must
    /// know the total.
    pub async fn forward_in_sequence(
        &self,
        b: &Backend,
        ids: &[u32],
        pos: usize,
        sequence_len: usize,
        which: Logits,
    ) -> Result<Vec<f32>> {
        self.forward_while(b, ids, &[], pos, sequence_len, which, || {}).await
    }

    /// `forward_in_sequence` with image rows in place of some tokens' embeddings.
    pub async fn forward_with_images(
        &self,
        b: &Backend,
        ids: &[u32],
        images: &[ImageRows<'_>],
        pos: usize,
        sequence_len: usize,
        which: Logits,
    ) -> Result<Vec<f32>> {
        self.forward_while(b, ids, images, pos, sequence_len, which, || {}).await
    }

    /// `forward_in_sequence`, running `during` on the CPU once the pass is
    /// submitted and before its logits are read (the next token's grammar
    /// mask is computed while the GPU works).
    #[allow(clippy::too_many_arguments)]
    pub async fn forward_while(
        &self,
        b: &Backend,
        ids: &[u32],
        images: &[ImageRows<'_>],
        pos: usize,
        sequence_len: usize,
        which: Logits,
        during: impl FnOnce(),
    ) -> Result<Vec<f32>> {
        self.submit(b, ids, images, pos, sequence_len, Readout::Logits(which)).await?;
        during();
        match which {
            Logits::Last => b.read_mapped_f32("logits", &self.io.logits_readback, self.config.vocab_size).await,
            Logits::All => b.read_f32("logits", &self.io.logits, ids.len() * self.config.vocab_size).await,
        }
    }

    /// `forward_in_sequence` for greedy decoding: the id of the last token's
    /// largest logit (the first on ties), picked on the GPU.
    pub async fn greedy_in_sequence(&self, b: &Backend, ids: &[u32], pos: usize, sequence_len: usize) -> Result<u32> {
        self.greedy_with_images(b, ids, &[], pos, sequence_len).await
    }

    /// `greedy_in_sequence` with image rows in place of some tokens' embeddings.
    pub async fn greedy_with_images(
        &self,
        b: &Backend,
        ids: &[u32],
        images: &[ImageRows<'_>],
        pos: usize,
        sequence_len: usize,
    ) -> Result<u32> {
        self.submit(b, ids, images, pos, sequence_len, Readout::Argmax).await?;
        let token = b.read_mapped_u32("token", &self.io.token_readback, 1).await?;
        Ok(token[0])
    }

    async fn submit(
        &self,
        b: &Backend,
        ids: &[u32],
        images: &[ImageRows<'_>],
        pos: usize,
        sequence_len: usize,
        readout: Readout,
    ) -> Result<()> {
        let t = ids.len();
        if t == 0 || t > self.max_tokens {
            return Err(Error::Shape {
                op: "forward",
                message: format!("{t} tokens; one call takes 1 to {}", self.max_tokens),
            });
        }
        if pos + t > self.capacity {
            return Err(Error::Shape {
                op: "forward",
                message: format!("positions {pos}..{} exceed the context of {} tokens", pos + t, self.capacity),
            });
        }
        let vocab = self.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Shape {
                op: "forward",
                message: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        self.write_images(b, images, t)?;
        b.write(&self.io.ids, 0, bytemuck::cast_slice(ids))?;
        b.set_step(&self.io.step, pos as u32)?;
        let long_rope = self.config.uses_long_rope(sequence_len.max(pos + t));
        let pass = self.recorded(b, RecordKey { tokens: t, long_rope, readout })?;
        for segment in pass.iter() {
            match segment {
                Segment::Run(ops) => b.run(ops)?,
                Segment::Experts { layer, commands } => {
                    let gpu = &b.gpu_only("an expert cache")?.gpu;
                    self.model.run_experts(gpu, *layer, t, commands).await?
                }
            }
        }
        b.yield_now().await;
        Ok(())
    }

    /// Flags and rows of the call's image positions; a call without images
    /// clears the flags an earlier call set, then writes nothing (decode steps).
    fn write_images(&self, b: &Backend, images: &[ImageRows<'_>], tokens: usize) -> Result<()> {
        let Some(io) = &self.io.images else {
            return match images.is_empty() {
                true => Ok(()),
                false => Err(Error::Shape {
                    op: "forward",
                    message: "this model takes no images (it has no vision tower)".into(),
                }),
            };
        };
        if images.is_empty() && !io.flagged.get() {
            return Ok(());
        }
        let h = self.config.hidden_size;
        let mut flags = vec![0u32; tokens];
        for image in images {
            let n = image.rows.len() / h;
            if !image.rows.len().is_multiple_of(h) || image.at + n > tokens {
                return Err(Error::Shape {
                    op: "forward",
                    message: format!(
                        "{} image values at token {} of a {tokens}-token call of width {h}",
                        image.rows.len(),
                        image.at
                    ),
                });
            }
            flags[image.at..image.at + n].fill(1);
            b.write(&io.rows, (image.at * h * 4) as u64, bytemuck::cast_slice(image.rows))?;
        }
        // All max_tokens flags: a longer earlier call may have set some past `tokens`.
        flags.resize(self.max_tokens, 0);
        b.write(&io.flags, 0, bytemuck::cast_slice(&flags))?;
        io.flagged.set(!images.is_empty());
        Ok(())
    }

    /// Kernel launches (GPU) or ops (CPU) of one greedy decode step: what
    /// `phi-web bench` reports as dispatches per token.
    pub fn dispatches_per_token(&self, b: &Backend) -> Result<usize> {
        let pass = self.recorded(b, RecordKey { tokens: 1, long_rope: false, readout: Readout::Argmax })?;
        let gpu = |commands: &[Command]| commands.iter().filter(|c| matches!(c, Command::Dispatch(_))).count();
        Ok(pass
            .iter()
            .map(|segment| match segment {
                Segment::Run(Commands::Gpu(commands)) => gpu(commands),
                Segment::Run(Commands::Cpu(ops)) => ops.len(),
                Segment::Experts { commands, .. } => gpu(commands),
            })
            .sum())
    }

    /// The recorded pass for `key`, recorded on first use.
    fn recorded(&self, b: &Backend, key: RecordKey) -> Result<Rc<Vec<Segment>>> {
        let mut recorded = self.recorded.lock().map_err(|_| Error::Gpu {
            context: "forward".into(),
            message: "an earlier forward call panicked".into(),
        })?;
        match recorded.iter().position(|(k, _)| *k == key) {
            Some(i) => recorded[..=i].rotate_right(1), // most recent first
            None => {
                let pass = Rc::new(self.record(b, key)?);
                recorded.truncate(RECORDED_MAX - 1);
                recorded.insert(0, (key, pass));
            }
        }
        Ok(recorded[0].1.clone())
    }

    /// One forward call's commands: the architecture's pass, then the readout.
    fn record(&self, b: &Backend, key: RecordKey) -> Result<Vec<Segment>> {
        let mut r = Recorder::new(b, key.tokens, &self.io.step);
        let all_logits = key.readout == Readout::Logits(Logits::All);
        self.model.record(&mut r, &self.io, &self.cache, Pass { long_rope: key.long_rope, all_logits })?;
        let vocab = self.config.vocab_size;
        match key.readout {
            Readout::Logits(Logits::All) => {}
            Readout::Logits(Logits::Last) => {
                r.copy(&self.io.logits, 0, &self.io.logits_readback, (vocab * 4) as u64)?
            }
            Readout::Argmax => {
                r.push(b.argmax(&self.io.logits, &self.io.token, 1, vocab)?);
                r.copy(&self.io.token, 0, &self.io.token_readback, 4)?;
            }
        }
        Ok(r.finish())
    }

    /// GPU memory of the weights and of the KV cache (buffer sizes).
    pub fn memory(&self) -> DecoderMemory {
        DecoderMemory { weights: self.model.weight_gpu_bytes(), kv_cache: self.cache.gpu_bytes() }
    }

    /// Whether, after positions [0, written) went through the cache, a new
    /// prefill may start at `from` (reusing the keys before it): a ring cache
    /// has overwritten the oldest positions, and the queries from `from` on
    /// must still find every key their window reaches.
    pub fn can_resume(&self, written: usize, from: usize) -> bool {
        let window = self.config.sliding_window.unwrap_or(0);
        self.cache.slots >= self.capacity || from + self.cache.slots + 1 >= written + window
    }

    /// KV-cache bytes a decode step at position `pos` reads over all layers:
    /// every position up to it in dense layers, in Phi-3-small's block-sparse
    /// ones the positions some query head of each KV head's group sees.
    pub fn kv_bytes_read(&self, pos: usize) -> u64 {
        let c = &self.config;
        let head_bytes = 2 * self.cache.format.row_bytes(c.num_kv_heads * c.head_dim) / c.num_kv_heads;
        let layer_keys = |layer: usize| match &c.phi3small {
            Some(s) if !s.dense_layer(layer) => s.blocksparse.layer_keys_read(c.num_heads, c.num_kv_heads, pos),
            _ => c.num_kv_heads * (pos + 1),
        };
        (0..c.num_layers).map(|l| (layer_keys(l) * head_bytes) as u64).sum()
    }

    /// How the KV cache stores keys and values.
    pub fn kv_format(&self) -> KvFormat {
        self.cache.format
    }

    /// Bytes of weights a decode step reads (for bandwidth figures).
    pub fn weight_bytes(&self) -> u64 {
        self.model.weight_read_bytes()
    }

    /// What the expert caches did so far (None when every expert is resident).
    pub fn expert_stats(&self) -> Option<ExpertStats> {
        self.model.expert_stats()
    }
}
