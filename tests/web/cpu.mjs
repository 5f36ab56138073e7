// The npm package on its CPU backend (wasm SIMD) in Debian's Chromium. Run by
// `make test-web`: node tests/web/cpu.mjs SMOLLM2_DIR MINILM_DIR PHI_WEB_BINARY
//
// Checks: `backend: "cpu"` answers SmolLM2's greedy question token for token
// as the native CLI's CPU backend does, streams the same text, and reports
// itself in stats(); in a Chromium launched without WebGPU, "auto" falls
// back to the CPU with no error (and "webgpu" is a NoWebGPUError), for a
// chat model and for MiniLM embeddings equal to the native CLI's, and a
// model larger than wasm32 memory is refused before downloading; with the
// SwiftShader adapter as the only one, "auto" prefers the CPU and says why;
// a page that is not cross-origin isolated gets one thread and says so, and
// an isolated one the threaded build on a Worker pool, with the same text.
// Prints figures as JSON at the end.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./server.mjs";

const [modelDir, minilmDir, phiWeb] = process.argv.slice(2);
const root = new URL("../..", import.meta.url).pathname;
const QUESTION = "What is the capital of France?";
const figures = {};

function step(name) {
  console.log(`web cpu | ${name}`);
}

const cli = (args) => JSON.parse(execFileSync(phiWeb, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }));
const native = cli(["generate", modelDir, "--backend", "cpu", "--chat", "--prompt", QUESTION, "--max-tokens", "24", "--context", "512", "--json"]);
const nativeEmbedding = cli(["embed", minilmDir, "--backend", "cpu", "--text", QUESTION]).embedding;

const BASE_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];
// SmolLM2's manifest claiming 5 GB of shards: more than wasm32 addresses.
const hugeDir = mkdtempSync(join(tmpdir(), "phi-web-huge-"));
const hugeManifest = JSON.parse(readFileSync(join(modelDir, "model.json"), "utf8"));
hugeManifest.shards[0].bytes = 5e9;
writeFileSync(join(hugeDir, "model.json"), JSON.stringify(hugeManifest));
const models = { smollm2: modelDir, minilm: minilmDir, huge: hugeDir };
const server = await startServer({ root, models });
const isolatedServer = await startServer({ root, models, isolated: true });

async function openPage(args, url = server.url) {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: [...BASE_ARGS, ...args] });
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.log("page error:", e.message));
  await page.goto(`${url}/`);
  await page.waitForFunction(() => window.ready === true);
  return { browser, page };
}

const ask = (q) =>
  engine.chat.completions.create({ messages: [{ role: "user", content: q }], max_tokens: 24, temperature: 0 }).then(async (reply) => ({
    reply,
    stats: await engine.stats(),
  }));

