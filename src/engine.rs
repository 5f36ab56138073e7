//! One engine for the CLI and the browser: the GPU with its kernels, a
//! loaded decoder, the tokenizer and the conversation's session. Request
//! defaults, the prefill chunk and the default context cap live here once;
//! `web.rs` and `src/bin/phi-web/run.rs` only translate their inputs.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use serde::Deserialize;

use crate::backend::{Backend, BackendChoice, GpuBackend};
use crate::config::{Architecture, ModelConfig};
use crate::cpu::Cpu;
use crate::error::{Error, Result};
use crate::formats::package::{Manifest, ShardSource};
use crate::gpu::{Gpu, GpuOptions, Kernels, KvFormat};
use crate::image::{hd_transform, Rgb};
use crate::model::{Decoder, DecoderOptions, ImageEncoder, Logits};
use crate::sampler::SamplingOptions;
use crate::session::{self, GenerateOptions, Generation, ImageUse, Interrupt, Prompt, PromptImage, Session};
use crate::structured::tools::{render_messages, Delta, Tool, ToolChoice, ToolPlan, ToolStream};
use crate::structured::{Constraint, Grammars, ResponseFormat};
use crate::tokenizer::{Message, Tokenizer, IMAGE_MARK};

/// Tokens per prefill call (longer prompts run in chunks of this many).
pub const PREFILL_CHUNK: usize = 64;
/// Context allocated when the caller asks for none: the model's maximum,
/// capped here (a 128k-context model would otherwise take gigabytes of KV).
pub const DEFAULT_CONTEXT: usize = 4096;

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Positions of context; 0 = the model's maximum capped at [`DEFAULT_CONTEXT`].
    pub context: usize,
    pub kv_cache: KvFormat,
    /// WebGPU, the CPU, or the best of them (the default).
    pub backend: BackendChoice,
    /// CPU backend threads; None: one per core (rayon's pool, set once per process).
    pub threads: Option<usize>,
    pub gpu: GpuOptions,
    /// Bytes of weights the GPU may hold (`--gpu-memory`, `gpuMemoryBudget`);
    /// None: all of them. A mixture of experts over budget caches its experts.
    pub gpu_memory: Option<u64>,
    /// Tokens per forward call while prefilling (`prefillChunk`); 0 =
    /// [`PREFILL_CHUNK`]. Activation scratch grows with it; 1 prefills token
    /// by token, as decoding does.
    pub prefill_chunk: usize,
}

/// One generation request: the OpenAI fields the engine itself needs, with
/// every default in one place (JS and the CLI leave out what they lack).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Request {
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub repetition_penalty: f32,
    pub seed: u64,
    pub stop: Vec<String>,
    /// The answer's shape: JSON (any object, or a schema) or a Lark grammar.
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call (chat only).
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
}

impl Default for Request {
    fn default() -> Request {
        let s = SamplingOptions::default();
        Request {
            messages: Vec::new(),
            max_tokens: 256,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            repetition_penalty: s.repetition_penalty,
            seed: s.seed,
            stop: Vec::new(),
            response_format: None,
            tools: Vec::new(),
            tool_choice: None,
        }
    }
}

pub struct Engine {
    pub backend: Backend,
    /// Why `backend` runs the model (`stats().backendReason`).
    pub backend_reason: String,
    pub decoder: Decoder,
    /// A vision model's image tower and projector.
    pub vision: Option<ImageEncoder>,
    /// None for packages without one (they can compute logits, not generate).
    pub tokenizer: Option<Tokenizer>,
    stop_token_ids: Vec<u32>,
    /// The conversation's KV cache; borrowed for the whole of a generation
    /// (a second one at the same time gets an error, not a panic).
    session: RefCell<Session>,
    interrupt: Interrupt,
    /// The vocabulary for constrained decoding, built on first use.
    grammars: OnceCell<Grammars>,
    /// The rows of the last images embedded, by their pixels' fingerprint:
    /// a conversation sends its images again every turn, and the tower
    /// need not run again.
    image_rows: RefCell<Vec<(u64, Rc<Vec<f32>>)>>,
}

/// Images whose rows the engine keeps (Phi-3.5-vision: 9 MB each at 4 crops).
const IMAGE_ROWS_KEPT: usize = 4;

