//! The only wasm-bindgen file: the engine as JavaScript sees it. The npm
//! package's worker (pkg/worker.js) fetches and caches shards and hands this
//! module a reader for them; everything else is the native engine unchanged.
//! Every error reaches JavaScript as an `Error` with a `name` and a message;
//! nothing here unwraps.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use crate::backend::{Backend, BackendChoice};
use crate::engine::{self, EngineOptions, Request};
use crate::error::Error;
use crate::formats::encode::ConvertOptions;
use crate::formats::gguf::Gguf;
use crate::formats::gguf_import::GgufImport;
use crate::formats::hf_import::HfImport;
use crate::formats::package::{parse_manifest, ChunkReader, Manifest, Shard, ShardSource};
use crate::formats::safetensors;
use crate::gpu::{GpuOptions, KvFormat};
use crate::model::Encoder;
use crate::quant::WeightFormat;
use crate::structured::tools::Delta;
use crate::tokenizer::Tokenizer;

// The threaded build's `initThreadPool(n)`: starts n Web Workers on this
// module and memory as rayon's global pool (the CPU backend's threads).
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

#[wasm_bindgen(start)]
fn start() {
    // A bug that still panics shows its message and location, not `unreachable`.
    console_error_panic_hook::set_once();
}

fn js_error(e: Error) -> JsValue {
    let error = js_sys::Error::new(&e.to_string());
    error.set_name(e.js_name());
    error.into()
}

fn input_error(message: String) -> JsValue {
    js_error(Error::Shape { op: "request", message })
}

/// `{width, height, data: Uint8Array of RGBA}` as an RGB image (transparency on white).
fn rgba_image(value: &JsValue) -> Result<crate::image::Rgb, JsValue> {
    let field = |name: &str| js_sys::Reflect::get(value, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED);
    let size = |name: &str| field(name).as_f64().filter(|v| *v >= 0.0 && v.fract() == 0.0).map(|v| v as usize);
    let (Some(width), Some(height)) = (size("width"), size("height")) else {
        return Err(js_error(Error::Image { message: "an image needs whole-number width and height".into() }));
    };
    let data = field("data");
    if !data.is_instance_of::<js_sys::Uint8Array>() && !data.is_instance_of::<js_sys::Uint8ClampedArray>() {
        return Err(js_error(Error::Image { message: "an image's data must be a Uint8Array of RGBA pixels".into() }));
    }
    let bytes = js_sys::Uint8Array::new(&data).to_vec();
    crate::image::Rgb::from_rgba(width, height, &bytes).map_err(js_error)
}

/// Shard bytes from JavaScript: `read(shard, offset, length)` returns a
/// `Promise<Uint8Array>` (the worker serves it from Cache Storage).
struct JsShards {
    manifest: Manifest,
    read: Function,
    /// The reader's own error (a named JS Error such as ShardError), passed
    /// on to the caller unchanged.
    failure: RefCell<Option<JsValue>>,
}

impl ShardSource for JsShards {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    async fn read_bytes(&self, shard: usize, offset: u64, len: u64) -> crate::Result<Vec<u8>> {
        let failed = |message: String| Error::Io { path: format!("shard {shard}"), message };
        let args = (JsValue::from(shard as u32), JsValue::from(offset as f64), JsValue::from(len as f64));
        let keep = |e: JsValue| {
            let error = failed(describe(&e));
            self.failure.borrow_mut().get_or_insert(e);
            error
        };
        let promise = self.read.call3(&JsValue::NULL, &args.0, &args.1, &args.2).map_err(keep)?;
        let value = JsFuture::from(Promise::from(promise)).await.map_err(keep)?;
        let bytes =
            value.dyn_into::<Uint8Array>().map_err(|_| failed("the reader did not return a Uint8Array".into()))?;
        if bytes.length() as u64 != len {
            return Err(failed(format!("the reader returned {} bytes, {len} were asked for", bytes.length())));
        }
        Ok(bytes.to_vec())
    }

    fn reader(&self) -> Option<Rc<dyn ChunkReader>> {
        let (manifest, read) = (self.manifest.clone(), self.read.clone());
        Some(Rc::new(JsShards { manifest, read, failure: RefCell::new(None) }))
    }
}

fn describe(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}

/// The parsed manifest and its tokenizer.
fn open(manifest: &str, tokenizer: &[u8]) -> Result<(Manifest, Tokenizer), JsValue> {
    let manifest = parse_manifest(manifest).map_err(js_error)?;
    let tokenizer = Tokenizer::from_bytes(tokenizer, &manifest).map_err(js_error)?;
    Ok((manifest, tokenizer))
}