let failed = false;
try {
  {
    const { browser, page } = await openPage(["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"]);
    step("backend: cpu answers as the native CLI's CPU backend");
    const { reply, stats } = await page.evaluate(async ({ q, ask }) => {
      window.engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512, backend: "cpu" });
      return await eval(ask)(q);
    }, { q: QUESTION, ask: ask.toString() });
    assert.equal(stats.backend, "cpu");
    assert.equal(stats.backendReason, "asked for");
    assert.equal(stats.threads, 1, "a page that is not cross-origin isolated gets one thread");
    assert.match(stats.threadsReason, /not cross-origin isolated/);
    assert.match(stats.simd, /simd128/);
    assert.deepEqual(reply.choices[0].message.content, native.text, "greedy text equals the native CLI's");
    assert.equal(reply.usage.completion_tokens, native.tokens.length);
    figures.cpu_decode_tokens_per_s = stats.decode_tokens_per_s;
    figures.cpu_prefill_tokens_per_s = stats.prefill_tokens_per_s;
    figures.cpu_threads = stats.threads;
    figures.wasm_memory_bytes = stats.wasmMemoryBytes;

    step("streamed text equals the answer");
    const streamed = await page.evaluate(async (q) => {
      let text = "";
      const stream = await engine.chat.completions.create({ messages: [{ role: "user", content: q }], max_tokens: 24, temperature: 0, stream: true });
      for await (const chunk of stream) text += chunk.choices[0].delta.content ?? "";
      return text;
    }, QUESTION);
    assert.equal(streamed, native.text);

    step("auto over the SwiftShader adapter runs on the CPU and says why");
    const auto = await page.evaluate(async () => {
      await engine.unload();
      window.engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512 });
      return await engine.stats();
    });
    assert.equal(auto.backend, "cpu");
    assert.match(auto.backendReason, /software rasterizer/i);
    await browser.close();
  }
  {
    const { browser, page } = await openPage([]);
    step("Chromium without WebGPU: auto falls back to the CPU");
    const result = await page.evaluate(async ({ q, ask }) => {
      const hasGpu = !!navigator.gpu && !!(await navigator.gpu.requestAdapter());
      const refused = await phiWeb.createEngine("/models/smollm2/model.json", { backend: "webgpu" }).then(
        () => "loaded",
        (e) => e.name,
      );
      window.engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512 });
      const chat = await eval(ask)(q);
      const embedder = await phiWeb.createEngine("/models/minilm/model.json");
      const embedded = await embedder.embeddings.create({ input: q });
      const huge = await phiWeb.createEngine("/models/huge/model.json").then(
        () => ({ name: "loaded" }),
        (e) => ({ name: e.name, message: e.message }),
      );
      return { hasGpu, refused, chat, embedding: embedded.data[0].embedding, embedStats: await embedder.stats(), huge };
    }, { q: QUESTION, ask: ask.toString() });
    assert.equal(result.hasGpu, false, "this Chromium has no WebGPU adapter");
    assert.match(result.refused, /NoWebGPUError|GPUError/);
    assert.equal(result.chat.stats.backend, "cpu");
    assert.equal(result.chat.reply.choices[0].message.content, native.text);
    assert.equal(result.embedStats.backend, "cpu");
    const diff = Math.max(...result.embedding.map((v, i) => Math.abs(v - nativeEmbedding[i])));
    figures.minilm_max_abs_diff_vs_native = diff;
    assert.ok(diff < 1e-5, `MiniLM on the CPU in Chromium vs natively: max |diff| ${diff}`);
    step("a model larger than wasm32 memory is a ModelTooLargeError naming both sizes, before any download");
    assert.equal(result.huge.name, "ModelTooLargeError", result.huge.message);
    assert.match(result.huge.message, /needs \d+ bytes .* at most 4294967296/);
    assert.equal([...server.requests.keys()].filter((p) => p.startsWith("/models/huge/") && p !== "/models/huge/model.json").length, 0);
    await browser.close();
  }
  {
    const { browser, page } = await openPage([], isolatedServer.url);
    step("a cross-origin isolated page runs the CPU backend on a Worker pool, token for token as the native CLI");
    const { reply, stats, cores } = await page.evaluate(async ({ q, ask }) => {
      window.engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512 });
      return { ...(await eval(ask)(q)), cores: navigator.hardwareConcurrency };
    }, { q: QUESTION, ask: ask.toString() });
    assert.equal(stats.crossOriginIsolated, true);
    assert.equal(stats.backend, "cpu");
    assert.equal(stats.threads, cores, stats.threadsReason);
    assert.match(stats.threadsReason, /one per core/);
    assert.equal(reply.choices[0].message.content, native.text);
    figures.threads = stats.threads;
    figures.threads_decode_tokens_per_s = stats.decode_tokens_per_s;
    figures.threads_prefill_tokens_per_s = stats.prefill_tokens_per_s;
    figures.threads_wasm_memory_bytes = stats.wasmMemoryBytes;

    step("threads: 1 on the same page is the single-threaded build");
    const single = await page.evaluate(async ({ q, ask }) => {
      await engine.unload();
      window.engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512, threads: 1 });
      return await eval(ask)(q);
    }, { q: QUESTION, ask: ask.toString() });
    assert.equal(single.stats.threads, 1);
    assert.equal(single.stats.threadsReason, "asked for");
    assert.equal(single.reply.choices[0].message.content, native.text);
    await browser.close();
  }
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  server.close();
  isolatedServer.close();
}
console.log(JSON.stringify({ cpu_backend: figures }, null, 2));
process.exit(failed ? 1 : 0);
