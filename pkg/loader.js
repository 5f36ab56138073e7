// Shards from the network into Cache Storage and out to the engine, one shard
// at a time: read(shard, offset, length) fetches (or finds in the cache) the
// shards it needs, checks their length and sha256, and keeps only a few in
// memory. Nothing bad is ever written to the cache.

const CACHE_NAME = "phi-web-shards-v1";

/** An Error with a name, as every error phi-web throws. */
export function namedError(name, message) {
  const error = new Error(message);
  error.name = name;
  return error;
}

/** A refused cache write, explained: what, how big, how much is free, what to do. */
async function quotaError(what, bytes, modelBytes) {
  const { quota, usage } = (await navigator.storage?.estimate?.().catch(() => undefined)) ?? {};
  const free = quota === undefined ? "" : ` (the browser estimates ${((quota - usage) / 1e6).toFixed(0)} MB free)`;
  return namedError(
    "QuotaExceededError",
    `storing ${what} (${(bytes / 1e6).toFixed(0)} MB) exceeded the browser's storage quota${free}; ` +
      `this model needs ${(modelBytes / 1e6).toFixed(0)} MB. Free some space, delete cached models, or pass cache: "none"`,
  );
}

/** store.put, with a QuotaExceededError turned into one a person can act on. */
export async function put(store, url, bytes, what, totalBytes) {
  try {
    await store?.put(url, bytes);
  } catch (e) {
    throw e?.name === "QuotaExceededError" ? await quotaError(what, bytes.length, totalBytes) : e;
  }
}

function modelBytes(manifest) {
  return manifest.shards.reduce((sum, s) => sum + (s.bytes || 0), 0);
}

export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Cache Storage: one entry per URL. */
class CacheApiStore {
  constructor() {
    this.open = caches.open(CACHE_NAME);
  }
  async get(url) {
    const response = await (await this.open).match(url);
    return response ? new Uint8Array(await response.arrayBuffer()) : undefined;
  }
  async has(url) {
    return Boolean(await (await this.open).match(url));
  }
  /** `length` bytes at `offset` of the entry, read through a Blob slice (not the whole entry). */
  async slice(url, offset, length) {
    const response = await (await this.open).match(url);
    return response ? new Uint8Array(await (await response.blob()).slice(offset, offset + length).arrayBuffer()) : undefined;
  }
  async put(url, bytes) {
    await (await this.open).put(url, new Response(bytes, { headers: { "content-type": "application/octet-stream" } }));
  }
  async delete(url) {
    return (await this.open).delete(url);
  }
  async keys() {
    return (await (await this.open).keys()).map((request) => request.url);
  }
}

/** The origin private file system: one file per URL in a `phi-web` folder. */
class OpfsStore {
  constructor() {
    this.dir = navigator.storage.getDirectory().then((root) => root.getDirectoryHandle("phi-web", { create: true }));
  }
  async file(url, create = false) {
    try {
      return await (await this.dir).getFileHandle(encodeURIComponent(url), { create });
    } catch (e) {
      if (e.name === "NotFoundError") return undefined;
      throw e;
    }
  }
  async get(url) {
    const handle = await this.file(url);
    return handle ? new Uint8Array(await (await handle.getFile()).arrayBuffer()) : undefined;
  }
  async has(url) {
    return Boolean(await this.file(url));
  }
  async slice(url, offset, length) {
    const handle = await this.file(url);
    return handle ? new Uint8Array(await (await handle.getFile()).slice(offset, offset + length).arrayBuffer()) : undefined;
  }
  async put(url, bytes) {
    // Written under a temporary name and renamed, so a half-written file is never found.
    const dir = await this.dir;
    const temp = await dir.getFileHandle(`${encodeURIComponent(url)}.partial`, { create: true });
    const writable = await temp.createWritable();
    await writable.write(bytes);
    await writable.close();
    await temp.move(encodeURIComponent(url));
  }
  async delete(url) {
    try {
      await (await this.dir).removeEntry(encodeURIComponent(url));
      return true;
    } catch {
      return false;
    }
  }
  async keys() {
    const out = [];
    for await (const name of (await this.dir).keys()) if (!name.endsWith(".partial")) out.push(decodeURIComponent(name));
    return out;
  }
}