#[wasm_bindgen]
extern "C" {
    /// The DOM's MessageChannel (in windows and workers), declared here
    /// rather than through web-sys for the three members used.
    type MessageChannel;
    #[wasm_bindgen(constructor)]
    fn new() -> MessageChannel;
    #[wasm_bindgen(method, getter)]
    fn port1(this: &MessageChannel) -> MessagePort;
    #[wasm_bindgen(method, getter)]
    fn port2(this: &MessageChannel) -> MessagePort;
    type MessagePort;
    #[wasm_bindgen(method, setter)]
    fn set_onmessage(this: &MessagePort, handler: &Function);
    #[wasm_bindgen(method, js_name = postMessage)]
    fn post_message(this: &MessagePort, message: &JsValue);
}

/// Lets the event loop run its queued tasks (a worker's `interrupt`
/// message) before resuming: the CPU backend computes without awaiting
/// anything, so without this a generation could not be interrupted. A
/// message to oneself is a task that, unlike setTimeout(0), is not clamped to
/// 4 ms.
pub(crate) async fn yield_to_event_loop() {
    let promise = Promise::new(&mut |resolve, _reject| {
        let channel = MessageChannel::new();
        channel.port1().set_onmessage(&resolve);
        channel.port2().post_message(&JsValue::NULL);
    });
    let _ = JsFuture::from(promise).await;
}

/// `portable` avoids shader-f16 and subgroups.
fn gpu_options(portable: bool) -> GpuOptions {
    GpuOptions { allow_f16: !portable, allow_subgroups: !portable, ..Default::default() }
}

/// A loaded model: `Engine.create(...)`, then `generate(...)` per request.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<engine::Engine>,
    info: String,
}

