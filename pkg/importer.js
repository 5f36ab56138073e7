// A GGUF from a URL or a File, converted in the browser into a phi-web
// package in the shard cache, so that the next visit loads it like any
// package. The plan (which byte range each step reads, where its output goes)
// comes from the wasm GgufImporter (src/formats/gguf_import.rs), the same
// code as `phi-web convert`, so the shards equal the native converter's.
//
// Reads are range requests (`Range: bytes=a-b`, answered 206): the whole
// file is never in memory, only one tensor at a time and the shard being
// filled. A server that ignores ranges is an error that says what to do.
// The cache key is the URL plus its ETag (or Last-Modified) and length;
// shards are stored whole, model.json last, so an interrupted import resumes
// at the first missing shard and a failed one leaves no model.json behind.

import { ensureQuota, MemoryStore, namedError, put, sha256Hex } from "./loader.js";

/** Bytes read for the header at first; quadrupled while the header runs past them. */
const HEADER_READ = 1 << 20;

/** Whether `source` is something importModel reads: a File or Blob, or a URL of a .gguf file. */
export function isGgufSource(source) {
  if (typeof Blob !== "undefined" && source instanceof Blob) return true;
  if (typeof source !== "string") return false;
  const path = new URL(source, globalThis.location?.href).pathname;
  return path.toLowerCase().endsWith(".gguf");
}

/**
 * Converts the GGUF `source` into a package in `store` (unless it is there
 * already) and returns {manifest, baseUrl, networkBytes, warnings}: baseUrl
 * is the package's model.json URL in the store.
 * options: {store, quant ("" keeps the GGUF's formats), onProgress, GgufImporter (the wasm class)}
 */
