// The engine in whatever context runs it (the worker, or the page with
// `worker: false`): fetch the manifest and tokenizer, stream the shards into
// the wasm engine, run requests. index.js talks to this through worker.js.

import { importModel } from "./importer.js";
import { fetchFile, fetchManifest, MemoryStore, namedError, openStore, ShardStore, sourceKind } from "./loader.js";

// The two wasm builds, each loaded once per context when first needed:
// "single" (pkg/wasm: WebGPU, the one-thread CPU backend, importers) and
// "threads" (pkg/wasm-threads: shared memory, the CPU backend's rayon pool
// on Web Workers, started once with the first engine's thread count).
const builds = {};

function wasmBuild(kind, threads = 1) {
  builds[kind] ??= (async () => {
    const bindings = kind === "threads" ? await import("./wasm-threads/phi_web.js") : await import("./wasm/phi_web.js");
    const exports = await bindings.default();
    if (kind === "threads") await bindings.initThreadPool(threads);
    return { bindings, exports };
  })();
  builds[kind].catch(() => delete builds[kind]);
  return builds[kind];
}

/**
 * How many threads the CPU backend can have here, and why: more than one
 * needs SharedArrayBuffer (a cross-origin isolated page) and a Worker (the
 * engine's thread blocks while the pool works; a page's main thread may not).
 */
function threadPlan(threads) {
  if (threads === 1) return { threads: 1, reason: "asked for" };
  if (!(typeof crossOriginIsolated !== "undefined" && crossOriginIsolated)) {
    return {
      threads: 1,
      reason: "the page is not cross-origin isolated: serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp for threads",
    };
  }
  if (typeof WorkerGlobalScope === "undefined") {
    return { threads: 1, reason: "the engine runs on the page's main thread (worker: false), which cannot wait for a thread pool" };
  }
  if (threads > 0) return { threads, reason: "asked for" };
  const cores = Math.max(1, navigator.hardwareConcurrency || 1);
  return { threads: cores, reason: `one per core (navigator.hardwareConcurrency: ${cores})` };
}

/** A software rasterizer (SwiftShader, llvmpipe, WARP): "auto" runs such models on the CPU. */
function isSoftwareAdapter(adapter) {
  const info = adapter.info ?? {};
  if (info.isFallbackAdapter || adapter.isFallbackAdapter) return true;
  return /swiftshader|llvmpipe|lavapipe|warp/i.test([info.vendor, info.architecture, info.device, info.description].join(" "));
}

/** Rebuilds a JS Error from anything the wasm side threw. */
function asError(e) {
  if (e instanceof Error) return e;
  return namedError("PhiWebError", String(e));
}

/**
 * `source`: a package's model.json URL; or a GGUF's URL, a GGUF File/Blob or
 * a Hugging Face folder's URL (ending in "/"), converted into a package in
 * the cache first (importer.js).
 */