/** A store that lives as long as one load: `cache: "none"` for an imported GGUF. */
export class MemoryStore {
  constructor() {
    this.entries = new Map();
  }
  async get(url) {
    return this.entries.get(url);
  }
  async has(url) {
    return this.entries.has(url);
  }
  async slice(url, offset, length) {
    return this.entries.get(url)?.slice(offset, offset + length);
  }
  async put(url, bytes) {
    this.entries.set(url, bytes);
  }
  async delete(url) {
    return this.entries.delete(url);
  }
  async keys() {
    return [...this.entries.keys()];
  }
}

/** Fails with both numbers when the origin's storage cannot hold `needed` more bytes. */
export async function ensureQuota(needed) {
  if (!navigator.storage?.estimate) return;
  const { quota = Infinity, usage = 0 } = await navigator.storage.estimate();
  if (needed > quota - usage) {
    const mb = (n) => (n / 1e6).toFixed(0);
    throw namedError(
      "QuotaExceededError",
      `this model needs ${mb(needed)} MB of browser storage but only ${mb(quota - usage)} MB are free ` +
        `(quota ${mb(quota)} MB, used ${mb(usage)} MB); free some space or pass cache: "none"`,
    );
  }
  await navigator.storage.persist?.().catch(() => false);
}

const stores = {};

/** The store for a `cache` option, or undefined for "none" or when the browser lacks it. */
export function openStore(cache = "cache-api") {
  if (cache === "cache-api" && typeof caches !== "undefined") return (stores[cache] ??= new CacheApiStore());
  if (cache === "opfs" && typeof navigator !== "undefined" && navigator.storage?.getDirectory) {
    return (stores[cache] ??= new OpfsStore());
  }
  if (cache === "none") return undefined;
  throw namedError("NotSupportedError", `cache: "${cache}" is not available in this browser; use "cache-api", "opfs" or "none"`);
}

/** Fetches and checks model.json; returns {manifest, baseUrl}. */
export async function fetchManifest(modelUrl, { cache = "cache-api" } = {}) {
  const url = new URL(modelUrl, globalThis.location?.href).href;
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
  } catch (e) {
    // Offline: the cached copy of the manifest, if any.
    const cached = await openStore(cache)?.get(url);
    if (!cached) throw namedError("NetworkError", `${url}: ${e.message}`);
    response = new Response(cached);
  }
  if (!response.ok) throw namedError("NetworkError", `${url}: HTTP ${response.status} ${response.statusText}`);
  const text = await response.text();
  let manifest;
  try {
    manifest = JSON.parse(text);
  } catch {
    const hint = text.trimStart().startsWith("<") ? " (the server sent an HTML page)" : "";
    throw namedError("ModelFormatError", `${url}: model.json is not JSON${hint}`);
  }
  if (!Array.isArray(manifest.shards) || !manifest.config) {
    throw namedError("ModelFormatError", `${url}: not a phi-web model.json (no shards or config)`);
  }
  await put(openStore(cache), url, new TextEncoder().encode(text), "model.json", modelBytes(manifest));
  return { manifest, baseUrl: url };
}

