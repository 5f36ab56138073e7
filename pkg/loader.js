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

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function cachesAvailable() {
  return typeof caches !== "undefined";
}

/** Fetches and checks model.json; returns {manifest, baseUrl}. */
export async function fetchManifest(modelUrl, { cache = "cache-api" } = {}) {
  const url = new URL(modelUrl, globalThis.location?.href).href;
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
  } catch (e) {
    // Offline: the cached copy of the manifest, if any.
    const cached = cache === "cache-api" && cachesAvailable() ? await (await caches.open(CACHE_NAME)).match(url) : undefined;
    if (!cached) throw namedError("NetworkError", `${url}: ${e.message}`);
    response = cached;
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
  if (cache === "cache-api" && cachesAvailable()) {
    await (await caches.open(CACHE_NAME)).put(url, new Response(text, { headers: { "content-type": "application/json" } }));
  }
  return { manifest, baseUrl: url };
}

/** Fetches a file next to model.json (the tokenizer), through the cache. */
export async function fetchFile(baseUrl, file, { cache = "cache-api" } = {}) {
  const url = new URL(file, baseUrl).href;
  const store = cache === "cache-api" && cachesAvailable() ? await caches.open(CACHE_NAME) : undefined;
  const cached = store && (await store.match(url));
  if (cached) return new Uint8Array(await cached.arrayBuffer());
  const response = await fetch(url).catch((e) => {
    throw namedError("NetworkError", `${url}: ${e.message}`);
  });
  if (!response.ok) throw namedError("NetworkError", `${url}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (store) await store.put(url, new Response(bytes));
  return bytes;
}

export class ShardStore {
  /**
   * @param manifest model.json, parsed
   * @param baseUrl model.json's absolute URL (shards are relative to it)
   * @param options {cache: "cache-api" | "none", parallel, onProgress}
   */
  constructor(manifest, baseUrl, { cache = "cache-api", parallel = 3, onProgress = () => {} } = {}) {
    this.shards = manifest.shards;
    this.baseUrl = baseUrl;
    this.useCache = cache === "cache-api" && cachesAvailable();
    this.parallel = Math.max(1, parallel);
    this.onProgress = onProgress;
    this.pending = new Map(); // shard index → Promise<Uint8Array>, at most `parallel + 1`
    this.progress = {
      phase: "download",
      loadedBytes: 0,
      totalBytes: manifest.shards.reduce((sum, s) => sum + s.bytes, 0),
      shardsDone: 0,
      shardsTotal: manifest.shards.length,
      fromCache: 0,
      networkBytes: 0,
    };
    this.done = new Set();
  }

  url(i) {
    return new URL(this.shards[i].file, this.baseUrl).href;
  }

  /** Bytes of shards not in the cache yet (what a load will download). */
  async missingBytes() {
    if (!this.useCache) return this.progress.totalBytes;
    const store = await caches.open(CACHE_NAME);
    let missing = 0;
    for (let i = 0; i < this.shards.length; i++) {
      if (!(await store.match(this.url(i)))) missing += this.shards[i].bytes;
    }
    return missing;
  }

  /** Fails with both numbers when the origin's storage cannot hold the download. */
  async checkQuota() {
    if (!this.useCache || !navigator.storage?.estimate) return;
    const needed = await this.missingBytes();
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

  /** `length` bytes from (shard, offset), continuing into later shards. */
  async read(shard, offset, length) {
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
    const store = this.useCache ? await caches.open(CACHE_NAME) : undefined;
    let bytes;
    let fromCache = false;
    const cached = store && (await store.match(url));
    if (cached) {
      bytes = new Uint8Array(await cached.arrayBuffer());
      if (bytes.length === info.bytes && (await sha256Hex(bytes)) === info.sha256) {
        fromCache = true;
      } else {
        await store.delete(url); // corrupt or stale: fetch it again
        bytes = undefined;
      }
    }
    if (!bytes) {
      bytes = await this.download(i, url, info);
      if (store) await store.put(url, new Response(bytes, { headers: { "content-type": "application/octet-stream" } }));
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

  async download(i, url, info) {
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

/** Models with a cached model.json: [{url, bytes, shardsCached, shardsTotal}]. */
export async function listCachedModels() {
  if (!cachesAvailable()) return [];
  const store = await caches.open(CACHE_NAME);
  const out = [];
  for (const request of await store.keys()) {
    if (!request.url.endsWith("model.json")) continue;
    out.push(await checkCachedModel(request.url));
  }
  return out;
}

/** How much of a model is cached: {url, bytes, shardsCached, shardsTotal, complete}. */
export async function checkCachedModel(modelUrl) {
  const url = new URL(modelUrl, globalThis.location?.href).href;
  const store = await caches.open(CACHE_NAME);
  const response = await store.match(url);
  if (!response) return { url, bytes: 0, shardsCached: 0, shardsTotal: 0, complete: false };
  const manifest = await response.json();
  let bytes = 0;
  let shardsCached = 0;
  for (const shard of manifest.shards) {
    if (await store.match(new URL(shard.file, url).href)) {
      shardsCached += 1;
      bytes += shard.bytes;
    }
  }
  const shardsTotal = manifest.shards.length;
  return { url, bytes, shardsCached, shardsTotal, complete: shardsCached === shardsTotal };
}

/** Deletes a model's manifest, tokenizer and shards from the cache. */
export async function deleteCachedModel(modelUrl) {
  const url = new URL(modelUrl, globalThis.location?.href).href;
  const store = await caches.open(CACHE_NAME);
  const response = await store.match(url);
  if (response) {
    const manifest = await response.json();
    for (const shard of manifest.shards) await store.delete(new URL(shard.file, url).href);
    if (manifest.tokenizer) await store.delete(new URL(manifest.tokenizer, url).href);
  }
  return store.delete(url);
}