export async function loadEngine(
  source,
  { cache = "cache-api", contextLength = 0, kvCache = "f16", portable = false, gpuMemoryBudget = 0, prefillChunk = 0, quant = "", backend = "auto", threads = 0, onProgress = () => {} } = {},
) {
  const hasWebGPU = typeof navigator !== "undefined" && !!navigator.gpu;
  if (backend === "webgpu" && !hasWebGPU) {
    throw namedError("NoWebGPUError", "this browser has no WebGPU (navigator.gpu is missing); use a recent Chrome or Edge, enable WebGPU, or pass backend: \"auto\" or \"cpu\"");
  }
  // Without navigator.gpu or without an adapter, "auto" is the CPU backend
  // (decided here so the memory check below runs before any download); over
  // an adapter the engine decides (a software rasterizer also means the CPU).
  const adapter = backend === "auto" && hasWebGPU ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  if (backend === "auto" && !adapter) backend = "cpu";
  const { checkCpuMemory, cpuBackendRuns, GgufImporter, HfImporter } = (await wasmBuild("single")).bindings;
  const started = performance.now();
  let manifest, baseUrl;
  let imported = { networkBytes: 0, warnings: [] };
  // An imported GGUF's or folder's package lives in the cache (in memory for cache: "none").
  const kind = sourceKind(source);
  const packageStore = kind !== "package" && cache === "none" ? new MemoryStore() : openStore(cache);
  if (kind !== "package") {
    imported = await importModel(source, { store: packageStore, quant, onProgress, wasm: { GgufImporter, HfImporter } });
    ({ manifest, baseUrl } = imported);
  } else {
    ({ manifest, baseUrl } = await fetchManifest(source, { cache }));
  }
  if (!manifest.tokenizer) throw namedError("ModelFormatError", `${baseUrl}: the package has no tokenizer, so it cannot chat`);
  // On the CPU backend the model lives in wasm32's 4 GiB: refuse one that
  // cannot fit before downloading it (the engine checks again: it makes the
  // final "auto" choice).
  let onCpu;
  try {
    onCpu = backend === "cpu" || (backend === "auto" && isSoftwareAdapter(adapter) && cpuBackendRuns(JSON.stringify(manifest)));
    if (onCpu) checkCpuMemory(JSON.stringify(manifest), contextLength, kvCache);
  } catch (e) {
    throw asError(e);
  }
  // A model on the CPU backend gets the threaded build where the page allows
  // threads (and the single-threaded one, saying why, where it does not or
  // the threaded build fails to start).
  let plan = onCpu
    ? threadPlan(threads)
    : { threads: 1, reason: "the engine chose the CPU backend itself, after the single-threaded build was loaded" };
  let build = await wasmBuild("single");
  if (plan.threads > 1) {
    try {
      build = await wasmBuild("threads", plan.threads);
    } catch (e) {
      plan = { threads: 1, reason: `the threaded build did not start (${e?.message ?? e})` };
    }
  }
  const { Embedder, Engine } = build.bindings;
  const tokenizer = await fetchFile(baseUrl, manifest.tokenizer, manifest, { cache, store: packageStore });
  const store = new ShardStore(manifest, baseUrl, { cache, store: packageStore, onProgress });
  await store.checkQuota();
  store.report();
  const read = (shard, offset, length) => store.read(shard, offset, length);
  // An encoder package (BERT) makes an embedding engine; anything else a chat engine.
  const embedding = manifest.config.architecture === "bert";
  let engine;
  try {
    engine = embedding
      ? await Embedder.create(JSON.stringify(manifest), tokenizer, read, portable, backend, threads)
      : await Engine.create(JSON.stringify(manifest), tokenizer, read, contextLength, kvCache, portable, gpuMemoryBudget, prefillChunk, backend, threads);
  } catch (e) {
    throw asError(e);
  }
  store.progress.phase = "ready";
  store.progress.loadedBytes = store.progress.totalBytes;
  store.report();
  // wgpu's WebGPU backend reports no adapter info; ask the browser directly.
  const info = JSON.parse(engine.info());
  const adapterInfo =
    info.backend === "webgpu" ? await navigator.gpu.requestAdapter().then((a) => a?.info).catch(() => undefined) : undefined;
  return new LocalEngine(engine, embedding, manifest, adapterInfo, build.exports, plan.reason, {
    loadMs: performance.now() - started,
    networkBytes: imported.networkBytes + store.progress.networkBytes,
    shardsFromCache: store.progress.fromCache,
    importWarnings: imported.warnings,
    store,
  });
}

/**
 * The `image_url` parts of `messages` decoded to RGBA pixels, in order: each
 * part becomes `{type: "image", index}` into `images` ({width, height, data}).
 * `image_url` is `{url}` or the source itself: a URL (data:, blob:, http(s):),
 * a Blob or File, an ImageBitmap or an ImageData. Nothing leaves the machine
 * but the fetch of an http(s) URL.
 */
async function decodeImages(messages) {
  const images = [];
  const decoded = [];
  for (const message of messages ?? []) {
    if (!Array.isArray(message?.content)) {
      decoded.push(message);
      continue;
    }
    const content = [];
    for (const part of message.content) {
      if (part?.type !== "image_url") {
        content.push(part);
        continue;
      }
      const source = typeof part.image_url === "string" || !("url" in Object(part.image_url)) ? part.image_url : part.image_url.url;
      images.push(await decodeImage(source, images.length + 1));
      content.push({ type: "image", index: images.length - 1 });
    }
    decoded.push({ ...message, content });
  }
  return { messages: decoded, images };
}

async function decodeImage(source, number) {
  const what = typeof source === "string" ? `image ${number} (${source.slice(0, 64)})` : `image ${number}`;
  if (typeof ImageData !== "undefined" && source instanceof ImageData) {
    return { width: source.width, height: source.height, data: new Uint8Array(source.data.buffer) };
  }
  let bitmap = typeof ImageBitmap !== "undefined" && source instanceof ImageBitmap ? source : undefined;
  if (!bitmap) {
    let blob = source;
    if (typeof source === "string") {
      const response = await fetch(source).catch((e) => {
        throw namedError("ImageError", `${what} could not be fetched: ${e.message}`);
      });
      if (!response.ok) throw namedError("ImageError", `${what}: HTTP ${response.status}`);
      blob = await response.blob();
    } else if (!(typeof Blob !== "undefined" && source instanceof Blob)) {
      throw namedError("TypeError", `${what}: image_url must be a URL, a Blob, an ImageBitmap or an ImageData`);
    }
    bitmap = await createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" }).catch(() => {
      throw namedError("ImageError", `${what} is not an image the browser can decode (PNG, JPEG, WebP, …)`);
    });
  }
  const { width, height } = bitmap;
  const context = new OffscreenCanvas(width, height).getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const pixels = context.getImageData(0, 0, width, height).data;
  return { width, height, data: new Uint8Array(pixels.buffer) };
}

/** The wasm engine plus the bookkeeping the JS API reports. */
class LocalEngine {
  constructor(engine, embedding, manifest, adapterInfo, wasmExports, threadsReason, load) {
    this.engine = engine;
    this.wasmExports = wasmExports;
    this.threadsReason = threadsReason;
    this.embedding = embedding;
    this.model = manifest.name || "phi-web";
    this.info = JSON.parse(engine.info());
    if (this.info.backend === "webgpu" && !this.info.adapter && adapterInfo) {
      const { vendor, architecture, description } = adapterInfo;
      this.info.adapter = [vendor, architecture, description].filter(Boolean).join(" ");
    }
    this.load = load;
    this.last = undefined;
  }

