// GGUF files and Hugging Face folders loaded straight into the browser
// (pkg/importer.js): Debian's Chromium, WebGPU on SwiftShader, the SmolLM2
// GGUF and a tiny bf16 Phi-3 folder served by range from a local server.
// Run by `make test-web`:
//   node tests/web/import.mjs GGUF PACKAGE_DIR PHI_WEB_BINARY
// PACKAGE_DIR is the same GGUF converted natively (`phi-web convert`).
//
// Checks: a 404, a server that ignores ranges, a GGUF truncated mid-tensor,
// a wrong magic and an unsupported tensor type are each a named error with
// the URL that writes nothing to the cache; an import broken off mid-download
// fails with a NetworkError, keeps its whole shards and resumes from them;
// the imported package's shards equal the native converter's byte for byte
// and its greedy answer equals the native CLI's; a second load reads no
// tensor bytes; a File from a file input loads and answers the same; the
// tiny Phi-3 (bf16, its safetensors split in two with an index) loads by
// folder URL at q8_0 into the shards `phi-web convert --quant q8_0` makes
// and answers as the CLI does on them; a folder without config.json or with
// an HTML page for its weights is a named error.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./server.mjs";

const [ggufPath, packageDir, phiWeb] = process.argv.slice(2);
const root = new URL("../..", import.meta.url).pathname;
const QUESTION = "What is the capital of France?";
const figures = {};

function step(name) {
  console.log(`web import | ${name}`);
}

const native = JSON.parse(
  execFileSync(phiWeb, ["generate", packageDir, "--chat", "--prompt", QUESTION, "--max-tokens", "12", "--context", "512", "--json"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  }),
);
const nativeManifest = JSON.parse(readFileSync(join(packageDir, "model.json"), "utf8"));
const ggufBytes = statSync(ggufPath).size;

// Broken files: the GGUF cut mid-tensor, bytes that are not a GGUF, and a
// GGUF whose one tensor is Q5_K (no kernel, no conversion).
const scratch = mkdtempSync(join(tmpdir(), "phi-web-gguf-"));
const whole = readFileSync(ggufPath);
writeFileSync(join(scratch, "truncated.gguf"), whole.subarray(0, Math.floor(whole.length * 0.6)));
writeFileSync(join(scratch, "notgguf.gguf"), Buffer.concat([Buffer.from("PK\x03\x04"), whole.subarray(4, 4096)]));
writeFileSync(join(scratch, "q5k.gguf"), ggufWithOneTensor("blk.0.attn_q.weight", 13, [256, 4]));

// The tiny bf16 Phi-3 as a hub folder: safetensors split in two with an
// index, and a 512-token vocabulary (tiny PhiMoE's) so that it can chat.
const folder = join(scratch, "tiny-phi3");
execFileSync("mkdir", ["-p", folder]);
for (const [dir, name] of [["tiny-phi3", "config.json"], ["tiny-phi3", "generation_config.json"], ["tiny-phimoe", "tokenizer.json"], ["tiny-phimoe", "tokenizer_config.json"]]) {
  writeFileSync(join(folder, name), readFileSync(join(root, "tests/data", dir, name)));
}
splitSafetensors(join(root, "tests/data/tiny-phi3/model.safetensors"), folder);
// A folder whose weights are an HTML page (a login wall).
const htmlFolder = join(scratch, "html-weights");
execFileSync("mkdir", ["-p", htmlFolder]);
writeFileSync(join(htmlFolder, "config.json"), readFileSync(join(folder, "config.json")));
writeFileSync(join(htmlFolder, "model.safetensors"), "<!doctype html><title>Sign in</title><p>Please sign in to download this model.");
execFileSync(phiWeb, ["convert", folder, join(scratch, "tiny-phi3-q8"), "--quant", "q8_0"], { stdio: "ignore" });
const nativeFolder = JSON.parse(
  execFileSync(phiWeb, ["generate", join(scratch, "tiny-phi3-q8"), "--chat", "--prompt", QUESTION, "--max-tokens", "8", "--json"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  }),
);
const nativeFolderManifest = JSON.parse(readFileSync(join(scratch, "tiny-phi3-q8", "model.json"), "utf8"));

