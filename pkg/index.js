// phi-web: Phi models in the browser on WebGPU, with an OpenAI-shaped API.
//
//   const engine = await createEngine(modelUrl, { onProgress });
//   const reply = await engine.chat.completions.create({ messages });
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) …

import { namedError } from "./loader.js";

export { listCachedModels, checkCachedModel, deleteCachedModel, expertSizes } from "./loader.js";

/** The engine in a Web Worker: the same calls as the in-page engine, as messages. */
class WorkerBackend {
  constructor() {
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    this.calls = new Map();
    this.nextId = 1;
    this.worker.onmessage = ({ data }) => {
      const call = this.calls.get(data.id);
      if (!call) return;
      if (data.type === "progress") call.onProgress?.(data.progress);
      else if (data.type === "delta") call.onDelta?.(data.delta);
      else {
        this.calls.delete(data.id);
        if (data.type === "error") call.reject(namedError(data.name, data.message));
        else call.resolve(data.value);
      }
    };
    this.worker.onerror = (event) => {
      const error = namedError("WorkerError", `the phi-web worker failed: ${event.message ?? "unknown error"}`);
      for (const call of this.calls.values()) call.reject(error);
      this.calls.clear();
    };
  }

  call(message, handlers = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject, ...handlers });
      this.worker.postMessage({ id, ...message });
    });
  }

  load(modelUrl, options, onProgress) {
    return this.call({ type: "load", modelUrl, options }, { onProgress });
  }
  generate(request, onDelta) {
    return this.call({ type: "generate", request }, { onDelta });
  }
  embed(input) {
    return this.call({ type: "embed", input });
  }
  chunk(text, options) {
    return this.call({ type: "chunk", text, options });
  }
  logits(ids, images) {
    return this.call({ type: "logits", ids, images });
  }
  tokenize(text) {
    return this.call({ type: "tokenize", text });
  }
  interrupt() {
    return this.call({ type: "interrupt" });
  }
  resetChat() {
    return this.call({ type: "resetChat" });
  }
  loseDevice() {
    return this.call({ type: "loseDevice" });
  }
  stats() {
    return this.call({ type: "stats" });
  }
  async unload() {
    // A crashed worker never answers; terminating it frees its GPU memory anyway.
    const grace = new Promise((resolve) => setTimeout(resolve, 2000));
    await Promise.race([this.call({ type: "unload" }), grace]);
    this.worker.terminate();
  }
}

/** The engine on the page's own thread (`worker: false`). */
class PageBackend {
  async load(modelUrl, options, onProgress) {
    const { loadEngine } = await import("./core.js");
    this.engine = await loadEngine(modelUrl, { ...options, onProgress });
    return this.engine.stats();
  }
  generate(request, onDelta) {
    return this.engine.generate(request, onDelta);
  }
  embed(input) {
    return this.engine.embed(input);
  }
  async chunk(text, options) {
    return this.engine.chunk(text, options);
  }
  logits(ids, images) {
    return this.engine.logits(ids, images);
  }
  async tokenize(text) {
    return this.engine.tokenize(text);
  }
  async interrupt() {
    this.engine.interrupt();
  }
  async resetChat() {
    this.engine.resetChat();
  }
  async loseDevice() {
    this.engine.loseDevice();
  }
  async stats() {
    return this.engine.stats();
  }
  async unload() {
    this.engine?.unload();
    this.engine = undefined;
  }
}

function abortError() {
  return namedError("AbortError", "the request was aborted");
}

let completionCounter = 0;

/**
 * Loads a model and returns an engine. `source`: a package's model.json URL;
 * a GGUF's URL (read by range requests and converted into a package in the
 * cache on the first load); or a GGUF File/Blob, e.g. from a file input.
 * options: { onProgress, worker = true, cache = "cache-api" | "opfs" | "none", contextLength, kvCache = "f16" | "q8" | "f32",
 *   portable, gpuMemoryBudget (bytes of weights on the GPU; a mixture of experts over it caches its experts),
 *   prefillChunk (tokens per prefill step, 0: 64), quant (a GGUF's matrices as "q4_0" | "q4_1" | "q8_0" | "f16" | "f32";
 *   default: its own formats, K-quants as q4_1 / q8_0),
 *   backend = "auto" | "webgpu" | "cpu" (auto: WebGPU on a hardware adapter, else the CPU backend, wasm SIMD),
 *   threads (the CPU backend's; 0: what the page allows) }
 */