impl Engine {
    /// Creates the device and loads the model from `source`.
    pub async fn load(
        source: &impl ShardSource,
        tokenizer: Option<Tokenizer>,
        options: &EngineOptions,
    ) -> Result<Engine> {
        let (backend, backend_reason) = open_backend(options, &source.manifest().config).await?;
        let context = context_for(&source.manifest().config, options.context);
        if cfg!(target_arch = "wasm32") && matches!(backend, Backend::Cpu(_)) {
            check_wasm_memory(source.manifest(), context, options.kv_cache)?;
        }
        let plan = DecoderOptions {
            capacity: context,
            max_tokens: match options.prefill_chunk {
                0 => PREFILL_CHUNK,
                n => n,
            },
            kv: options.kv_cache,
            gpu_memory: options.gpu_memory,
        };
        let decoder = Decoder::load_from(&backend, source, &plan).await?;
        let vision = ImageEncoder::load(&backend, source).await?;
        Ok(Engine {
            backend,
            backend_reason,
            decoder,
            vision,
            tokenizer,
            stop_token_ids: source.manifest().stop_token_ids.clone(),
            session: RefCell::new(Session::new()),
            interrupt: Interrupt::default(),
            grammars: OnceCell::new(),
            image_rows: RefCell::new(Vec::new()),
        })
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::Config {
            message: "this package has no tokenizer: it can compute logits but not generate".into(),
        })
    }

    /// The sampling and stopping of `request`, with the model's stop tokens.
    fn generate_options(&self, request: &Request) -> GenerateOptions {
        GenerateOptions {
            max_tokens: request.max_tokens,
            sampling: SamplingOptions {
                temperature: request.temperature,
                top_k: request.top_k,
                top_p: request.top_p,
                repetition_penalty: request.repetition_penalty,
                seed: request.seed,
            },
            stop_token_ids: self.stop_token_ids.clone(),
            stop_strings: request.stop.clone(),
            interrupt: self.interrupt.clone(),
        }
    }

    /// The constrained-decoding vocabulary (built on the first request that needs it).
    pub fn grammars(&self) -> Result<&Grammars> {
        if let Some(grammars) = self.grammars.get() {
            return Ok(grammars);
        }
        let tokenizer = self.tokenizer()?;
        let eos = self.stop_token_ids.first().copied().or_else(|| tokenizer.eos_token_id()).ok_or_else(|| {
            Error::Config { message: "the model has no stop token, so a constrained answer could not end".into() }
        })?;
        let grammars = Grammars::from_tokenizer_json(&tokenizer.to_json()?, eos)?;
        Ok(self.grammars.get_or_init(|| grammars))
    }

    /// The constraint `request.response_format` asks for, if any.
    fn format_constraint(&self, request: &Request) -> Result<Option<Constraint>> {
        match &request.response_format {
            None | Some(ResponseFormat::Text) => Ok(None),
            Some(format) => self.grammars()?.response_format(format),
        }
    }

    /// Answers `request.messages` through the model's chat template; the KV
    /// cache of the previous request's shared prefix is reused. `on_delta`
    /// receives the answer's text, or the pieces of its tool call.
    pub async fn chat(&self, request: &Request, on_delta: impl FnMut(Delta)) -> Result<Generation> {
        self.chat_with_images(request, &[], on_delta).await
    }

    /// `chat` where messages show images: a content part `{"type": "image",
    /// "index": i}` is `images[i]` (a vision model only).
    pub async fn chat_with_images(
        &self,
        request: &Request,
        images: &[Rgb],
        mut on_delta: impl FnMut(Delta),
    ) -> Result<Generation> {
        if request.messages.is_empty() {
            return Err(Error::Shape { op: "request", message: "messages is empty".into() });
        }
        let tokenizer = self.tokenizer()?;
        let plan = ToolPlan::new(&request.tools, request.tool_choice.as_ref())?;
        let messages = render_messages(&request.messages, plan.as_ref())?;
        let text = tokenizer.apply_chat_template(&messages)?;
        let (prompt, prompt_images, image_use) = self.prompt_with_images(&text, &messages, images).await?;
        let prompt = Prompt { ids: &prompt, images: &prompt_images };
        let Some(plan) = plan else {
            let constraint = self.format_constraint(request)?;
            let result = self.run(prompt, request, constraint, |text| on_delta(Delta::Text(text))).await?;
            return Ok(with_images(result, image_use));
        };
        if !matches!(request.response_format, None | Some(ResponseFormat::Text)) {
            let message = "response_format together with tools is not supported yet; ask for the call's arguments \
                           through the tool's parameters, or for JSON without tools"
                .into();
            return Err(Error::Shape { op: "request", message });
        }
        let constraint = plan.constraint(self.grammars()?)?;
        let mut stream = ToolStream::default();
        let result = self.run(prompt, request, Some(constraint), |text| stream.push(text, &mut on_delta)).await?;
        stream.finish(&mut on_delta);
        let mut result = with_images(result, image_use);
        if let Some(call) = stream.call() {
            result.tool_calls.push(call);
            result.text.clear();
            if result.finish_reason == "stop" {
                result.finish_reason = "tool_calls";
            }
        }
        Ok(result)
    }

    /// Continues the token ids `prompt` (no template; `request.response_format`
    /// applies, tools do not); `request.messages` is unused.
    pub async fn complete(&self, prompt: &[u32], request: &Request, on_text: impl FnMut(&str)) -> Result<Generation> {
        if !request.tools.is_empty() {
            let message = "tools need a chat (messages through the chat template), not a raw prompt".into();
            return Err(Error::Shape { op: "request", message });
        }
        let constraint = self.format_constraint(request)?;
        self.run(prompt.into(), request, constraint, on_text).await
    }

    /// The prompt's token ids and image rows from the chat template's text,
    /// where each [`IMAGE_MARK`] stands for the next image of `messages`:
    /// as Phi-3-vision's processor, the text between images is tokenized
    /// piece by piece, each piece after BOS, and an image takes
    /// [`crate::image::image_tokens`] positions. The context is checked
    /// before any image runs through the tower.
    async fn prompt_with_images(
        &self,
        text: &str,
        messages: &[Message],
        images: &[Rgb],
    ) -> Result<(Vec<u32>, Vec<PromptImage>, Option<ImageUse>)> {
        let tokenizer = self.tokenizer()?;
        let shown: Vec<usize> = messages.iter().flat_map(|m| m.images.iter().copied()).collect();
        if shown.is_empty() {
            return Ok((tokenizer.encode(text)?, Vec::new(), None));
        }
        let input = |message: String| Error::Shape { op: "request", message };
        let Some(vision) = &self.vision else {
            return Err(input(format!(
                "this model takes no images ({} in the messages); use a vision model such as Phi-3.5-vision",
                shown.len()
            )));
        };
        if let Some(bad) = shown.iter().find(|&&i| i >= images.len()) {
            return Err(input(match *bad {
                usize::MAX => {
                    "an image_url part reached the engine unresolved (the JavaScript API decodes them)".into()
                }
                i => format!("an image part shows image {i} but the request has {}", images.len()),
            }));
        }
        let pieces: Vec<&str> = text.split(IMAGE_MARK).collect();
        if pieces.len() != shown.len() + 1 {
            return Err(input(format!(
                "the chat template kept {} of the messages' {} images",
                pieces.len() - 1,
                shown.len()
            )));
        }
        let bos = self.decoder.config.bos_token_id;
        let mut pieces_ids = Vec::with_capacity(pieces.len());
        for piece in &pieces {
            pieces_ids.push(bos.into_iter().chain(tokenizer.encode(piece)?).collect::<Vec<u32>>());
        }
        let image_tokens: Vec<usize> = shown.iter().map(|&i| vision.tokens(&images[i])).collect();
        let total = pieces_ids.iter().map(Vec::len).sum::<usize>() + image_tokens.iter().sum::<usize>();
        if total >= self.decoder.capacity {
            return Err(input(format!(
                "the prompt needs {total} tokens, {} of them for its images ({}), but the context holds {}; use fewer or smaller images, or a longer context",
                image_tokens.iter().sum::<usize>(),
                image_tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" + "),
                self.decoder.capacity
            )));
        }
        let mut ids = pieces_ids[0].clone();
        let mut prompt_images = Vec::with_capacity(shown.len());
        let mut used = ImageUse { images: shown.len(), tokens: image_tokens.iter().sum(), ..Default::default() };
        let start = web_time::Instant::now();
        for ((&index, &tokens), piece) in shown.iter().zip(&image_tokens).zip(&pieces_ids[1..]) {
            let fingerprint = images[index].fingerprint();
            let kept = self.image_rows.borrow().iter().find(|(f, _)| *f == fingerprint).map(|(_, rows)| rows.clone());
            let rows = match kept {
                Some(rows) => rows,
                None => {
                    let image = hd_transform(&images[index], vision.config.num_crops);
                    used.crops += image.crops();
                    let rows = Rc::new(vision.embed(&self.backend, &image).await?);
                    let mut kept = self.image_rows.borrow_mut();
                    kept.truncate(IMAGE_ROWS_KEPT - 1);
                    kept.insert(0, (fingerprint, rows.clone()));
                    rows
                }
            };
            prompt_images.push(PromptImage { start: ids.len(), rows, fingerprint });
            ids.extend(std::iter::repeat_n(0, tokens));
            ids.extend_from_slice(piece);
        }
        used.encode_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok((ids, prompt_images, Some(used)))
    }

    /// Positions an image takes in the prompt (None: the model takes no images).
    pub fn image_tokens(&self, image: &Rgb) -> Option<usize> {
        self.vision.as_ref().map(|vision| vision.tokens(image))
    }

    // The session's RefMut is held across awaits on purpose: it is the "one
    // generation at a time" lock, and a second call gets an error from
    // try_borrow_mut, never a panic.
    #[allow(clippy::await_holding_refcell_ref)]
    async fn run(
        &self,
        prompt: Prompt<'_>,
        request: &Request,
        mut constraint: Option<Constraint>,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        self.backend.check()?;
        let tokenizer = self.tokenizer()?;
        let mut session = self.session.try_borrow_mut().map_err(|_| Error::Shape {
            op: "request",
            message: "a generation is already running on this engine; await it or interrupt() it".into(),
        })?;
        self.interrupt.clear();
        let options = self.generate_options(request);
        let (d, c) = (&self.decoder, constraint.as_mut());
        session::generate(&self.backend, d, &mut session, tokenizer, prompt, &options, c, on_text).await
    }

    /// Logits of `ids` as one sequence from position 0, [T, vocab] row-major
    /// (in prefill chunks; LongRoPE as for the whole sequence). The KV cache
    /// is overwritten, so the conversation's is forgotten.
    #[allow(clippy::await_holding_refcell_ref)] // the session lock, as in `complete`
    pub async fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.logits_with_images(ids, &[]).await
    }

    /// `logits` where image `images[k].1` stands at positions `images[k].0..`
    /// (as many as the image takes; the ids there are placeholders): a vision
    /// model's logits for parity checks.
    #[allow(clippy::await_holding_refcell_ref)] // the session lock, as in `complete`
    pub async fn logits_with_images(&self, ids: &[u32], images: &[(usize, Rgb)]) -> Result<Vec<f32>> {
        self.backend.check()?;
        let mut session = self.session.try_borrow_mut().map_err(|_| Error::Shape {
            op: "logits",
            message: "a generation is running on this engine; await it or interrupt() it".into(),
        })?;
        session.reset();
        let d = &self.decoder;
        if ids.is_empty() || ids.len() > d.capacity {
            return Err(Error::Shape {
                op: "logits",
                message: format!("{} token ids; the context takes 1 to {}", ids.len(), d.capacity),
            });
        }
        let mut placed = Vec::with_capacity(images.len());
        if !images.is_empty() {
            let vision = self.vision.as_ref().ok_or_else(|| Error::Shape {
                op: "logits",
                message: "this model takes no images (it has no vision tower)".into(),
            })?;
            for (at, image) in images {
                let rows = vision.embed(&self.backend, &hd_transform(image, vision.config.num_crops)).await?;
                placed.push(PromptImage { start: *at, rows: Rc::new(rows), fingerprint: image.fingerprint() });
            }
        }
        let hidden = d.config.hidden_size;
        session::check_images(&Prompt { ids, images: &placed }, hidden)?;
        let mut rows = Vec::with_capacity(ids.len() * d.config.vocab_size);
        for (i, chunk) in ids.chunks(d.max_tokens).enumerate() {
            let pos = i * d.max_tokens;
            let spliced = session::rows_in(&placed, pos, chunk.len(), hidden);
            let call = d.forward_with_images(&self.backend, chunk, &spliced, pos, ids.len(), Logits::All);
            rows.extend(call.await?);
        }
        Ok(rows)
    }

    /// Ends the running generation at its next token (finish_reason "abort").
    pub fn interrupt(&self) {
        self.interrupt.set();
    }

    /// Forgets the conversation's KV cache.
    pub fn reset(&self) -> Result<()> {
        let mut session = self
            .session
            .try_borrow_mut()
            .map_err(|_| Error::Shape { op: "request", message: "a generation is running".into() })?;
        session.reset();
        Ok(())
    }

    /// The engine as JSON: backend (and why), adapter, features, context,
    /// KV cache, sizes.
    pub fn info(&self) -> serde_json::Value {
        let d = &self.decoder;
        let mut info = backend_info(&self.backend, &self.backend_reason);
        let memory = d.memory();
        info["contextLength"] = d.capacity.into();
        info["kvCache"] = d.kv_format().name().into();
        info["architecture"] = format!("{:?}", d.config.architecture).into();
        info["weightBytes"] = d.weight_bytes().into();
        info["vision"] = match &self.vision {
            Some(v) => serde_json::json!({ "numCrops": v.config.num_crops, "weightBytes": v.weight_bytes() }),
            None => serde_json::Value::Null,
        };
        if matches!(self.backend, Backend::Cpu(_)) {
            info["memoryBytes"] = (memory.weights + memory.kv_cache).into();
        }
        info
    }
}