export async function importGguf(source, { store, quant = "", onProgress = () => {}, GgufImporter }) {
  const file = await openSource(source);
  const base = await packageBase(file, quant);
  const manifestUrl = `${base}model.json`;
  const cached = await store.get(manifestUrl);
  if (cached) {
    const manifest = JSON.parse(new TextDecoder().decode(cached));
    return { manifest, baseUrl: manifestUrl, networkBytes: file.probeBytes, warnings: [] };
  }

  const progress = { phase: "import", loadedBytes: 0, totalBytes: 0, networkBytes: file.probeBytes };
  const report = () => onProgress({ ...progress });
  const read = async (start, end) => {
    const bytes = await file.read(start, end, (n) => {
      progress.networkBytes += file.remote ? n : 0;
      report();
    });
    return bytes;
  };

  // The header, read until it parses.
  let prefix = await read(0, Math.min(file.length, HEADER_READ));
  let importer;
  for (;;) {
    try {
      importer = GgufImporter.open(prefix, file.length, file.name, quant);
    } catch (e) {
      throw asNamedError(e);
    }
    if (importer) break;
    const more = await read(prefix.length, Math.min(file.length, prefix.length * 4));
    const joined = new Uint8Array(prefix.length + more.length);
    joined.set(prefix);
    joined.set(more, prefix.length);
    prefix = joined;
  }
  try {
    const tokenizer = wasmCall(() => importer.tokenizer(), (e) => `${file.name}: its vocabulary cannot be used for chat: ${e.message}`);
    const plan = JSON.parse(importer.plan());
    progress.totalBytes = plan.sourceBytes;
    const shardName = (i) => `shard-${String(i).padStart(5, "0")}.bin`;
    const shardLength = (i) => Math.min(plan.shardBytes, plan.totalBytes - i * plan.shardBytes);
    const shardCount = Math.ceil(plan.totalBytes / plan.shardBytes);

    // Shards an interrupted import stored already (whole ones only: a put is atomic).
    const shards = [];
    while (shards.length < shardCount) {
      const i = shards.length;
      const bytes = await store.get(`${base}${shardName(i)}`);
      if (!bytes || bytes.length !== shardLength(i)) break;
      shards.push({ file: shardName(i), bytes: bytes.length, sha256: await sha256Hex(bytes) });
    }
    const resumeAt = shards.length * plan.shardBytes;
    if (!(store instanceof MemoryStore)) await ensureQuota(plan.totalBytes - resumeAt);

    // Each step's output appended to the shard being filled; full shards stored.
    let written = resumeAt;
    let buffer = shards.length < shardCount ? new Uint8Array(shardLength(shards.length)) : undefined;
    let filled = 0;
    const append = async (out) => {
      while (out.length) {
        const n = Math.min(out.length, buffer.length - filled);
        buffer.set(out.subarray(0, n), filled);
        filled += n;
        written += n;
        out = out.subarray(n);
        if (filled === buffer.length) {
          const i = shards.length;
          shards.push({ file: shardName(i), bytes: buffer.length, sha256: await sha256Hex(buffer) });
          await put(store, `${base}${shardName(i)}`, buffer, `shard ${shardName(i)}`, plan.totalBytes);
          buffer = i + 1 < shardCount ? new Uint8Array(shardLength(i + 1)) : undefined;
          filled = 0;
        }
      }
    };
    for (const [index, [offset, length, outputOffset, outputLength]] of plan.steps.entries()) {
      if (outputLength > 0 && outputOffset + outputLength <= resumeAt) {
        progress.loadedBytes += length;
        continue;
      }
      const bytes = await read(offset, offset + length);
      const out = wasmCall(() => importer.run(index, bytes));
      progress.loadedBytes += length;
      report();
      const skip = Math.max(0, resumeAt - outputOffset);
      if (outputOffset + skip !== written) {
        throw namedError("ModelFormatError", `${file.name}: import step ${index} lands at byte ${outputOffset + skip}, the package is at ${written}`);
      }
      await append(out.subarray(skip));
    }
    if (shards.length !== shardCount) {
      throw namedError("ModelFormatError", `${file.name}: the import made ${shards.length} of ${shardCount} shards`);
    }
    const manifestText = wasmCall(() => importer.manifest(JSON.stringify(shards)));
    const warnings = JSON.parse(importer.warnings());
    const encode = (text) => new TextEncoder().encode(text);
    await put(store, `${base}tokenizer.json`, encode(tokenizer), "tokenizer.json", plan.totalBytes);
    await put(store, manifestUrl, encode(manifestText), "model.json", plan.totalBytes);
    return { manifest: JSON.parse(manifestText), baseUrl: manifestUrl, networkBytes: progress.networkBytes, warnings };
  } finally {
    importer.free();
  }
}

/** Rethrows a wasm error as a named Error (with `describe` applied to the message, if given). */
function wasmCall(f, describe) {
  try {
    return f();
  } catch (e) {
    const error = asNamedError(e);
    if (describe) error.message = describe(error);
    throw error;
  }
}

function asNamedError(e) {
  return e instanceof Error ? e : namedError("PhiWebError", String(e));
}

/** Where the package made from `file` lives in the store: one folder per source, version and format choice. */
async function packageBase(file, quant) {
  const key = JSON.stringify(["phi-web/2", file.key, file.length, quant]);
  const hash = (await sha256Hex(new TextEncoder().encode(key))).slice(0, 32);
  const origin = globalThis.location?.origin && globalThis.location.origin !== "null" ? globalThis.location.origin : "http://localhost";
  return `${origin}/.phi-web-import/${hash}/`;
}

/**
 * A GGUF to read: {name, key, length, remote, read(start, end, onBytes)}.
 * `key` changes when the file does (URL + ETag or Last-Modified; a File's name, size and date).
 */