export async function createEngine(source, options = {}) {
  const { onProgress, worker = true, cache = "cache-api", contextLength = 0, kvCache = "f16", portable = false } = options;
  const { gpuMemoryBudget = 0, prefillChunk = 0, quant = "", backend = "auto", threads = 0 } = options;
  if (!["auto", "webgpu", "cpu"].includes(backend)) {
    throw namedError("TypeError", `backend: "${backend}" is not supported; use "auto", "webgpu" or "cpu"`);
  }
  if (!(Number.isInteger(threads) && threads >= 0)) {
    throw namedError("TypeError", `threads: ${threads} is not a whole number (0: what the page allows)`);
  }
  const isBlob = typeof Blob !== "undefined" && source instanceof Blob;
  if (typeof source !== "string" && !isBlob) {
    throw namedError("TypeError", "createEngine(source): expected a URL (model.json or .gguf) or a GGUF File/Blob");
  }
  if (!["", "q4_0", "q4_1", "q8_0", "f16", "f32"].includes(quant)) {
    throw namedError("TypeError", `quant: "${quant}" is not supported; use "q4_0", "q4_1", "q8_0", "f16" or "f32"`);
  }
  if (!(Number.isFinite(gpuMemoryBudget) && gpuMemoryBudget >= 0)) {
    throw namedError("TypeError", `gpuMemoryBudget: ${gpuMemoryBudget} is not a number of bytes (0: no budget)`);
  }
  if (!(Number.isInteger(prefillChunk) && prefillChunk >= 0 && prefillChunk <= 4096)) {
    throw namedError("TypeError", `prefillChunk: ${prefillChunk} is not a whole number of tokens from 0 (the default, 64) to 4096`);
  }
  if (!["cache-api", "opfs", "none"].includes(cache)) {
    throw namedError("TypeError", `cache: "${cache}" is not supported; use "cache-api", "opfs" or "none"`);
  }
  if (!["f16", "q8", "f32"].includes(kvCache)) {
    throw namedError("TypeError", `kvCache: "${kvCache}" is not supported; use "f16", "q8" or "f32"`);
  }
  const load = () =>
    startBackend(source, { worker, cache, contextLength, kvCache, portable, gpuMemoryBudget, prefillChunk, quant, backend, threads }, onProgress);
  return new PhiEngine(await load(), isBlob ? (source.name ?? "model.gguf") : source, load);
}

async function startBackend(modelUrl, { worker, ...options }, onProgress) {
  const backend = worker ? new WorkerBackend() : new PageBackend();
  try {
    await backend.load(modelUrl, options, onProgress);
  } catch (e) {
    if (worker) backend.worker.terminate();
    throw e;
  }
  return backend;
}

class PhiEngine {
  constructor(backend, modelUrl, load) {
    this.backend = backend;
    this.model = modelUrl;
    this.load = load;
    this.chat = { completions: { create: (request) => this.create(request) } };
    this.embeddings = {
      create: (request) => this.embed(request),
      chunk: (text, options) => this.backend.chunk(String(text), options),
    };
  }

  /**
   * OpenAI-shaped embeddings (an embedding model's engine): `input` is a
   * string or an array of strings; each vector is L2-normalised when the
   * model says so (MiniLM does). Long inputs are truncated to the model's
   * maximum sequence length.
   */
  async embed(request) {
    const input = request?.input;
    const texts = typeof input === "string" ? [input] : input;
    if (!Array.isArray(texts) || texts.length === 0 || !texts.every((t) => typeof t === "string")) {
      throw namedError("TypeError", "embeddings.create needs { input: string | string[] } with at least one string");
    }
    const result = await this.backend.embed(texts);
    const tokens = result.tokens.reduce((a, b) => a + b, 0);
    return {
      object: "list",
      model: this.model,
      data: result.embeddings.map((embedding, index) => ({ object: "embedding", index, embedding })),
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    };
  }

  /**
   * Creates the engine again with the same options, e.g. after a
   * DeviceLostError. Shards come from the cache, so nothing is downloaded
   * again. The conversation's KV cache starts empty.
   */
  async reload() {
    await this.backend.unload().catch(() => {});
    this.backend = await this.load();
  }

  /**
   * Destroys the GPU device as a driver reset would, so an app can test its
   * recovery: later calls fail with DeviceLostError until reload().
   */
  loseDevice() {
    return this.backend.loseDevice();
  }

