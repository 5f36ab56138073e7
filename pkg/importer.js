// GGUF files (by URL or as a File) and Hugging Face folders (config.json,
// safetensors, tokenizer files, by URL) converted in the browser into a
// phi-web package in the shard cache, so that the next visit loads it like
// any package. The plan (which byte range each step reads, where its output
// goes) comes from the wasm GgufImporter / HfImporter
// (src/formats/gguf_import.rs, hf_import.rs), the same code as `phi-web
// convert`, so the shards equal the native converter's.
//
// Reads are range requests (`Range: bytes=a-b`, answered 206): the whole
// file is never in memory, only one tensor at a time and the shard being
// filled. A server that ignores ranges is an error that says what to do.
// The cache key is the URL plus its ETag (or Last-Modified) and length (a
// folder: every safetensors file's, and config.json); shards are stored
// whole, model.json last, so an interrupted import resumes at the first
// missing shard and a failed one leaves no model.json behind.

import { ensureQuota, importRecordUrl, importRoot, MemoryStore, namedError, put, sha256Hex, sourceKind } from "./loader.js";

/** Bytes read for the header at first; quadrupled while the header runs past them. */
const HEADER_READ = 1 << 20;

/** The folder files an HF import reads when present (config.json is required). */
const HF_FILES = [
  "config.json",
  "model.safetensors.index.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "generation_config.json",
  "preprocessor_config.json",
  "modules.json",
  "sentence_bert_config.json",
  "1_Pooling/config.json",
];

/**
 * Converts `source` (a GGUF or an HF folder: sourceKind) into a package in
 * `store`, unless it is there already, and returns {manifest, baseUrl,
 * networkBytes, warnings}: baseUrl is the package's model.json URL in the store.
 * options: {store, quant ("": the source's defaults), onProgress, wasm: {GgufImporter, HfImporter}}
 */
export async function importModel(source, { store, quant = "", onProgress = () => {}, wasm }) {
  const progress = { phase: "import", loadedBytes: 0, totalBytes: 0, networkBytes: 0 };
  const report = () => onProgress({ ...progress });
  const counted = (file) => (n) => {
    if (file.remote) progress.networkBytes += n;
    report();
  };
  const hf = sourceKind(source) === "hf";
  // Which package a URL was imported into, for checkCachedModel, deleteCachedModel and offline loads.
  const recordUrl = typeof source === "string" ? await importRecordUrl(source, quant) : undefined;
  const cachedPackage = async (base) => {
    const cached = base && (await store.get(`${base}model.json`));
    return cached && { manifest: JSON.parse(new TextDecoder().decode(cached)), baseUrl: `${base}model.json` };
  };
  let opened;
  try {
    opened = hf ? await openFolder(source, counted) : await openGguf(source, counted);
  } catch (e) {
    // Offline (fetch itself failed): the last import of this URL, if any.
    const record = e.unreachable && recordUrl && (await store.get(recordUrl));
    const found = record && (await cachedPackage(JSON.parse(new TextDecoder().decode(record)).base));
    if (found) return { ...found, networkBytes: 0, warnings: [] };
    throw e;
  }
  progress.networkBytes += opened.probeBytes;
  const base = await packageBase(opened.key, quant);
  const saveRecord = async () => {
    if (recordUrl) await put(store, recordUrl, new TextEncoder().encode(JSON.stringify({ base })), "the import record", 0);
  };
  const found = await cachedPackage(base);
  if (found) {
    await saveRecord();
    return { ...found, networkBytes: progress.networkBytes, warnings: [] };
  }
  const manifestUrl = `${base}model.json`;
  const importer = hf ? await planFolder(opened, quant, wasm.HfImporter) : await planGguf(opened, quant, wasm.GgufImporter);
  try {
    const plan = JSON.parse(wasmCall(() => importer.plan()));
    const tokenizer = wasmCall(
      () => importer.tokenizer(),
      (e) => `${opened.name}: its vocabulary cannot be used for chat: ${e.message}`,
    );
    if (tokenizer === undefined) {
      throw namedError("ModelFormatError", `${opened.name}: no tokenizer.json, so the model cannot chat; add the model's tokenizer files`);
    }
    progress.totalBytes = plan.sourceBytes;
    await saveRecord(); // before any shard, so that deleteCachedModel finds an unfinished import
    const shards = await convert({ importer, plan, store, base, name: opened.name, read: opened.read, progress, report });
    const manifestText = wasmCall(() => importer.manifest(JSON.stringify(shards), tokenizer));
    const warnings = JSON.parse(importer.warnings());
    const encode = (text) => new TextEncoder().encode(text);
    await put(store, `${base}tokenizer.json`, encode(tokenizer), "tokenizer.json", plan.totalBytes);
    await put(store, manifestUrl, encode(manifestText), "model.json", plan.totalBytes);
    return { manifest: JSON.parse(manifestText), baseUrl: manifestUrl, networkBytes: progress.networkBytes, warnings };
  } finally {
    importer.free();
  }
}