  /**
   * request: OpenAI fields; onDelta(text) per piece of text, or
   * onDelta({index, id?, type?, function}) per piece of a tool call;
   * resolves {text, tokens, finish_reason, tool_calls?, stats}.
   */
  async generate(request, onDelta) {
    if (this.embedding) {
      throw namedError("InputError", `${this.model} is an embedding model: use engine.embeddings.create({ input })`);
    }
    // Absent fields (undefined or null) take the engine's defaults (src/engine.rs: Request).
    const fields = ["messages", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "response_format", "tools", "tool_choice"];
    const body = Object.fromEntries(fields.filter((f) => request[f] != null).map((f) => [f, request[f]]));
    if (body.stop != null) body.stop = [].concat(body.stop);
    const shown = (body.messages ?? []).flatMap((m) => (Array.isArray(m?.content) ? m.content : [])).filter((p) => p?.type === "image_url");
    if (shown.length && !this.info.vision) {
      // Refused before any image is fetched or decoded.
      throw namedError("InputError", `${this.model} takes no images (${shown.length} in the messages); load a vision model such as Phi-3.5-vision`);
    }
    const { messages, images } = await decodeImages(body.messages);
    body.messages = messages;
    let result;
    try {
      result = JSON.parse(await this.engine.generate(JSON.stringify(body), onDelta, images.length ? images : undefined));
    } catch (e) {
      throw asError(e);
    }
    this.last = result.stats;
    return result;
  }

  /** texts: string[]; resolves {embeddings: number[][], tokens: number[]}. */
  async embed(texts) {
    if (!this.embedding) {
      throw namedError("InputError", `${this.model} generates text; load an embedding model (e.g. all-MiniLM-L6-v2) for embeddings`);
    }
    const started = performance.now();
    let result;
    try {
      result = JSON.parse(await this.engine.embed(JSON.stringify(texts)));
    } catch (e) {
      throw asError(e);
    }
    const ms = performance.now() - started;
    this.last = { embedded_texts: texts.length, embed_ms: ms, texts_per_s: (1000 * texts.length) / ms };
    return result;
  }

  /** Token ids of `text` (special tokens written in it are recognised): a Uint32Array. */
  tokenize(text) {
    try {
      return this.engine.tokenize(text);
    } catch (e) {
      throw asError(e);
    }
  }

  /** Logits of token ids as one sequence: Float32Array [ids.length * vocab]; images: [{at, image}]. */
  async logits(ids, images = []) {
    if (this.embedding) throw namedError("InputError", `${this.model} is an embedding model: it has no logits`);
    const placed = [];
    for (const { at, image } of images) placed.push({ at, ...(await decodeImage(image, placed.length + 1)) });
    try {
      return await this.engine.logits(Uint32Array.from(ids), placed.length ? placed : undefined);
    } catch (e) {
      throw asError(e);
    }
  }

  /** Overlapping token windows of `text`: [{start, end, tokens}] (UTF-16 offsets). */
  chunk(text, { maxTokens = 128, overlap = 32 } = {}) {
    if (!this.embedding) throw namedError("InputError", `${this.model} is not an embedding model`);
    try {
      return JSON.parse(this.engine.chunk(text, maxTokens, overlap));
    } catch (e) {
      throw asError(e);
    }
  }

  interrupt() {
    if (!this.embedding) this.engine.interrupt();
  }

  resetChat() {
    if (!this.embedding) this.engine.resetChat();
  }

  loseDevice() {
    this.engine.loseDevice();
  }

  stats() {
    return {
      ...(this.last ?? {}),
      backend: this.info.backend,
      backendReason: this.info.backendReason,
      threads: this.info.threads,
      threadsReason: this.info.backend === "cpu" ? this.threadsReason : "",
      simd: this.info.simd,
      crossOriginIsolated: typeof crossOriginIsolated !== "undefined" && crossOriginIsolated,
      gpuBytes: this.info.gpuBytes,
      memoryBytes: this.info.memoryBytes,
      weightBytes: this.info.weightBytes,
      adapter: this.info.adapter,
      shaderF16: this.info.shaderF16,
      contextLength: this.info.contextLength,
      vision: this.info.vision ?? null,
      kvCache: this.info.kvCache,
      pipelines: this.info.pipelines,
      kind: this.embedding ? "embedding" : "chat",
      dimensions: this.info.dimensions,
      loadMs: this.load.loadMs,
      networkBytes: this.load.networkBytes,
      importWarnings: this.load.importWarnings,
      shardsFromCache: this.load.shardsFromCache,
      storageRangeReads: this.load.store.rangeReads,
      expertCache: this.embedding ? null : JSON.parse(this.engine.expertCache()),
      wasmMemoryBytes: this.wasmExports.memory.buffer.byteLength,
    };
  }

  unload() {
    this.engine.free();
  }
}