/// `result` with its prompt's images: the tower's time counts in the time to first token.
fn with_images(mut result: Generation, images: Option<ImageUse>) -> Generation {
    if let Some(images) = &images {
        result.stats.ttft_ms += images.encode_ms;
    }
    result.stats.images = images;
    result
}

/// Positions of context for a request of `asked` (0: the default cap).
fn context_for(config: &ModelConfig, asked: usize) -> usize {
    let max = config.max_position_embeddings;
    match asked {
        0 => max.min(DEFAULT_CONTEXT),
        n => n.min(max),
    }
}

/// What wasm32 can address: 4 GiB (65536 pages of 64 KiB).
pub const WASM32_MEMORY: u64 = 4 << 30;

/// Fails with [`Error::WasmMemory`] when the CPU backend could not hold the
/// package's weights plus a KV cache of `context` positions (0: the default)
/// with 10 % to spare (activations, the tokenizer, the allocator) in wasm32's
/// address space: checked before any download (`pkg/core.js`) and at load.
pub fn check_wasm_memory(manifest: &Manifest, context: usize, kv: KvFormat) -> Result<()> {
    let c = &manifest.config;
    let context = context_for(c, context);
    let weights: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
    let kv_cache = (2 * c.num_layers * context * kv.row_bytes(c.num_kv_heads * c.head_dim)) as u64;
    let needed = weights + kv_cache;
    match needed + needed / 10 <= WASM32_MEMORY {
        true => Ok(()),
        false => Err(Error::WasmMemory { needed, weights, kv_cache, limit: WASM32_MEMORY }),
    }
}