/**
 * Runs the plan's steps and stores their output as shards (whole ones only:
 * a put is atomic); resumes after the shards an interrupted import stored.
 * Returns the shard list for model.json.
 */
async function convert({ importer, plan, store, base, name, read, progress, report }) {
  const shardName = (i) => `shard-${String(i).padStart(5, "0")}.bin`;
  const shardLength = (i) => Math.min(plan.shardBytes, plan.totalBytes - i * plan.shardBytes);
  const shardCount = Math.ceil(plan.totalBytes / plan.shardBytes);
  const shards = [];
  while (shards.length < shardCount) {
    const i = shards.length;
    const bytes = await store.get(`${base}${shardName(i)}`);
    if (!bytes || bytes.length !== shardLength(i)) break;
    shards.push({ file: shardName(i), bytes: bytes.length, sha256: await sha256Hex(bytes) });
  }
  const resumeAt = shards.length * plan.shardBytes;
  if (!(store instanceof MemoryStore)) await ensureQuota(plan.totalBytes - resumeAt);

  // Each step's output is appended to the shard being filled.
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
  for (const [index, [offset, length, outputOffset, outputLength, file]] of plan.steps.entries()) {
    if (outputLength > 0 && outputOffset + outputLength <= resumeAt) {
      progress.loadedBytes += length;
      continue;
    }
    const bytes = await read(plan.files[file], offset, offset + length);
    const out = wasmCall(() => importer.run(index, bytes));
    progress.loadedBytes += length;
    report();
    const skip = Math.max(0, resumeAt - outputOffset);
    if (outputOffset + skip !== written) {
      throw namedError("ModelFormatError", `${name}: import step ${index} lands at byte ${outputOffset + skip}, the package is at ${written}`);
    }
    await append(out.subarray(skip));
  }
  if (shards.length !== shardCount) {
    throw namedError("ModelFormatError", `${name}: the import made ${shards.length} of ${shardCount} shards`);
  }
  return shards;
}

/**
 * A GGUF to read: {name, key, probeBytes, read(_, start, end)}. `key`
 * changes when the file does (URL + ETag or Last-Modified + length; a File's
 * name, size and date).
 */
async function openGguf(source, counted) {
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    const file = { name: source.name ?? "model.gguf", length: source.size, remote: false, probeBytes: 0 };
    file.key = `file:${file.name}:${source.size}:${source.lastModified ?? ""}`;
    file.read = async (_, start, end) => {
      const bytes = new Uint8Array(await source.slice(start, end).arrayBuffer());
      counted(file)(bytes.length);
      return bytes;
    };
    return file;
  }
  const url = new URL(source, globalThis.location?.href).href;
  // A first tiny range tells the length and version of the file, all a cached import needs.
  const probe = await rangeRequest(url, 0, 8);
  const probeBytes = (await probe.response.arrayBuffer()).byteLength;
  const { total, version } = probe;
  const file = { name: url, key: `${url}\n${version}\n${total}`, length: total, remote: true, probeBytes };
  file.read = async (_, start, end) => {
    const { response } = await rangeRequest(url, start, end, { total, version });
    return readBody(response, url, end - start, counted(file));
  };
  return file;
}

/** The wasm GgufImporter for `file`, its header read until it parses. */
async function planGguf(file, quant, GgufImporter) {
  let prefix = await file.read(null, 0, Math.min(file.length, HEADER_READ));
  for (;;) {
    const importer = wasmCall(() => GgufImporter.open(prefix, file.length, file.name, quant));
    if (importer) return importer;
    const more = await file.read(null, prefix.length, Math.min(file.length, prefix.length * 4));
    const joined = new Uint8Array(prefix.length + more.length);
    joined.set(prefix);
    joined.set(more, prefix.length);
    prefix = joined;
  }
}

/**
 * A Hugging Face-style folder at a URL ending in "/": its small files
 * (HF_FILES that exist) and safetensors files (the index's, or
 * model.safetensors), each probed for length, version and header length.
 */