/** Fetches a file next to model.json (the tokenizer), through the cache. */
export async function fetchFile(baseUrl, file, manifest, { cache = "cache-api", store = openStore(cache) } = {}) {
  const url = new URL(file, baseUrl).href;
  const cached = await store?.get(url);
  if (cached) return cached;
  const response = await fetch(url).catch((e) => {
    throw namedError("NetworkError", `${url}: ${e.message}`);
  });
  if (!response.ok) throw namedError("NetworkError", `${url}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  await put(store, url, bytes, file, modelBytes(manifest));
  return bytes;
}

export class ShardStore {
  /**
   * @param manifest model.json, parsed
   * @param baseUrl model.json's absolute URL (shards are relative to it)
   * @param options {cache: "cache-api" | "opfs" | "none", store (instead of cache's), parallel, onProgress}
   */
  constructor(manifest, baseUrl, { cache = "cache-api", store, parallel = 3, onProgress = () => {} } = {}) {
    this.shards = manifest.shards;
    this.baseUrl = baseUrl;
    this.store = store ?? openStore(cache);
    this.parallel = Math.max(1, parallel);
    this.onProgress = onProgress;
    this.pending = new Map(); // shard index → Promise<Uint8Array>, at most `parallel + 1`
    this.progress = {
      phase: "download",
      loadedBytes: 0,
      totalBytes: modelBytes(manifest),
      shardsDone: 0,
      shardsTotal: manifest.shards.length,
      fromCache: 0,
      networkBytes: 0,
    };
    this.done = new Set();
    this.rangeReads = 0; // reads served from the store by range after loading
  }

  url(i) {
    return new URL(this.shards[i].file, this.baseUrl).href;
  }

  /** Bytes of shards not in the cache yet (what a load will download). */
  async missingBytes() {
    if (!this.store) return this.progress.totalBytes;
    let missing = 0;
    for (let i = 0; i < this.shards.length; i++) {
      if (!(await this.store.has(this.url(i)))) missing += this.shards[i].bytes;
    }
    return missing;
  }

  /** Fails with both numbers when the origin's storage cannot hold the download. */
  async checkQuota() {
    if (!this.store || this.store instanceof MemoryStore) return;
    await ensureQuota(await this.missingBytes());
  }

  /** `length` bytes from (shard, offset), continuing into later shards. */
  async read(shard, offset, length) {
    // A shard loaded (and verified) before and no longer in memory: an expert
    // cache's miss after loading. Read just the range from the store.
    if (this.done.has(shard) && !this.pending.has(shard) && offset + length <= this.shards[shard].bytes) {
      const bytes = await this.store?.slice(this.url(shard), offset, length);
      if (bytes?.length === length) {
        this.rangeReads += 1;
        return bytes;
      }
    }
    if (shard < this.shards.length && offset + length <= this.shards[shard].bytes) {
      return (await this.shard(shard)).subarray(offset, offset + length); // no copy: wasm copies it once
    }
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      if (shard >= this.shards.length) throw namedError("ModelFormatError", "a tensor runs past the last shard");
      const bytes = await this.shard(shard);
      const n = Math.min(bytes.length - offset, length - filled);
      out.set(bytes.subarray(offset, offset + n), filled);
      filled += n;
      shard += 1;
      offset = 0;
    }
    return out;
  }

  /** One verified shard; starts fetching the next ones (bounded). */
  shard(i) {
    for (let j = i; j < Math.min(i + this.parallel, this.shards.length); j++) {
      if (!this.pending.has(j) && !this.done.has(j)) this.pending.set(j, this.start(j));
    }
    if (!this.pending.has(i)) this.pending.set(i, this.start(i)); // read again after eviction
    // Keep the newest few in memory; a tensor spanning shards needs two.
    for (const key of this.pending.keys()) {
      if (this.pending.size <= this.parallel + 1) break;
      if (key < i) this.pending.delete(key);
      else break;
    }
    return this.pending.get(i);
  }

  start(i) {
    const promise = this.load(i);
    promise.catch(() => {}); // a prefetch may fail before anyone awaits it; read() still sees the error
    return promise;
  }

  async load(i) {
    const info = this.shards[i];
    const url = this.url(i);
    const store = this.store;
    let bytes = await store?.get(url);
    let fromCache = false;
    if (bytes) {
      if (bytes.length === info.bytes && (await sha256Hex(bytes)) === info.sha256) {
        fromCache = true;
      } else {
        await store.delete(url); // corrupt or stale: fetch it again
        bytes = undefined;
      }
    }
    if (!bytes) {
      bytes = await this.download(url, info);
      await put(store, url, bytes, `shard ${info.file}`, this.progress.totalBytes);
    }
    if (!this.done.has(i)) {
      this.done.add(i);
      this.progress.shardsDone += 1;
      if (fromCache) this.progress.fromCache += 1;
      this.progress.loadedBytes += fromCache ? info.bytes : 0;
      this.report();
    }
    return bytes;
  }

  async download(url, info) {
    const name = info.file;
    let response;
    try {
      response = await fetch(url, { cache: "no-store" });
    } catch (e) {
      throw namedError("NetworkError", `shard ${name}: ${e.message}`);
    }
    if (!response.ok) throw namedError("NetworkError", `shard ${name}: HTTP ${response.status} ${response.statusText}`);
    const type = response.headers.get("content-type") || "";
    if (type.includes("text/html")) {
      throw namedError("ShardError", `shard ${name}: the server sent an HTML page instead of model weights (${url})`);
    }
    // Stream it, reporting progress; never more than the manifest's length.
    const bytes = new Uint8Array(info.bytes);
    let received = 0;
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (received + value.length > info.bytes) {
        await reader.cancel();
        throw namedError("ShardError", `shard ${name}: longer than the manifest's ${info.bytes} bytes`);
      }
      bytes.set(value, received);
      received += value.length;
      this.progress.loadedBytes += value.length;
      this.progress.networkBytes += value.length;
      this.report();
    }
    if (received !== info.bytes) {
      throw namedError("ShardError", `shard ${name}: ${received} bytes, the manifest says ${info.bytes} (truncated)`);
    }
    const hash = await sha256Hex(bytes);
    if (hash !== info.sha256) {
      throw namedError("ShardError", `shard ${name}: sha256 ${hash} does not match the manifest's ${info.sha256} (corrupted)`);
    }
    return bytes;
  }

  report() {
    this.onProgress({ ...this.progress });
  }
}