/// What describes a backend in `info()` / `stats()`: its name, why it runs,
/// and the adapter's features or the CPU's threads and instruction set.
pub fn backend_info(backend: &Backend, reason: &str) -> serde_json::Value {
    match backend {
        Backend::Gpu(g) => serde_json::json!({
            "backend": "webgpu",
            "backendReason": reason,
            "adapter": g.gpu.adapter.name,
            "graphicsApi": g.gpu.adapter.backend,
            "shaderF16": g.gpu.features.shader_f16,
            "subgroups": g.gpu.features.subgroups,
            "gpuBytes": g.gpu.storage_bytes(),
            "pipelines": g.kernels.compiled(),
        }),
        Backend::Cpu(c) => serde_json::json!({
            "backend": "cpu",
            "backendReason": reason,
            "threads": c.threads,
            "simd": c.simd,
        }),
    }
}

/// Whether the CPU backend runs `config`'s architecture.
pub fn cpu_runs(config: &ModelConfig) -> bool {
    matches!(
        config.architecture,
        Architecture::Phi3 | Architecture::Phi3Small | Architecture::Llama | Architecture::Bert
    )
}

/// The backend `options` ask for, and why it was chosen. `auto` takes WebGPU
/// on a hardware adapter, the CPU when there is no adapter or only a
/// software rasterizer (lavapipe, SwiftShader: the CPU backend is many times
/// faster than WGSL emulated on the same cores), unless the CPU backend does
/// not run the architecture.
pub async fn open_backend(options: &EngineOptions, config: &ModelConfig) -> Result<(Backend, String)> {
    let cpu = || Backend::Cpu(Cpu::new(options.threads));
    let gpu = |gpu: Gpu| {
        let kernels = Kernels::new(&gpu);
        Backend::Gpu(GpuBackend { gpu, kernels })
    };
    let architecture = format!("{:?}", config.architecture);
    Ok(match options.backend {
        BackendChoice::Cpu => (cpu(), "asked for".into()),
        BackendChoice::Gpu => (gpu(Gpu::new(&options.gpu).await?), "asked for".into()),
        BackendChoice::Auto => match Gpu::new(&options.gpu).await {
            Ok(adapter) if !adapter.adapter.is_software() => (gpu(adapter), "a hardware WebGPU adapter".into()),
            Ok(adapter) if cpu_runs(config) => {
                let name = match adapter.adapter.name.as_str() {
                    "" => String::new(),
                    name => format!(" ({name})"),
                };
                (cpu(), format!("the only WebGPU adapter is a software rasterizer{name}"))
            }
            Ok(adapter) => {
                (gpu(adapter), format!("a software WebGPU adapter: the CPU backend does not run {architecture} yet"))
            }
            Err(e) if cpu_runs(config) => (cpu(), format!("no WebGPU adapter ({e})")),
            Err(e) => return Err(e),
        },
    })
}