#[wasm_bindgen]
impl Engine {
    /// Loads a model. `manifest`: model.json's text; `tokenizer`: tokenizer.json's
    /// bytes; `read(shard, offset, length) → Promise<Uint8Array>`; `context_length`
    /// 0 means the model's maximum capped at 4096; `kv_cache` "f16", "q8" or
    /// "f32"; `portable` avoids shader-f16 and subgroups; `gpu_memory_budget`
    /// bytes of weights on the GPU (0: all of them; a mixture of experts over
    /// it caches its experts and reads the others through `read`);
    /// `prefill_chunk` tokens per prefill call (0: 64); `backend` "auto",
    /// "webgpu" or "cpu"; `threads` the CPU backend's (0: what the page has).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        manifest: String,
        tokenizer: Vec<u8>,
        read: Function,
        context_length: u32,
        kv_cache: String,
        portable: bool,
        gpu_memory_budget: f64,
        prefill_chunk: u32,
        backend: String,
        threads: u32,
    ) -> Promise {
        future_to_promise(async move {
            let backend = parse_backend(&backend)?;
            let kv_cache = KvFormat::parse(&kv_cache).ok_or_else(|| {
                js_error(Error::Unsupported {
                    what: format!("kvCache \"{kv_cache}\""),
                    supported: "f16, q8, f32".into(),
                })
            })?;
            let (manifest, tokenizer) = open(&manifest, &tokenizer)?;
            let shards = JsShards { manifest, read, failure: RefCell::new(None) };
            let options = EngineOptions {
                context: context_length as usize,
                kv_cache,
                gpu: gpu_options(portable),
                gpu_memory: (gpu_memory_budget >= 1.0).then_some(gpu_memory_budget as u64),
                prefill_chunk: prefill_chunk as usize,
                backend,
                threads: (threads > 0).then_some(threads as usize),
            };
            let engine = match engine::Engine::load(&shards, Some(tokenizer), &options).await {
                Ok(engine) => engine,
                Err(e) => return Err(shards.failure.take().unwrap_or_else(|| js_error(e))),
            };
            let info = engine.info().to_string();
            Ok(Engine { inner: Rc::new(engine), info }.into())
        })
    }

    /// JSON: adapter, features, context length, weight and GPU bytes.
    pub fn info(&self) -> String {
        self.info.clone()
    }

    /// Runs one chat request (JSON, OpenAI-shaped: messages, max_tokens,
    /// temperature, top_p, top_k, repetition_penalty, seed, stop,
    /// response_format, tools, tool_choice; absent fields take
    /// `engine::Request`'s defaults). `on_text` receives each text delta (a
    /// string) or tool-call delta (an object). Resolves to JSON {text,
    /// tokens, finish_reason, tool_calls, stats}.
    /// The KV cache of the previous request's shared prefix is reused.
    /// `images`: the request's images, each `{width, height, data}` with
    /// `data` a Uint8Array of RGBA pixels; a content part `{type: "image",
    /// index}` shows `images[index]` (pkg/core.js decodes `image_url` parts
    /// into these).
    pub fn generate(&self, request: String, on_text: Function, images: Option<js_sys::Array>) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let request: Request =
                serde_json::from_str(&request).map_err(|e| input_error(format!("malformed request: {e}")))?;
            let images: Vec<crate::image::Rgb> = match images {
                Some(list) => list.iter().map(|image| rgba_image(&image)).collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            let on_delta = |delta: Delta| {
                // Text as a string, a tool call's piece as an object in the
                // shape of OpenAI's delta.tool_calls[i].
                let value = match delta {
                    Delta::Text(text) => JsValue::from_str(text),
                    Delta::ToolCall(call) => serde_json::to_string(call)
                        .ok()
                        .and_then(|json| js_sys::JSON::parse(&json).ok())
                        .unwrap_or(JsValue::NULL),
                };
                // A throwing callback must not break the generation.
                let _ = on_text.call1(&JsValue::NULL, &value);
            };
            let result = inner.chat_with_images(&request, &images, on_delta).await.map_err(js_error)?;
            serde_json::to_string(&result).map(JsValue::from).map_err(|e| input_error(e.to_string()))
        })
    }

    /// Token ids of `text` as a prompt is encoded (special tokens written in
    /// the text are recognised; no bos is added): a Uint32Array.
    pub fn tokenize(&self, text: String) -> Result<Vec<u32>, JsValue> {
        self.inner.tokenizer().and_then(|t| t.encode(&text)).map_err(js_error)
    }

    /// Logits of the token ids `ids` as one sequence from position 0: a
    /// Float32Array [T * vocab], row-major. Forgets the conversation's KV cache.
    /// `images` (a vision model): `{at, width, height, data}` each, the image's
    /// rows at positions at.. (RGBA `data`, as `generate` takes).
    pub fn logits(&self, ids: Vec<u32>, images: Option<js_sys::Array>) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let mut placed = Vec::new();
            for image in images.map(|list| list.to_vec()).unwrap_or_default() {
                let at = js_sys::Reflect::get(&image, &JsValue::from_str("at")).ok().and_then(|v| v.as_f64());
                let at =
                    at.filter(|v| *v >= 0.0).ok_or_else(|| input_error("an image needs its position `at`".into()))?;
                placed.push((at as usize, rgba_image(&image)?));
            }
            let rows = inner.logits_with_images(&ids, &placed).await.map_err(js_error)?;
            Ok(js_sys::Float32Array::from(&rows[..]).into())
        })
    }

    /// JSON: what the expert caches did since loading ({experts_per_layer,
    /// resident_per_layer, lookups, hits, uploaded_bytes}), or null when
    /// every expert is resident.
    #[wasm_bindgen(js_name = expertCache)]
    pub fn expert_cache(&self) -> String {
        serde_json::to_string(&self.inner.decoder.expert_stats()).unwrap_or_else(|_| "null".into())
    }

    /// Ends the running generation at its next token (finish_reason "abort").
    pub fn interrupt(&self) {
        self.inner.interrupt();
    }

    /// Destroys the GPU device, as a driver reset would: every later call fails
    /// with a DeviceLostError. For testing an app's recovery path (like WebGL's
    /// WEBGL_lose_context).
    #[wasm_bindgen(js_name = loseDevice)]
    pub fn lose_device(&self) {
        if let Backend::Gpu(g) = &self.inner.backend {
            g.gpu.device.destroy();
        }
    }

    /// Forgets the conversation's KV cache.
    #[wasm_bindgen(js_name = resetChat)]
    pub fn reset_chat(&self) -> Result<(), JsValue> {
        self.inner.reset().map_err(js_error)
    }
}

/// A loaded embedding model (BERT family): `Embedder.create(...)`, then
/// `embed(texts)` per request.
#[wasm_bindgen]
pub struct Embedder {
    inner: Rc<EmbedderInner>,
    info: String,
}

struct EmbedderInner {
    backend: Backend,
    encoder: Encoder,
    tokenizer: Tokenizer,
}