async function openFolder(source, counted) {
  const base = new URL(source, globalThis.location?.href).href;
  const folder = { name: base, remote: true, probeBytes: 0, files: {}, safetensors: [] };
  const texts = await Promise.all(HF_FILES.map((name) => fetchText(new URL(name, base).href)));
  HF_FILES.forEach((name, i) => {
    if (texts[i] !== undefined) folder.files[name] = texts[i];
  });
  if (folder.files["config.json"] === undefined) {
    throw namedError("NetworkError", `${base}config.json: HTTP 404; a Hugging Face folder URL must end in "/" and hold config.json`);
  }
  folder.probeBytes = texts.reduce((n, t) => n + (t?.length ?? 0), 0);
  let names = ["model.safetensors"];
  const index = folder.files["model.safetensors.index.json"];
  if (index !== undefined) {
    let map;
    try {
      map = JSON.parse(index).weight_map;
    } catch {}
    if (!map || typeof map !== "object") throw namedError("ModelFormatError", `${base}model.safetensors.index.json: no weight_map object`);
    names = [...new Set(Object.values(map))].sort();
  }
  for (const name of names) {
    const url = new URL(name, base).href;
    const probe = await rangeRequest(url, 0, 8);
    const first = new Uint8Array(await probe.response.arrayBuffer());
    folder.probeBytes += first.length;
    const headerLength = first.length === 8 ? Number(new DataView(first.buffer).getBigUint64(0, true)) : Infinity;
    if (!(headerLength <= Math.min(100 << 20, probe.total - 8))) {
      const hint = first[0] === 0x3c ? " (this looks like HTML)" : "";
      throw namedError("ModelFormatError", `${url}: not a safetensors file: a header of ${headerLength} bytes does not fit its ${probe.total} bytes${hint}`);
    }
    folder.safetensors.push({ name, url, total: probe.total, version: probe.version, headerLength });
  }
  folder.key = JSON.stringify([base, folder.files["config.json"], folder.safetensors.map((s) => [s.name, s.total, s.version])]);
  folder.read = async (name, start, end) => {
    const file = folder.safetensors.find((s) => s.name === name);
    const { response } = await rangeRequest(file.url, start, end, file);
    return readBody(response, file.url, end - start, counted(folder));
  };
  return folder;
}

/** The wasm HfImporter for `folder`, every safetensors header added. */
async function planFolder(folder, quant, HfImporter) {
  const importer = wasmCall(() => new HfImporter(folder.name, JSON.stringify(folder.files), quant));
  try {
    for (const file of folder.safetensors) {
      const header = await folder.read(file.name, 8, 8 + file.headerLength);
      wasmCall(() => importer.addSafetensors(file.name, file.total, header));
    }
  } catch (e) {
    importer.free();
    throw e;
  }
  return importer;
}

/** A NetworkError for a fetch that did not reach the server (offline, DNS, CORS). */
function unreachable(message) {
  const error = namedError("NetworkError", message);
  error.unreachable = true;
  return error;
}

/** A small file's text, or undefined for a 404. */
async function fetchText(url) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store" });
  } catch (e) {
    throw unreachable(`${url}: ${e.message}. If the folder is on another site, that server must allow this page by CORS (Hugging Face does)`);
  }
  if (response.status === 404) return undefined;
  if (!response.ok) throw namedError("NetworkError", `${url}: HTTP ${response.status} ${response.statusText}`);
  if ((response.headers.get("content-type") ?? "").includes("text/html")) {
    throw namedError("ModelFormatError", `${url}: the server sent an HTML page; check the folder URL (on Hugging Face: …/resolve/main/)`);
  }
  return response.text();
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

/** Where the package made from a source lives in the store: one folder per source, version and format choice. */
async function packageBase(sourceKey, quant) {
  const key = JSON.stringify(["phi-web/2", sourceKey, quant]);
  const hash = (await sha256Hex(new TextEncoder().encode(key))).slice(0, 32);
  return `${importRoot()}${hash}/`;
}

/** Fetches bytes [start, end) of `url`; checks the answer is that range of the same file. */
async function rangeRequest(url, start, end, expected) {
  let response;
  const abort = new AbortController();
  try {
    response = await fetch(url, { headers: { range: `bytes=${start}-${end - 1}` }, cache: "no-store", signal: abort.signal });
  } catch (e) {
    throw unreachable(
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