/** Writes `file`'s tensors as two safetensors files plus model.safetensors.index.json in `dir`. */
function splitSafetensors(file, dir) {
  const bytes = readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString());
  const names = Object.keys(header).filter((n) => n !== "__metadata__");
  const parts = [names.filter((_, i) => i % 2 === 0), names.filter((_, i) => i % 2 === 1)];
  const weightMap = {};
  parts.forEach((part, p) => {
    const partName = `model-0000${p + 1}-of-00002.safetensors`;
    const partHeader = {};
    const data = [];
    let offset = 0;
    for (const name of part) {
      const [begin, end] = header[name].data_offsets;
      partHeader[name] = { ...header[name], data_offsets: [offset, offset + end - begin] };
      data.push(bytes.subarray(8 + headerLength + begin, 8 + headerLength + end));
      offset += end - begin;
      weightMap[name] = partName;
    }
    const json = Buffer.from(JSON.stringify(partHeader));
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(json.length));
    writeFileSync(join(dir, partName), Buffer.concat([length, json, ...data]));
  });
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}

function ggufWithOneTensor(name, type, dims) {
  const u32 = (n) => Buffer.from(new Uint32Array([n]).buffer);
  const u64 = (n) => Buffer.from(new BigUint64Array([BigInt(n)]).buffer);
  const str = (s) => Buffer.concat([u64(Buffer.byteLength(s)), Buffer.from(s)]);
  const kv = Buffer.concat([str("general.architecture"), u32(8), str("llama")]);
  const info = Buffer.concat([str(name), u32(dims.length), ...dims.map(u64), u32(type), u64(0)]);
  const header = Buffer.concat([Buffer.from("GGUF"), u32(3), u64(1), u64(1), kv, info]);
  const padded = Buffer.concat([header, Buffer.alloc(32 - (header.length % 32))]);
  return Buffer.concat([padded, Buffer.alloc(176 * 4)]); // 4 rows of one 256-element Q5_K block
}

const server = await startServer({
  root,
  models: {},
  files: {
    "smollm2.gguf": ggufPath,
    "truncated.gguf": join(scratch, "truncated.gguf"),
    "notgguf.gguf": join(scratch, "notgguf.gguf"),
    "q5k.gguf": join(scratch, "q5k.gguf"),
  },
  folders: { "tiny-phi3": folder, "html-weights": htmlFolder },
});
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless=new",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--enable-unsafe-webgpu",
    "--enable-features=Vulkan",
    "--use-webgpu-adapter=swiftshader",
  ],
});
const page = await (await browser.newContext()).newPage();
page.on("pageerror", (e) => console.log("page error:", e.message));
await page.goto(`${server.url}/`);
await page.waitForFunction(() => window.ready === true);
const served = (path) => server.bytes.get(path) ?? 0;
const importedKeys = () =>
  page.evaluate(async () => (await (await caches.open("phi-web-shards-v1")).keys()).map((r) => r.url).filter((u) => u.includes("/.phi-web-import/")));