#[wasm_bindgen]
impl Embedder {
    /// Loads an encoder package; arguments as for `Engine.create`.
    pub fn create(
        manifest: String,
        tokenizer: Vec<u8>,
        read: Function,
        portable: bool,
        backend: String,
        threads: u32,
    ) -> Promise {
        future_to_promise(async move {
            let (manifest, tokenizer) = open(&manifest, &tokenizer)?;
            let options = EngineOptions {
                gpu: gpu_options(portable),
                backend: parse_backend(&backend)?,
                threads: (threads > 0).then_some(threads as usize),
                ..Default::default()
            };
            let (backend, reason) = engine::open_backend(&options, &manifest.config).await.map_err(js_error)?;
            let shards = JsShards { manifest, read, failure: RefCell::new(None) };
            let encoder = match Encoder::load_from(&backend, &shards, 4096).await {
                Ok(encoder) => encoder,
                Err(e) => return Err(shards.failure.take().unwrap_or_else(|| js_error(e))),
            };
            let mut info = engine::backend_info(&backend, &reason);
            info["architecture"] = format!("{:?}", encoder.config.architecture).into();
            info["dimensions"] = encoder.config.hidden_size.into();
            info["maxSeqLength"] = encoder.max_seq_length().into();
            let info = info.to_string();
            let inner = EmbedderInner { backend, encoder, tokenizer };
            Ok(Embedder { inner: Rc::new(inner), info }.into())
        })
    }

    /// JSON: adapter, dimensions, longest input, GPU bytes.
    pub fn info(&self) -> String {
        self.info.clone()
    }

    /// `texts`: a JSON array of strings. Resolves to JSON {embeddings:
    /// [[...]], tokens: [n per text]}; inputs longer than the model's
    /// max_seq_length are truncated, as sentence-transformers does.
    pub fn embed(&self, texts: String) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let texts: Vec<String> =
                serde_json::from_str(&texts).map_err(|e| input_error(format!("input must be strings: {e}")))?;
            inner.backend.check().map_err(js_error)?;
            let max = inner.encoder.max_seq_length();
            let ids = inner.tokenizer.encode_for_embedding(&texts, max).map_err(js_error)?;
            let embeddings = inner.encoder.embed(&inner.backend, &ids).await.map_err(js_error)?;
            let tokens: Vec<usize> = ids.iter().map(Vec::len).collect();
            let json = serde_json::json!({ "embeddings": embeddings, "tokens": tokens });
            Ok(JsValue::from(json.to_string()))
        })
    }

    /// Token ids of `text` without the model's [CLS] / [SEP]: a Uint32Array.
    pub fn tokenize(&self, text: String) -> Result<Vec<u32>, JsValue> {
        self.inner.tokenizer.encode(&text).map_err(js_error)
    }

    /// Splits `text` into overlapping windows of at most `max_tokens` tokens:
    /// JSON [{start, end, tokens}], offsets in UTF-16 code units.
    pub fn chunk(&self, text: String, max_tokens: u32, overlap: u32) -> Result<String, JsValue> {
        let max = (max_tokens as usize).min(self.inner.encoder.max_seq_length());
        let chunks = self.inner.tokenizer.chunk(&text, max, overlap as usize).map_err(js_error)?;
        serde_json::to_string(&chunks).map_err(|e| input_error(e.to_string()))
    }

    /// Destroys the GPU device (see `Engine.loseDevice`).
    #[wasm_bindgen(js_name = loseDevice)]
    pub fn lose_device(&self) {
        if let Backend::Gpu(g) = &self.inner.backend {
            g.gpu.device.destroy();
        }
    }
}

/// Fails with a ModelTooLargeError when the CPU backend could not hold the
/// package (`manifest`: model.json's text) with a KV cache of
/// `context_length` positions stored as `kv_cache`: called before
/// downloading when the CPU backend is certain to run it.
/// Whether the CPU backend runs the package's architecture (pkg/core.js
/// loads the threaded build only for a model that will run on the CPU).
#[wasm_bindgen(js_name = cpuBackendRuns)]
pub fn cpu_backend_runs(manifest: String) -> Result<bool, JsValue> {
    let manifest = parse_manifest(&manifest).map_err(js_error)?;
    Ok(engine::cpu_runs(&manifest.config))
}

#[wasm_bindgen(js_name = checkCpuMemory)]
pub fn check_cpu_memory(manifest: String, context_length: u32, kv_cache: String) -> Result<(), JsValue> {
    let manifest = parse_manifest(&manifest).map_err(js_error)?;
    let kv = KvFormat::parse(&kv_cache).unwrap_or_default();
    engine::check_wasm_memory(&manifest, context_length as usize, kv).map_err(js_error)
}