/**
 * A mixture of experts' weights by where they may live (model.json, parsed):
 * {resident, expert, layers, experts, budgetFor(slots)} — bytes that stay on
 * the GPU, bytes of one expert, and the `gpuMemoryBudget` that leaves `slots`
 * experts per layer on the GPU (as src/model/expert_cache.rs computes it).
 */
export function expertSizes(manifest) {
  const experts = manifest.config?.moe?.experts;
  if (!experts) throw namedError("InputError", `${manifest.name ?? "this model"} is not a mixture of experts`);
  const bytes = (t) => t.chunks.reduce((n, c) => n + c.payload_bytes + c.scales_bytes, 0);
  const isExpert = (t) => t.name.includes(".block_sparse_moe.experts.");
  const resident = manifest.tensors.filter((t) => !isExpert(t)).reduce((n, t) => n + bytes(t), 0);
  const expert = manifest.tensors
    .filter((t) => t.name.startsWith("model.layers.0.block_sparse_moe.experts.0."))
    .reduce((n, t) => n + bytes(t), 0);
  const layers = manifest.config.num_layers;
  return { resident, expert, layers, experts, budgetFor: (slots) => resident + layers * slots * expert };
}

/**
 * What `source` is: "gguf" (a File or Blob, or a URL of a .gguf file), "hf"
 * (a URL ending in "/": a Hugging Face-style folder) or "package" (model.json).
 */
export function sourceKind(source) {
  if (typeof Blob !== "undefined" && source instanceof Blob) return "gguf";
  const path = new URL(source, globalThis.location?.href).pathname;
  if (path.toLowerCase().endsWith(".gguf")) return "gguf";
  return path.endsWith("/") ? "hf" : "package";
}