try {
  step("bad input: each a named error with the URL; nothing in the cache");
  const failures = await page.evaluate(async () => {
    const out = {};
    for (const path of ["/gguf/missing.gguf", "/gguf-norange/smollm2.gguf", "/gguf/truncated.gguf", "/gguf/notgguf.gguf", "/gguf/q5k.gguf"]) {
      try {
        await phiWeb.createEngine(path, { contextLength: 256 });
        out[path] = "loaded";
      } catch (e) {
        out[path] = `${e.name}: ${e.message}`;
      }
    }
    return out;
  });
  const url = (path) => `${server.url}${path}`.replace(/[.]/g, "\\.");
  assert.match(failures["/gguf/missing.gguf"], new RegExp(`^NetworkError: ${url("/gguf/missing.gguf")}: HTTP 404.*check the URL`));
  assert.match(failures["/gguf-norange/smollm2.gguf"], new RegExp(`^RangeNotSupportedError: ${url("/gguf-norange/smollm2.gguf")}: the server ignored the range request .*File`));
  assert.match(failures["/gguf/truncated.gguf"], new RegExp(`^ModelFormatError: ${url("/gguf/truncated.gguf")}: truncated: tensor \\S+ needs bytes .*; download it again`));
  assert.match(failures["/gguf/notgguf.gguf"], new RegExp(`^ModelFormatError: ${url("/gguf/notgguf.gguf")}: not a GGUF file: .*; check that the path or URL names a \\.gguf file`));
  assert.match(failures["/gguf/q5k.gguf"], /^UnsupportedError: .*Q5_K.*q5k\.gguf; supported: .*Q4_K.*llama-quantize/);
  assert.deepEqual(await importedKeys(), [], "a failed import stores nothing");

  step("an import broken off mid-download is a NetworkError and keeps its whole shards");
  const broken = await page.evaluate(async () => {
    try {
      await phiWeb.createEngine("/gguf-cut/smollm2.gguf", { contextLength: 512 });
      return "loaded";
    } catch (e) {
      return `${e.name}: ${e.message}`;
    }
  });
  assert.match(broken, /^NetworkError: .*gguf-cut\/smollm2\.gguf: .*run createEngine again to resume/);
  const kept = await importedKeys();
  assert.ok(kept.some((u) => u.endsWith("shard-00000.bin")), `kept ${kept}`);
  assert.ok(!kept.some((u) => u.endsWith("model.json")), "no model.json before the import ends");
  const firstTry = served("/gguf-cut/smollm2.gguf");

  step("the second try resumes: the rest of the file only; shards equal the native converter's; greedy text equals the CLI's");
  const resumed = await page.evaluate(async (question) => {
    const progress = [];
    window.engine = await phiWeb.createEngine("/gguf-cut/smollm2.gguf", { contextLength: 512, onProgress: (p) => progress.push(p) });
    const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: question }], max_tokens: 12, temperature: 0 });
    const cache = await caches.open("phi-web-shards-v1");
    const manifestUrl = (await cache.keys()).map((r) => r.url).find((u) => u.includes("/.phi-web-import/") && u.endsWith("model.json"));
    const manifest = await (await cache.match(manifestUrl)).json();
    return { reply, manifest, stats: await engine.stats(), phases: [...new Set(progress.map((p) => p.phase))] };
  }, QUESTION);
  const secondTry = served("/gguf-cut/smollm2.gguf") - firstTry;
  assert.ok(secondTry < ggufBytes * 0.5, `the resumed import read ${secondTry} of ${ggufBytes} bytes`);
  assert.deepEqual(resumed.phases, ["import", "download", "ready"]);
  assert.deepEqual(
    resumed.manifest.shards.map((s) => [s.bytes, s.sha256]),
    nativeManifest.shards.map((s) => [s.bytes, s.sha256]),
    "the browser's shards are the native converter's",
  );
  assert.deepEqual(resumed.manifest.tensors, nativeManifest.tensors);
  assert.deepEqual(resumed.manifest.config, nativeManifest.config);
  assert.equal(resumed.manifest.chat_template, nativeManifest.chat_template);
  assert.deepEqual(resumed.manifest.stop_token_ids, nativeManifest.stop_token_ids);
  assert.equal(resumed.reply.choices[0].message.content, native.text);
  assert.equal(resumed.stats.networkBytes, secondTry, "stats().networkBytes counts what the server sent");
  figures.gguf_bytes = ggufBytes;
  figures.first_try_bytes = firstTry;
  figures.resumed_bytes = secondTry;
  figures.import_load_ms = resumed.stats.loadMs;

  step("a second load reads no tensor bytes (one 8-byte probe for the file's length and ETag)");
  const before = served("/gguf-cut/smollm2.gguf");
  const again = await page.evaluate(async () => {
    await engine.unload();
    window.engine = await phiWeb.createEngine("/gguf-cut/smollm2.gguf", { contextLength: 512 });
    return engine.stats();
  });
  assert.equal(served("/gguf-cut/smollm2.gguf") - before, 8);
  assert.equal(again.networkBytes, 8);
  figures.cached_load_ms = again.loadMs;

  step("checkCachedModel knows the GGUF by its URL; unreachable, the URL loads from the cache");
  const listed = await page.evaluate(() => phiWeb.checkCachedModel("/gguf-cut/smollm2.gguf"));
  assert.equal(listed.complete, true);
  assert.equal(listed.source, `${server.url}/gguf-cut/smollm2.gguf`);
  assert.ok(listed.url.includes("/.phi-web-import/") && listed.bytes > 0.9 * ggufBytes, JSON.stringify(listed));
  await page.context().route("**/gguf-cut/**", (route) => route.abort("internetdisconnected"));
  const offline = await page.evaluate(async () => {
    await engine.unload();
    window.engine = await phiWeb.createEngine("/gguf-cut/smollm2.gguf", { contextLength: 512 });
    return engine.stats();
  });
  await page.context().unroute("**/gguf-cut/**");
  assert.equal(offline.networkBytes, 0);

  step("a File from a file input loads and answers as the CLI does");
  await page.evaluate(async () => {
    await engine.unload();
    const input = document.createElement("input");
    input.type = "file";
    input.id = "gguf";
    document.body.append(input);
  });
  await page.setInputFiles("#gguf", ggufPath);
  const fromFile = await page.evaluate(async (question) => {
    const file = document.querySelector("#gguf").files[0];
    const engine = await phiWeb.createEngine(file, { contextLength: 512, cache: "none" });
    const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: question }], max_tokens: 12, temperature: 0 });
    const stats = await engine.stats();
    await engine.unload();
    return { reply, stats };
  }, QUESTION);
  assert.equal(fromFile.reply.choices[0].message.content, native.text);
  assert.equal(fromFile.stats.networkBytes, 0);
  figures.file_load_ms = fromFile.stats.loadMs;

  step("a Hugging Face folder (bf16, two safetensors files) by URL at q8_0: the native converter's shards, the CLI's answer");
  const hf = await page.evaluate(async (question) => {
    const progress = [];
    const engine = await phiWeb.createEngine("/hf/tiny-phi3/", { quant: "q8_0", contextLength: 256, onProgress: (p) => progress.push(p) });
    const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: question }], max_tokens: 8, temperature: 0 });
    await engine.unload();
    const cache = await caches.open("phi-web-shards-v1");
    const urls = (await cache.keys()).map((r) => r.url).filter((u) => u.includes("/.phi-web-import/") && u.endsWith("model.json"));
    const manifests = await Promise.all(urls.map(async (u) => (await cache.match(u)).json()));
    const errors = [];
    for (const path of ["/hf/missing/", "/hf/html-weights/"]) {
      errors.push(await phiWeb.createEngine(path).then(() => "loaded", (e) => `${e.name}: ${e.message}`));
    }
    return { reply, manifest: manifests.find((m) => m.source.endsWith("/hf/tiny-phi3/")), phases: [...new Set(progress.map((p) => p.phase))], errors };
  }, QUESTION);
  assert.deepEqual(hf.phases, ["import", "download", "ready"]);
  assert.deepEqual(
    hf.manifest.shards.map((s) => [s.bytes, s.sha256]),
    nativeFolderManifest.shards.map((s) => [s.bytes, s.sha256]),
    "the browser's q8_0 shards are the native converter's",
  );
  assert.deepEqual(hf.manifest.tensors, nativeFolderManifest.tensors);
  assert.deepEqual(hf.manifest.config, nativeFolderManifest.config);
  assert.deepEqual(hf.manifest.stop_token_ids, nativeFolderManifest.stop_token_ids);
  assert.equal(hf.manifest.quantization, "q8_0 for matrices, f32 for vectors");
  assert.equal(hf.reply.choices[0].message.content, nativeFolder.text);
  assert.match(hf.errors[0], /^NetworkError: .*\/hf\/missing\/config\.json: HTTP 404; a Hugging Face folder URL must end in "\/" and hold config\.json/);
  assert.match(hf.errors[1], /^ModelFormatError: .*\/hf\/html-weights\/model\.safetensors: not a safetensors file: .*\(this looks like HTML\)/);
  const manifests = (await importedKeys()).filter((u) => u.endsWith("model.json"));
  assert.equal(manifests.length, 2, `imports in the cache: SmolLM2's and the folder's (${manifests})`);

  step("deleteCachedModel(GGUF URL) removes its import, record included");
  const deleted = await page.evaluate(async () => {
    const ok = await phiWeb.deleteCachedModel("/gguf-cut/smollm2.gguf");
    return { ok, after: await phiWeb.checkCachedModel("/gguf-cut/smollm2.gguf"), again: await phiWeb.deleteCachedModel("/gguf-cut/smollm2.gguf") };
  });
  assert.deepEqual([deleted.ok, deleted.after.complete, deleted.again], [true, false, false]);
  const left = await importedKeys();
  assert.equal(left.filter((u) => u.endsWith("model.json")).length, 1, `left: ${left}`);
  assert.equal(left.filter((u) => u.endsWith(".bin")).length, hf.manifest.shards.length, `left: ${left}`);
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify({ gguf: figures }));