fn parse_backend(name: &str) -> Result<BackendChoice, JsValue> {
    BackendChoice::parse(name).ok_or_else(|| {
        js_error(Error::Unsupported { what: format!("backend \"{name}\""), supported: "auto, webgpu, cpu".into() })
    })
}

fn parse_quant(quant: &str) -> Result<Option<WeightFormat>, JsValue> {
    match quant {
        "" => Ok(None),
        name => WeightFormat::parse(name).map(Some).ok_or_else(|| {
            js_error(Error::Unsupported {
                what: format!("quant \"{name}\""),
                supported: "q4_0, q4_1, q8_0, f16, f32".into(),
            })
        }),
    }
}

/// An import's plan as pkg/importer.js reads it: steps [offset, length,
/// outputOffset, outputLength, file index].
fn plan_json(steps: Vec<[u64; 5]>, files: Vec<String>, total_bytes: u64) -> String {
    serde_json::json!({
        "steps": steps,
        "files": files,
        "totalBytes": total_bytes,
        "shardBytes": ConvertOptions::default().shard_bytes,
        "sourceBytes": steps.iter().map(|s| s[1]).sum::<u64>(),
    })
    .to_string()
}

/// The shard list pkg/importer.js made, as the manifest keeps it.
fn parse_shards(shards: &str) -> Result<Vec<Shard>, JsValue> {
    serde_json::from_str(shards).map_err(|e| input_error(format!("malformed shard list: {e}")))
}

/// A GGUF turned into a package in the browser: pkg/importer.js reads the
/// byte range of each step (by range request or `File.slice`), runs it here
/// and stores the output as shards; see `formats::gguf_import`.
#[wasm_bindgen]
pub struct GgufImporter {
    inner: GgufImport,
}

#[wasm_bindgen]
impl GgufImporter {
    /// The import of the GGUF whose first bytes are `prefix` (`file_len`
    /// bytes in all; `source` its URL or file name, for errors and the
    /// manifest). Undefined while the header runs past `prefix`: read more
    /// and call again. `quant`: a format for every matrix, or "" for the
    /// GGUF's own (the defaults of `phi-web convert`).
    pub fn open(prefix: &[u8], file_len: f64, source: String, quant: String) -> Result<Option<GgufImporter>, JsValue> {
        let quant = parse_quant(&quant)?;
        let Some(gguf) = Gguf::from_prefix(prefix, file_len as u64, &source).map_err(js_error)? else {
            return Ok(None);
        };
        let options = ConvertOptions { quant, ..ConvertOptions::default() };
        let inner = GgufImport::new(gguf, &source, &options).map_err(js_error)?;
        Ok(Some(GgufImporter { inner }))
    }

    /// JSON {steps: [[offset, length, outputOffset, outputLength, 0]],
    /// files: [source], totalBytes, shardBytes, sourceBytes}: what each step
    /// reads from the file and where its output goes in the package's byte
    /// stream (shards of shardBytes).
    pub fn plan(&self) -> String {
        let steps = self.inner.steps.iter().map(|s| [s.offset, s.length, s.output_offset, s.output_length, 0]);
        plan_json(steps.collect(), vec![String::new()], self.inner.total_bytes)
    }

    /// Runs step `index` on the `bytes` it reads; returns its output.
    pub fn run(&mut self, index: u32, bytes: &[u8]) -> Result<Vec<u8>, JsValue> {
        self.inner.run(index as usize, bytes).map_err(js_error)
    }

    /// The vocabulary as tokenizer.json text.
    pub fn tokenizer(&self) -> Result<String, JsValue> {
        self.inner.tokenizer_json().map_err(js_error)
    }

    /// model.json's text once every step ran; `shards`: JSON [{file, bytes,
    /// sha256}]; `tokenizer`: what `tokenizer()` gave, if it was stored.
    pub fn manifest(&mut self, shards: String, tokenizer: Option<String>) -> Result<String, JsValue> {
        let manifest = self.inner.manifest(parse_shards(&shards)?, tokenizer.is_some()).map_err(js_error)?;
        serde_json::to_string(&manifest).map_err(|e| input_error(e.to_string()))
    }

    /// JSON [string]: what the import decided that a user may want to know.
    pub fn warnings(&self) -> String {
        serde_json::to_string(&self.inner.warnings).unwrap_or_else(|_| "[]".into())
    }
}