async function openSource(source) {
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    const name = source.name ?? "model.gguf";
    return {
      name,
      key: `file:${name}:${source.size}:${source.lastModified ?? ""}`,
      length: source.size,
      remote: false,
      probeBytes: 0,
      read: async (start, end, onBytes) => {
        const bytes = new Uint8Array(await source.slice(start, end).arrayBuffer());
        onBytes(bytes.length);
        return bytes;
      },
    };
  }
  const url = new URL(source, globalThis.location?.href).href;
  // A first tiny range tells the length and version of the file, all a
  // cached import needs.
  const probe = await rangeRequest(url, 0, 8);
  const probeBytes = (await probe.response.arrayBuffer()).byteLength;
  const { total, version } = probe;
  return {
    name: url,
    key: `${url}\n${version}`,
    length: total,
    remote: true,
    probeBytes,
    read: async (start, end, onBytes) => {
      const { response } = await rangeRequest(url, start, end, { total, version });
      return readBody(response, url, end - start, onBytes);
    },
  };
}

/** Fetches bytes [start, end) of `url`; checks the answer is that range of the same file. */
async function rangeRequest(url, start, end, expected) {
  let response;
  const abort = new AbortController();
  try {
    response = await fetch(url, { headers: { range: `bytes=${start}-${end - 1}` }, cache: "no-store", signal: abort.signal });
  } catch (e) {
    throw namedError(
      "NetworkError",
      `${url}: ${e.message}. If the file is on another site, that server must allow this page by CORS ` +
        "(Hugging Face does); run createEngine again to resume an interrupted import",
    );
  }
  if (response.status === 404) throw namedError("NetworkError", `${url}: HTTP 404, no such file; check the URL`);
  if (!response.ok) throw namedError("NetworkError", `${url}: HTTP ${response.status} ${response.statusText}`);
  if ((response.headers.get("content-type") ?? "").includes("text/html")) {
    response.body?.cancel().catch(() => {});
    throw namedError("ModelFormatError", `${url}: the server sent an HTML page, not a GGUF file; check the URL (on Hugging Face, use the …/resolve/main/….gguf link)`);
  }
  if (response.status !== 206) {
    abort.abort(); // the connection, not only our reader: the whole file would follow
    throw namedError(
      "RangeNotSupportedError",
      `${url}: the server ignored the range request (HTTP ${response.status} instead of 206), so the GGUF would have to ` +
        "be held in memory whole. Serve it from a server with range support (Hugging Face, S3, nginx, `phi-web serve`), " +
        "or download it and pass the File to createEngine",
    );
  }
  const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(response.headers.get("content-range") ?? "");
  if (!range) {
    response.body?.cancel().catch(() => {});
    throw namedError("RangeNotSupportedError", `${url}: a 206 answer without a readable Content-Range (a cross-origin server must list it in Access-Control-Expose-Headers)`);
  }
  const [gotStart, gotEnd, total] = range.slice(1).map(Number);
  const version = response.headers.get("etag") ?? response.headers.get("last-modified") ?? "";
  if (expected && (total !== expected.total || version !== expected.version)) {
    response.body?.cancel().catch(() => {});
    throw namedError("NetworkError", `${url} changed on the server during the import (length or ETag); run createEngine again`);
  }
  if (gotStart !== start || gotEnd !== Math.min(end, total) - 1) {
    response.body?.cancel().catch(() => {});
    throw namedError("NetworkError", `${url}: asked for bytes ${start}-${end - 1}, the server sent ${gotStart}-${gotEnd}`);
  }
  return { response, total, version };
}

/** A response's body, exactly `length` bytes, reporting progress. */
async function readBody(response, url, length, onBytes) {
  const bytes = new Uint8Array(length);
  let received = 0;
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (received + value.length > length) throw namedError("NetworkError", `${url}: the server sent more bytes than the range asked for`);
      bytes.set(value, received);
      received += value.length;
      onBytes(value.length);
    }
  } catch (e) {
    if (e.name === "NetworkError") throw e;
    throw namedError("NetworkError", `${url}: the download broke off (${e.message}); run createEngine again to resume where it stopped`);
  }
  if (received !== length) {
    throw namedError("NetworkError", `${url}: ${received} of ${length} bytes arrived; run createEngine again to resume where it stopped`);
  }
  return bytes;
}