  /** OpenAI-shaped chat completion; `stream: true` returns an async iterable of chunks. */
  async create(request) {
    if (!request || !Array.isArray(request.messages) || request.messages.length === 0) {
      throw namedError("TypeError", "chat.completions.create needs { messages: [{ role, content }, …] }");
    }
    const { signal } = request;
    if (signal?.aborted) throw abortError();
    const id = `chatcmpl-${Date.now().toString(36)}-${completionCounter++}`;
    const created = Math.floor(Date.now() / 1000);
    const { signal: _, stream, ...body } = request;
    const onAbort = () => this.interrupt();
    signal?.addEventListener("abort", onAbort);

    if (!stream) {
      let result;
      try {
        result = await this.backend.generate(body);
      } finally {
        signal?.removeEventListener("abort", onAbort);
      }
      if (signal?.aborted) throw abortError();
      return {
        id,
        object: "chat.completion",
        created,
        model: this.model,
        choices: [{ index: 0, message: message(result), finish_reason: result.finish_reason }],
        usage: usage(result),
      };
    }

    // Streaming: deltas queue up until the consumer pulls them.
    const queue = [];
    let wake;
    let ended = false;
    let failure;
    let result;
    const push = (item) => {
      queue.push(item);
      wake?.();
    };
    this.backend
      .generate(body, (delta) => push(delta))
      .then((r) => (result = r))
      .catch((e) => (failure = e))
      .finally(() => {
        ended = true;
        wake?.();
      });
    const chunk = (delta, finish_reason) => ({
      id,
      object: "chat.completion.chunk",
      created,
      model: this.model,
      choices: [{ index: 0, delta, finish_reason }],
    });
    return {
      [Symbol.asyncIterator]: async function* () {
        yield chunk({ role: "assistant", content: "" }, null);
        for (;;) {
          if (queue.length) {
            // Text comes as a string, a piece of a tool call as an object.
            const delta = queue.shift();
            yield chunk(typeof delta === "string" ? { content: delta } : { tool_calls: [delta] }, null);
            continue;
          }
          if (ended) break;
          await new Promise((resolve) => (wake = resolve));
          wake = undefined;
        }
        signal?.removeEventListener("abort", onAbort);
        if (signal?.aborted) throw abortError();
        if (failure) throw failure;
        yield { ...chunk({}, result.finish_reason), usage: usage(result) };
      },
    };
  }

  /** Stops the running generation at its next token (finish_reason "abort"). */
  interrupt() {
    return this.backend.interrupt();
  }

  /** Forgets the conversation's KV cache. */
  resetChat() {
    return this.backend.resetChat();
  }

  /**
   * Token ids of `text` as the engine encodes a prompt: special tokens written
   * in the text (`<|user|>`, `<|im_start|>` …) are recognised, no bos is
   * added, no chat template applied. Resolves to a Uint32Array.
   */
  tokenize(text) {
    if (typeof text !== "string") {
      return Promise.reject(namedError("TypeError", "tokenize(text): expected a string"));
    }
    return this.backend.tokenize(text);
  }

  /**
   * Logits of `tokenIds` as one sequence from position 0: a Float32Array of
   * tokenIds.length rows of the vocabulary (for checks and research; chat
   * does not need it). Forgets the conversation's KV cache. A vision model
   * takes `{ images: [{ at, image }] }`: each image's rows (an ImageSource)
   * stand at positions at.. in place of those tokens (as many as the image
   * takes: stats().vision and the README say how many).
   */
  logits(tokenIds, { images = [] } = {}) {
    if (!Array.isArray(tokenIds) && !ArrayBuffer.isView(tokenIds)) {
      return Promise.reject(namedError("TypeError", "logits(tokenIds): expected an array of token ids"));
    }
    return this.backend.logits(Array.from(tokenIds), images);
  }

  /** {prefill_tokens_per_s, decode_tokens_per_s, ttft_ms, gpuBytes, wasmMemoryBytes, …} */
  stats() {
    return this.backend.stats();
  }

  /** Frees the GPU memory (and ends the worker). */
  unload() {
    return this.backend.unload();
  }
}

/** The assistant message of a result: its text, or its tool calls (content null, as OpenAI's). */
function message(result) {
  if (result.tool_calls?.length) return { role: "assistant", content: null, tool_calls: result.tool_calls };
  return { role: "assistant", content: result.text };
}

function usage(result) {
  const prompt = result.stats.prompt_tokens;
  return { prompt_tokens: prompt, completion_tokens: result.tokens.length, total_tokens: prompt + result.tokens.length };
}