/// A Hugging Face folder (config.json, safetensors, tokenizer files) turned
/// into a package in the browser; see `formats::hf_import`. pkg/importer.js
/// fetches the small files and each safetensors header, then runs the steps.
#[wasm_bindgen]
pub struct HfImporter {
    /// The folder's small files that exist, by name.
    files: std::collections::BTreeMap<String, String>,
    source: String,
    options: ConvertOptions,
    tensors: std::collections::BTreeMap<String, safetensors::Tensor>,
    /// Safetensors file names, in the order the plan numbers them.
    names: Vec<String>,
    inner: Option<HfImport>,
}

#[wasm_bindgen]
impl HfImporter {
    /// `source`: the folder's URL; `files`: JSON {name: text} of the small
    /// files found there; `quant` as for `GgufImporter.open`.
    #[wasm_bindgen(constructor)]
    pub fn new(source: String, files: String, quant: String) -> Result<HfImporter, JsValue> {
        let files = serde_json::from_str(&files).map_err(|e| input_error(format!("malformed file map: {e}")))?;
        let options = ConvertOptions { quant: parse_quant(&quant)?, ..ConvertOptions::default() };
        let (tensors, names) = (Default::default(), Vec::new());
        Ok(HfImporter { files, source, options, tensors, names, inner: None })
    }

    /// Adds a safetensors file: its name in the folder, length, and the JSON
    /// header (the bytes after its first 8).
    #[wasm_bindgen(js_name = addSafetensors)]
    pub fn add_safetensors(&mut self, name: String, file_len: f64, header: &[u8]) -> Result<(), JsValue> {
        let path = std::path::Path::new(&name);
        for tensor in safetensors::parse_header(header, file_len as u64, path).map_err(js_error)? {
            self.tensors.insert(tensor.name.clone(), tensor);
        }
        self.names.push(name);
        Ok(())
    }

    /// Plans the import once every file is added; JSON as `GgufImporter.plan`,
    /// with `files` the safetensors names the steps' file indices refer to.
    pub fn plan(&mut self) -> Result<String, JsValue> {
        let files = |name: &str| Ok(self.files.get(name).cloned());
        let folder = self.source.trim_end_matches('/').rsplit('/').next().unwrap_or("model").to_string();
        let inner = HfImport::new(&folder, &self.source, &self.tensors, &files, &self.options).map_err(js_error)?;
        let index = |file: &str| self.names.iter().position(|n| n == file).unwrap_or(0) as u64;
        let steps = inner.steps.iter().map(|s| [s.offset, s.length, s.output_offset, s.output_length, index(&s.file)]);
        let json = plan_json(steps.collect(), self.names.clone(), inner.total_bytes);
        self.inner = Some(inner);
        Ok(json)
    }

    fn import(&mut self) -> Result<&mut HfImport, JsValue> {
        self.inner.as_mut().ok_or_else(|| input_error("HfImporter.plan() must come first".into()))
    }

    /// Runs step `index` on the `bytes` it reads; returns its output.
    pub fn run(&mut self, index: u32, bytes: &[u8]) -> Result<Vec<u8>, JsValue> {
        self.import()?.run(index as usize, bytes).map_err(js_error)
    }

    /// tokenizer.json's text (the folder's own, or built from Phi-3-small's
    /// tiktoken ranks); undefined when the folder has none.
    pub fn tokenizer(&mut self) -> Result<Option<String>, JsValue> {
        let files = self.files.clone();
        let read = |name: &str| Ok(files.get(name).cloned());
        self.import()?.tokenizer_json(&read).map_err(js_error)
    }

    /// model.json's text once every step ran; `shards` as for `GgufImporter.manifest`.
    pub fn manifest(&mut self, shards: String, tokenizer: Option<String>) -> Result<String, JsValue> {
        let shards = parse_shards(&shards)?;
        let files = self.files.clone();
        let read = |name: &str| Ok(files.get(name).cloned());
        let manifest = self.import()?.manifest(shards, tokenizer.as_deref(), &read).map_err(js_error)?;
        serde_json::to_string(&manifest).map_err(|e| input_error(e.to_string()))
    }

    /// JSON [string], as for `GgufImporter.warnings`.
    pub fn warnings(&self) -> String {
        let warnings = self.inner.as_ref().map(|i| i.warnings.clone()).unwrap_or_default();
        serde_json::to_string(&warnings).unwrap_or_else(|_| "[]".into())
    }
}