/** Where the record of a GGUF's or folder's import lives: {base} of its package in the store. */
export async function importRecordUrl(sourceUrl, quant = "") {
  const key = new TextEncoder().encode(JSON.stringify([new URL(sourceUrl, globalThis.location?.href).href, quant]));
  return `${importRoot()}sources/${(await sha256Hex(key)).slice(0, 32)}`;
}

/** The folder in the store under which imported packages live. */
export function importRoot() {
  const origin = globalThis.location?.origin;
  return `${origin && origin !== "null" ? origin : "http://localhost"}/.phi-web-import/`;
}

/** model.json's URL in the store for a package URL, or an imported GGUF's or folder's (undefined if never imported). */
async function cachedManifestUrl(modelUrl, store, quant) {
  const url = new URL(modelUrl, globalThis.location?.href).href;
  if (sourceKind(url) === "package") return url;
  const record = await store?.get(await importRecordUrl(url, quant));
  return record && `${JSON.parse(new TextDecoder().decode(record)).base}model.json`;
}

/**
 * Models with a cached model.json: [{url, source, bytes, shardsCached,
 * shardsTotal, complete}] (an imported GGUF's url is its package's in the
 * cache, its source the GGUF's URL or file name).
 */
export async function listCachedModels({ cache = "cache-api" } = {}) {
  const store = openStore(cache);
  if (!store) return [];
  const out = [];
  for (const url of await store.keys()) {
    if (url.endsWith("model.json")) out.push(await checkCachedModel(url, { cache }));
  }
  return out;
}

/**
 * How much of a model is cached: {url, source, bytes, shardsCached,
 * shardsTotal, complete}. `modelUrl`: a package's model.json, or a GGUF's or
 * folder's URL as given to createEngine (with the same `quant`).
 */
export async function checkCachedModel(modelUrl, { cache = "cache-api", quant = "" } = {}) {
  const store = openStore(cache);
  const url = (await cachedManifestUrl(modelUrl, store, quant)) ?? new URL(modelUrl, globalThis.location?.href).href;
  const text = await store?.get(url);
  if (!text) return { url, source: modelUrl, bytes: 0, shardsCached: 0, shardsTotal: 0, complete: false };
  const manifest = JSON.parse(new TextDecoder().decode(text));
  let bytes = 0;
  let shardsCached = 0;
  for (const shard of manifest.shards) {
    if (await store.has(new URL(shard.file, url).href)) {
      shardsCached += 1;
      bytes += shard.bytes;
    }
  }
  const shardsTotal = manifest.shards.length;
  const source = url.startsWith(importRoot()) ? manifest.source : url;
  return { url, source, bytes, shardsCached, shardsTotal, complete: shardsCached === shardsTotal };
}

/**
 * Deletes a model's manifest, tokenizer and shards from the cache: a
 * package's, or a GGUF's or folder's import (an unfinished one too).
 */
export async function deleteCachedModel(modelUrl, { cache = "cache-api", quant = "" } = {}) {
  const store = openStore(cache);
  if (!store) return false;
  const url = new URL(modelUrl, globalThis.location?.href).href;
  if (sourceKind(url) !== "package") {
    const recordUrl = await importRecordUrl(url, quant);
    const record = await store.get(recordUrl);
    if (!record) return false;
    const { base } = JSON.parse(new TextDecoder().decode(record));
    await store.delete(`${base}model.json`); // first: the package is gone even if the rest fails
    for (const key of await store.keys()) if (key.startsWith(base)) await store.delete(key);
    return store.delete(recordUrl);
  }
  const text = await store.get(url);
  if (!text) return false;
  const manifest = JSON.parse(new TextDecoder().decode(text));
  for (const shard of manifest.shards) await store.delete(new URL(shard.file, url).href);
  if (manifest.tokenizer) await store.delete(new URL(manifest.tokenizer, url).href);
  return store.delete(url);
}
