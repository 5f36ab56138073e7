// The npm package in a real browser: Debian's Chromium with SwiftShader's
// WebGPU adapter, SmolLM2 served from a local server. Run by `make test-web`
// (part of `make test`): node tests/web/e2e.mjs MODEL_DIR PHI_WEB_BINARY
//
// With only a software adapter, `backend: "auto"` runs SmolLM2 and MiniLM on
// the CPU backend (wasm SIMD), as the native CLI does over lavapipe; the
// models the CPU backend does not run (PhiMoE), Phi-3-small's block-sparse
// kernels (backend: "webgpu"; once on the CPU backend too) and the lost
// device run on WebGPU, which is what only WebGPU can show.
//
// Checks: a greedy completion equals the native CLI's (SmolLM2, and a tiny
// PhiMoE for the mixture-of-experts kernels, with every expert resident
// and through an expert cache under a gpuMemoryBudget); streamed content equals
// the non-streamed; interrupt() and an AbortSignal stop a generation; a second
// load fetches no shard bytes; a corrupted cached shard is refetched; a
// corrupted shard or an HTML page on the server is an error naming the shard
// that leaves nothing in the cache; JSON-schema and grammar answers are valid
// (ajv) and equal the native CLI's, tool calls validate and stream as returned; OPFS works as the cache too; the package bundled by Vite from its npm
// tarball (tests/web/vite-build.sh) loads too. Prints figures as JSON at the end.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import { chromium } from "playwright-core";
import { expertSizes } from "../../pkg/loader.js";
import { startServer } from "./server.mjs";

const [modelDir, phiWeb, minilmDir, phimoeDir, phimoeF32Dir, phi3smallDir, phi3smallF32Dir, phi3vF32Dir] = process.argv.slice(2);
const root = new URL("../..", import.meta.url).pathname;
const QUESTION = "What is the capital of France?";
const figures = {};

function step(name) {
  console.log(`web e2e | ${name}`);
}

// The native engine's greedy answer, for comparison.
const nativeAnswer = (dir) =>
  JSON.parse(
    execFileSync(phiWeb, ["generate", dir, "--chat", "--prompt", QUESTION, "--max-tokens", "12", "--context", "512", "--json"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }),
  );
const native = nativeAnswer(modelDir);
const nativeMoe = nativeAnswer(phimoeDir);

// A schema the browser and the native CLI answer through, and a validator
// that is not the library that produced the answers.
// SwiftShader decodes SmolLM2 at about 0.5 tokens/s: answers are kept short.
const PERSON = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 12 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    role: { enum: ["student", "teacher", "engineer"] },
  },
  required: ["name", "age", "role"],
  additionalProperties: false,
};
const PERSON_QUESTION = "Describe Ada, a 36-year-old engineer who likes chess.";
const schemaFile = join(mkdtempSync(join(tmpdir(), "phi-web-e2e-")), "person.json");
writeFileSync(schemaFile, JSON.stringify(PERSON));
const nativePerson = JSON.parse(
  execFileSync(phiWeb, ["generate", modelDir, "--chat", "--prompt", PERSON_QUESTION, "--max-tokens", "40", "--context", "512", "--json-schema", schemaFile, "--json"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  }),
);
const ajv = new Ajv({ strict: true });
const WEATHER = {
  type: "function",
  function: {
    name: "weather",
    description: "The weather in a city today.",
    parameters: {
      type: "object",
      properties: { city: { enum: ["Paris", "Oslo", "Rome"] } },
      required: ["city"],
      additionalProperties: false,
    },
  },
};

const server = await startServer({
  root,
  models: {
    smollm2: modelDir,
    minilm: minilmDir,
    phimoe: phimoeDir,
    "phimoe-f32": phimoeF32Dir,
    phi3small: phi3smallDir,
    "phi3small-f32": phi3smallF32Dir,
    "phi3v-f32": phi3vF32Dir,
  },
  folders: { "phi3v-images": join(root, "tests/data/tiny-phi3v/images") },
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
    "--enable-precise-memory-info",
  ],
});
const context = await browser.newContext();
const page = await context.newPage();
page.on("pageerror", (e) => console.log("page error:", e.message));
await page.goto(`${server.url}/`);
await page.waitForFunction(() => window.ready === true);
const shardRequests = () => [...server.requests].filter(([p]) => p.endsWith(".bin")).reduce((n, [, c]) => n + c, 0);

try {
  step("cold load in a worker");
  const cold = await page.evaluate(async () => {
    const progress = [];
    window.engine = await phiWeb.createEngine("/models/smollm2/model.json", {
      contextLength: 512,
      onProgress: (p) => progress.push(p),
    });
    return { stats: await engine.stats(), progress };
  });
  const last = cold.progress.at(-1);
  assert.equal(last.phase, "ready");
  assert.equal(last.shardsDone, last.shardsTotal);
  assert.equal(cold.stats.networkBytes, last.totalBytes, "a cold load downloads every shard");
  assert.ok(cold.progress.some((p) => p.phase === "download" && p.loadedBytes > 0 && p.loadedBytes < p.totalBytes));
  assert.equal(cold.stats.backend, "cpu", "auto prefers the CPU backend to a software WebGPU adapter");
  assert.match(cold.stats.backendReason, /software rasterizer/i);
  figures.backend = `${cold.stats.backend} (${cold.stats.simd}, ${cold.stats.threads} threads): ${cold.stats.backendReason}`;
  figures.cold_load_ms = cold.stats.loadMs;
  figures.wasm_memory_bytes_after_load = cold.stats.wasmMemoryBytes;
  figures.memory_bytes = cold.stats.memoryBytes;
  figures.model_bytes = last.totalBytes;

  step("greedy completion equals the native CLI");
  const reply = await page.evaluate(async (q) => {
    return engine.chat.completions.create({ messages: [{ role: "user", content: q }], max_tokens: 12, temperature: 0 });
  }, QUESTION);
  assert.equal(reply.object, "chat.completion");
  assert.equal(reply.choices[0].message.role, "assistant");
  assert.equal(reply.choices[0].message.content, native.text);
  assert.equal(reply.choices[0].finish_reason, native.finish_reason);
  assert.equal(reply.usage.completion_tokens, native.tokens.length);
  assert.equal(reply.usage.prompt_tokens, native.stats.prompt_tokens);
  const greedyStats = await page.evaluate(() => engine.stats());
  figures.prefill_tokens_per_s = greedyStats.prefill_tokens_per_s;
  figures.decode_tokens_per_s = greedyStats.decode_tokens_per_s;
  figures.ttft_ms = greedyStats.ttft_ms;

  step("tokenize(text) gives the native CLI's ids, special tokens included; a non-string is a TypeError");
  const TURN = "<|im_start|>user\nCafé  au lait, 1234 ☕ 東京<|im_end|>\n";
  const nativeIds = JSON.parse(execFileSync(phiWeb, ["tokenize", modelDir, "--text", TURN], { encoding: "utf8" })).ids;
  const tokenized = await page.evaluate(async (text) => {
    const ids = await engine.tokenize(text);
    const refused = await engine.tokenize(42).then(() => "resolved", (e) => e.name);
    return { ids: Array.from(ids), isUint32: ids instanceof Uint32Array, refused };
  }, TURN);
  assert.deepEqual(tokenized.ids, nativeIds);
  assert.ok(tokenized.isUint32 && nativeIds.length > 10, `${nativeIds}`);
  assert.equal(tokenized.refused, "TypeError");

  step("streamed content equals the non-streamed, and the prompt's cache is reused");
  const streamed = await page.evaluate(async (q) => {
    const chunks = [];
    const stream = await engine.chat.completions.create({ messages: [{ role: "user", content: q }], max_tokens: 12, stream: true });
    for await (const chunk of stream) chunks.push(chunk);
    return { chunks, stats: await engine.stats() };
  }, QUESTION);
  const text = streamed.chunks.map((c) => c.choices[0].delta.content ?? "").join("");
  assert.equal(text, native.text);
  assert.equal(streamed.chunks.at(-1).choices[0].finish_reason, native.finish_reason);
  assert.equal(streamed.chunks[0].object, "chat.completion.chunk");
  assert.ok(streamed.stats.cached_tokens > 30, `cached_tokens ${streamed.stats.cached_tokens}`);

  step("response_format: a JSON schema's answer validates (ajv) and equals the native CLI's; a grammar admits only its words");
  const structured = await page.evaluate(
    async ({ schema, question }) => {
      const person = await engine.chat.completions.create({
        messages: [{ role: "user", content: question }],
        max_tokens: 40,
        response_format: { type: "json_schema", json_schema: { name: "person", schema, strict: true } },
      });
      const stats = await engine.stats();
      const grammar = 'start: answer "."\nanswer: "yes" | "no" | "maybe later"';
      const words = [];
      for (const q of ["Is the sky blue?"]) {
        const r = await engine.chat.completions.create({
          messages: [{ role: "user", content: q }],
          max_tokens: 8,
          response_format: { type: "grammar", grammar },
        });
        words.push(r.choices[0].message.content);
      }
      const errors = [];
      for (const response_format of [
        { type: "json_schema", json_schema: { schema: { type: "strnig" } } },
        { type: "grammar", grammar: "start: undefined_rule" },
        { type: "yaml" },
      ]) {
        try {
          await engine.chat.completions.create({ messages: [{ role: "user", content: "hi" }], response_format });
          errors.push("no error");
        } catch (e) {
          errors.push(`${e.name}: ${e.message}`);
        }
      }
      return { person, stats, words, errors };
    },
    { schema: PERSON, question: PERSON_QUESTION },
  );
  const person = structured.person.choices[0];
  assert.equal(person.finish_reason, "stop", person.message.content);
  assert.ok(ajv.validate(PERSON, JSON.parse(person.message.content)), `${person.message.content}: ${ajv.errorsText()}`);
  assert.equal(person.message.content, nativePerson.text, "the browser's constrained answer is the native CLI's");
  assert.ok(structured.stats.masks >= nativePerson.tokens.length - 1, `${structured.stats.masks} masks`);
  figures.mask_ms_smollm2 = structured.stats.mask_ms;
  for (const word of structured.words) assert.ok(["yes.", "no.", "maybe later."].includes(word), word);
  assert.match(structured.errors[0], /^InputError: .*strnig/);
  assert.match(structured.errors[1], /^InputError: .*undefined_rule/);
  assert.match(structured.errors[2], /^InputError: .*yaml/);

  step("tools: a required call validates and streams as it is returned");
  const tools = await page.evaluate(async (tool) => {
    const messages = [{ role: "user", content: "What's the weather in Paris?" }];
    const request = { messages, tools: [tool], tool_choice: "required", max_tokens: 40 };
    const whole = await engine.chat.completions.create(request);
    const chunks = [];
    for await (const chunk of await engine.chat.completions.create({ ...request, stream: true })) chunks.push(chunk);
    return { whole, chunks };
  }, WEATHER);
  const called = tools.whole.choices[0];
  assert.equal(called.finish_reason, "tool_calls");
  assert.equal(called.message.content, null);
  const [call] = called.message.tool_calls;
  assert.equal(call.type, "function");
  assert.equal(call.function.name, "weather");
  assert.ok(ajv.validate(WEATHER.function.parameters, JSON.parse(call.function.arguments)), `${call.function.arguments}: ${ajv.errorsText()}`);
  const deltas = tools.chunks.flatMap((c) => c.choices[0].delta.tool_calls ?? []);
  assert.ok(deltas.length > 2, `${deltas.length} tool-call deltas`);
  assert.match(deltas[0].id, /^call_[0-9a-f]{24}$/);
  assert.equal(deltas[0].function.name, call.function.name);
  assert.equal(deltas.map((d) => d.function.arguments).join(""), call.function.arguments, "streamed arguments = returned arguments");
  assert.equal(tools.chunks.at(-1).choices[0].finish_reason, "tool_calls");
  assert.ok(tools.chunks.every((c) => !c.choices[0].delta.content));
  figures.tool_call_arguments = call.function.arguments;

  step("interrupt() stops a generation mid-stream");
  const interrupted = await page.evaluate(async () => {
    const messages = [{ role: "user", content: "Write a long story about a dragon." }];
    let deltas = 0;
    let finish;
    for await (const chunk of await engine.chat.completions.create({ messages, max_tokens: 40, stream: true })) {
      if (chunk.choices[0].delta.content) deltas += 1;
      if (deltas === 2) engine.interrupt();
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    return { deltas, finish };
  });
  assert.equal(interrupted.finish, "abort");
  assert.ok(interrupted.deltas < 10, `${interrupted.deltas} deltas after interrupt`);

  step("an AbortSignal rejects the request with an AbortError");
  const aborted = await page.evaluate(async () => {
    const controller = new AbortController();
    const messages = [{ role: "user", content: "Write a long story about a dragon." }];
    try {
      for await (const chunk of await engine.chat.completions.create({ messages, max_tokens: 40, stream: true, signal: controller.signal })) {
        if (chunk.choices[0].delta.content) controller.abort();
      }
      return "no error";
    } catch (e) {
      return e.name;
    }
  });
  assert.equal(aborted, "AbortError");

  step("a second load fetches no shard bytes");
  const before = shardRequests();
  const warm = await page.evaluate(async () => {
    await engine.unload();
    window.engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512 });
    return engine.stats();
  });
  assert.equal(shardRequests(), before);
  assert.equal(warm.networkBytes, 0);
  assert.equal(warm.shardsFromCache, 2);
  figures.warm_load_ms = warm.loadMs;

  step("kvCache: \"q8\" stores the KV cache in 8 bits and still answers; \"f32\" in 32; an unknown one is a TypeError");
  const q8 = await page.evaluate(async () => {
    const f16 = await engine.stats();
    await engine.unload();
    window.engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512, kvCache: "q8" });
    const reply = await engine.chat.completions.create({
      messages: [{ role: "user", content: "What is the capital of France?" }],
      max_tokens: 8,
      temperature: 0,
    });
    const q8 = await engine.stats();
    await engine.unload();
    window.engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512, kvCache: "f32" });
    const f32 = await engine.stats();
    let unknown;
    try {
      await phiWeb.createEngine("/models/smollm2/model.json", { kvCache: "int4" });
    } catch (e) {
      unknown = { name: e.name, message: e.message };
    }
    return { f16, q8, f32, text: reply.choices[0].message.content, unknown };
  });
  assert.equal(q8.f16.kvCache, "f16");
  assert.equal(q8.q8.kvCache, "q8");
  assert.equal(q8.f32.kvCache, "f32");
  // SmolLM2: 30 layers, K and V, 512 positions of 192 values: 384 bytes as f16,
  // 192 + 6 scales x 4 as q8, 768 as f32.
  // (The CPU backend's memoryBytes: weights and KV cache.)
  assert.equal(q8.f16.memoryBytes - q8.q8.memoryBytes, 30 * 2 * 512 * (384 - 216));
  assert.equal(q8.f32.memoryBytes - q8.f16.memoryBytes, 30 * 2 * 512 * (768 - 384));
  assert.match(q8.text, /Paris/);
  assert.equal(q8.unknown?.name, "TypeError", JSON.stringify(q8.unknown));

  step("a corrupted cached shard is detected and fetched again");
  const repaired = await page.evaluate(async () => {
    await engine.unload();
    const cache = await caches.open("phi-web-shards-v1");
    const url = new URL("/models/smollm2/shard-00001.bin", location.href).href;
    const bytes = new Uint8Array(await (await cache.match(url)).arrayBuffer());
    bytes[12345] ^= 1;
    await cache.put(url, new Response(bytes));
    window.engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512 });
    const stats = await engine.stats();
    const listed = await phiWeb.checkCachedModel("/models/smollm2/model.json");
    await engine.unload();
    return { stats, listed };
  });
  assert.equal(shardRequests(), before + 1, "only the corrupted shard is fetched again");
  assert.equal(repaired.stats.shardsFromCache, 1);
  assert.equal(repaired.listed.complete, true);

  step("a corrupted shard on the server is an error naming it, and is not cached");
  const corrupt = await page.evaluate(async () => {
    try {
      await phiWeb.createEngine("/models/corrupt/model.json", { contextLength: 512 });
      return { name: "no error" };
    } catch (e) {
      const cache = await caches.open("phi-web-shards-v1");
      const cached = await cache.match(new URL("/models/corrupt/shard-00001.bin", location.href).href);
      return { name: e.name, message: e.message, cached: Boolean(cached) };
    }
  });
  assert.equal(corrupt.name, "ShardError", corrupt.message);
  assert.match(corrupt.message, /shard-00001\.bin.*sha256.*corrupted/);
  assert.equal(corrupt.cached, false);

  step("an HTML page instead of a shard is an error naming it");
  const html = await page.evaluate(async () => {
    try {
      await phiWeb.createEngine("/models/html/model.json", { contextLength: 512, cache: "none" });
      return { name: "no error" };
    } catch (e) {
      return { name: e.name, message: e.message };
    }
  });
  assert.equal(html.name, "ShardError", html.message);
  assert.match(html.message, /shard-00000\.bin: the server sent an HTML page/);

  step("the package bundled by Vite from its npm tarball loads the model in its worker");
  const app = await context.newPage(); // shares the origin's storage
  app.on("pageerror", (e) => console.log("vite app error:", e.message));
  await app.goto(`${server.url}/vite/index.html`);
  await app.waitForFunction(() => window.ready === true);
  const bundled = await app.evaluate(async () => {
    const engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512 });
    const stats = await engine.stats();
    await engine.unload();
    return stats;
  });
  assert.equal(bundled.shardsFromCache, 2, JSON.stringify(bundled));
  await app.close();

  step("a lost GPU device is a DeviceLostError, and reload() recreates the engine from the cache");
  const lost = await page.evaluate(async () => {
    const engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512, backend: "webgpu" });
    const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }];
    await engine.loseDevice();
    let error;
    try {
      await engine.chat.completions.create({ messages, max_tokens: 1 });
    } catch (e) {
      error = { name: e.name, message: e.message };
    }
    await engine.reload();
    const after = await engine.chat.completions.create({ messages, max_tokens: 1 });
    const stats = await engine.stats();
    await engine.unload();
    return { error, after: after.usage, stats };
  });
  assert.match(lost.stats.adapter, /swiftshader/i, "stats() names the adapter");
  figures.adapter = lost.stats.adapter;
  figures.gpu_bytes = lost.stats.gpuBytes;
  assert.equal(lost.error?.name, "DeviceLostError", JSON.stringify(lost.error));
  assert.match(lost.error.message, /device was lost.*create the engine again/);
  assert.equal(lost.after.completion_tokens, 1);
  assert.equal(lost.stats.networkBytes, 0, "the reload reads the cache");

  step("the engine on the page's own thread (worker: false), with its JS heap sampled while loading");
  const inPage = await page.evaluate(async () => {
    let peakHeap = 0;
    const sample = () => (peakHeap = Math.max(peakHeap, performance.memory.usedJSHeapSize));
    const engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512, worker: false, onProgress: sample });
    sample();
    const stats = await engine.stats();
    const ids = Array.from(await engine.tokenize("<|im_start|>user\nhi"));
    await engine.unload();
    return { stats, peakHeap, ids };
  });
  assert.equal(inPage.stats.shardsFromCache, 2);
  assert.deepEqual(inPage.ids, JSON.parse(execFileSync(phiWeb, ["tokenize", modelDir, "--text", "<|im_start|>user\nhi"], { encoding: "utf8" })).ids);
  figures.in_page_peak_js_heap_bytes = inPage.peakHeap;
  figures.in_page_wasm_memory_bytes = inPage.stats.wasmMemoryBytes;

  step("the origin private file system as the cache");
  const opfs = await page.evaluate(async () => {
    const options = { contextLength: 512, cache: "opfs" };
    let engine = await phiWeb.createEngine("/models/smollm2/model.json", options);
    const cold = await engine.stats();
    await engine.unload();
    engine = await phiWeb.createEngine("/models/smollm2/model.json", options);
    const warm = await engine.stats();
    await engine.unload();
    const listed = await phiWeb.checkCachedModel("/models/smollm2/model.json", { cache: "opfs" });
    await phiWeb.deleteCachedModel("/models/smollm2/model.json", { cache: "opfs" });
    const deleted = await phiWeb.checkCachedModel("/models/smollm2/model.json", { cache: "opfs" });
    return { cold, warm, listed, deleted };
  });
  assert.equal(opfs.cold.shardsFromCache, 0);
  assert.equal(opfs.warm.networkBytes, 0);
  assert.equal(opfs.warm.shardsFromCache, 2);
  assert.equal(opfs.listed.complete, true);
  assert.equal(opfs.deleted.shardsCached, 0);

  step("deleting a cached model");
  const deleted = await page.evaluate(async () => {
    await phiWeb.deleteCachedModel("/models/smollm2/model.json");
    return phiWeb.checkCachedModel("/models/smollm2/model.json");
  });
  assert.equal(deleted.shardsCached, 0);

  // tests/data/tiny-phimoe (16 experts, sparsemixer, LongRoPE, window): prefill
  // on the grouped expert matmul, decode on the expert matvec, in Chromium.
  step("a mixture-of-experts model (tiny PhiMoE) answers as the native CLI does");
  const moe = await page.evaluate(async (q) => {
    const engine = await phiWeb.createEngine("/models/phimoe/model.json", { contextLength: 512 });
    const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: q }], max_tokens: 12, temperature: 0 });
    const stats = await engine.stats();
    await engine.unload();
    return { reply, stats };
  }, QUESTION);
  assert.equal(moe.reply.choices[0].message.content, nativeMoe.text);
  assert.equal(moe.reply.usage.completion_tokens, nativeMoe.tokens.length);
  assert.equal(moe.reply.usage.prompt_tokens, nativeMoe.stats.prompt_tokens);
  figures.phimoe_decode_tokens_per_s = moe.stats.decode_tokens_per_s;

  // A gpuMemoryBudget that leaves 3 of the 16 experts per layer on the GPU:
  // misses read the experts back from Cache Storage by range (the package
  // has 50 kB shards, more than the loader keeps in memory) and evict others.
  step("a budget under the experts: an expert cache answers as every expert resident does");
  const sizes = expertSizes(JSON.parse(readFileSync(`${phimoeDir}/model.json`, "utf8")));
  const { resident, expert } = sizes;
  const budget = sizes.budgetFor(3) + Math.floor(expert / 2);
  const cached = await page.evaluate(
    async ({ q, budget }) => {
      const engine = await phiWeb.createEngine("/models/phimoe/model.json", { contextLength: 512, gpuMemoryBudget: budget });
      const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: q }], max_tokens: 12, temperature: 0 });
      const stats = await engine.stats();
      await engine.unload();
      let tooSmall;
      try {
        await phiWeb.createEngine("/models/phimoe/model.json", { contextLength: 512, gpuMemoryBudget: 1000 });
      } catch (e) {
        tooSmall = { name: e.name, message: e.message };
      }
      return { reply, stats, tooSmall };
    },
    { q: QUESTION, budget },
  );
  const nativeCached = JSON.parse(
    execFileSync(phiWeb, ["generate", phimoeDir, "--chat", "--prompt", QUESTION, "--max-tokens", "12", "--context", "512", "--json", "--gpu-memory", String(budget / 1e6)], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }),
  );
  assert.equal(cached.reply.choices[0].message.content, nativeMoe.text);
  assert.equal(nativeCached.text, nativeMoe.text);
  const experts = cached.stats.experts;
  assert.equal(experts.resident_per_layer, 3);
  assert.equal(experts.experts_per_layer, 16);
  assert.ok(experts.lookups - experts.hits > 2 * 3, `evictions were forced: ${JSON.stringify(experts)}`);
  assert.equal(experts.uploaded_bytes, (experts.lookups - experts.hits) * expert);
  assert.equal(nativeCached.stats.experts.hits, experts.hits, "the browser's cache did what the native one did");
  assert.ok(cached.stats.storageRangeReads > 0, "misses were read from Cache Storage by range");
  assert.equal(cached.tooSmall?.name, "MemoryBudgetError");
  assert.match(cached.tooSmall.message, new RegExp(`resident weights take ${resident} bytes`));
  figures.phimoe_cached_hit_rate = experts.hit_rate;
  figures.phimoe_cached_uploaded_bytes_per_token = experts.uploaded_bytes_per_token;
  figures.phimoe_cached_decode_tokens_per_s = cached.stats.decode_tokens_per_s;

  // engine.logits() on the f32 package with the f32 KV cache, against
  // transformers: 16 tokens, and 80 (past the original context of 64: the
  // long factors and long_mscale, two prefill chunks); then with 2 of the 16
  // experts per layer cached, which must give the same logits bit for bit.
  step("tiny PhiMoE's logits in Chromium match transformers' (f32 and q8_0), every expert resident and cached");
  const golden = (file) => {
    const meta = JSON.parse(readFileSync(`${root}tests/data/tiny-phimoe/${file}`, "utf8"));
    const bytes = readFileSync(`${root}tests/data/tiny-phimoe/${meta.logits_file}`);
    return { ids: meta.input_ids, logits: new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) };
  };
  const goldens = [golden("golden.json"), golden("golden-long.json")];
  const goldenQ8 = golden("golden-q8_0.json"); // transformers on the q8_0 package's own weights
  const f32Sizes = expertSizes(JSON.parse(readFileSync(`${phimoeF32Dir}/model.json`, "utf8")));
  const parity = await page.evaluate(
    async ({ sequences, budget, q8Ids }) => {
      const run = async (gpuMemoryBudget) => {
        const engine = await phiWeb.createEngine("/models/phimoe-f32/model.json", { contextLength: 128, kvCache: "f32", gpuMemoryBudget });
        const out = [];
        for (const ids of sequences) out.push(Array.from(await engine.logits(ids)));
        const stats = await engine.stats();
        await engine.unload();
        return { logits: out, expertCache: stats.expertCache };
      };
      const q8 = await phiWeb.createEngine("/models/phimoe/model.json", { contextLength: 128, kvCache: "f32" });
      const q8Logits = Array.from(await q8.logits(q8Ids));
      await q8.unload();
      return { resident: await run(0), cached: await run(budget), q8Logits };
    },
    { sequences: goldens.map((g) => g.ids), budget: f32Sizes.budgetFor(2), q8Ids: goldenQ8.ids },
  );
  const maxDiff = (a, b) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);
  goldens.forEach((g, i) => {
    const err = maxDiff(parity.resident.logits[i], g.logits);
    figures[`phimoe_f32_logit_error_${g.ids.length}_tokens`] = err;
    assert.equal(parity.resident.logits[i].length, g.logits.length);
    assert.ok(err <= 2e-5, `${g.ids.length} tokens: max |logit error| ${err} against transformers`);
    assert.deepEqual(parity.cached.logits[i], parity.resident.logits[i], `${g.ids.length} tokens: the cache changes the logits`);
  });
  // The q8_0 package (the chat steps' one) against transformers on its weights: every top-1.
  const vocab = goldenQ8.logits.length / goldenQ8.ids.length;
  const argmax = (row) => row.reduce((best, x, i) => (x > row[best] ? i : best), 0);
  const q8Error = maxDiff(parity.q8Logits, goldenQ8.logits);
  figures.phimoe_q8_0_logit_error = q8Error;
  assert.ok(q8Error <= 2e-5, `q8_0: max |logit error| ${q8Error} against transformers on the q8_0 weights`);
  goldenQ8.ids.forEach((_, r) => {
    const row = (a) => Array.from(a.slice(r * vocab, (r + 1) * vocab));
    assert.equal(argmax(row(parity.q8Logits)), argmax(row(goldenQ8.logits)), `q8_0 top-1 at position ${r}`);
  });
  assert.equal(parity.resident.expertCache, null);
  assert.equal(parity.cached.expertCache?.resident_per_layer, 2);
  assert.ok(parity.cached.expertCache.lookups - parity.cached.expertCache.hits > 4, "evictions were forced");

  // tests/data/tiny-phi3small against scripts/make_tiny_phi3small.py's
  // reference: dense and block-sparse layers over 40 tokens (ten blocks),
  // read whole, in chunks of 5 and token by token (the decode path), with
  // the f32 and q8 KV caches; and the q8_0 package on its own weights.
  step("tiny Phi-3-small's logits in Chromium match the reference: prefill, chunks and token by token; f32 and q8 KV; q8_0 weights; the CPU backend");
  const smallGolden = (file) => {
    const meta = JSON.parse(readFileSync(`${root}tests/data/tiny-phi3small/${file}`, "utf8"));
    const bytes = readFileSync(`${root}tests/data/tiny-phi3small/${meta.logits_file}`);
    return { ids: meta.input_ids, logits: new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) };
  };
  const [small, smallQ8] = [smallGolden("golden.json"), smallGolden("golden-q8_0.json")];
  // WebGPU (SwiftShader) for the block-sparse WGSL kernels, which `auto`
  // would skip here for the CPU backend; the CPU backend's own run last.
  const gpu = { backend: "webgpu" };
  const runs = [
    ["f32 package, f32 KV, one prefill", "phi3small-f32", { ...gpu, kvCache: "f32" }],
    ["f32 package, f32 KV, chunks of 5", "phi3small-f32", { ...gpu, kvCache: "f32", prefillChunk: 5 }],
    ["f32 package, f32 KV, token by token", "phi3small-f32", { ...gpu, kvCache: "f32", prefillChunk: 1 }],
    ["f32 package, q8 KV, chunks of 5", "phi3small-f32", { ...gpu, kvCache: "q8", prefillChunk: 5 }],
    ["q8_0 package, f32 KV, chunks of 5", "phi3small", { ...gpu, kvCache: "f32", prefillChunk: 5 }],
    ["f32 package, f32 KV, chunks of 5, CPU backend", "phi3small-f32", { backend: "cpu", kvCache: "f32", prefillChunk: 5 }],
  ];
  const { out: smallLogits, gpuBytes: smallGpuBytes, refused: badChunk } = await page.evaluate(
    async ({ runs, ids, gpu }) => {
      const [out, gpuBytes] = [[], []];
      for (const [, model, options] of runs) {
        const engine = await phiWeb.createEngine(`/models/${model}/model.json`, { contextLength: 64, ...options });
        out.push(Array.from(await engine.logits(ids)));
        gpuBytes.push((await engine.stats()).gpuBytes);
        await engine.unload();
      }
      const refused = await phiWeb.createEngine("/models/phi3small/model.json", { ...gpu, prefillChunk: 5000 }).then(() => "loaded", (e) => e.name);
      return { out, gpuBytes, refused };
    },
    { runs, ids: small.ids, gpu },
  );
  // prefillChunk sizes the activation scratch: token by token holds less than 64 at a time.
  assert.ok(smallGpuBytes[2] < smallGpuBytes[0], `prefillChunk 1: ${smallGpuBytes[2]} GPU bytes, default: ${smallGpuBytes[0]}`);
  assert.equal(badChunk, "TypeError");
  const smallVocab = small.logits.length / small.ids.length;
  const top1 = (a, b) =>
    small.ids.filter((_, r) => argmax(Array.from(a.slice(r * smallVocab, (r + 1) * smallVocab))) === argmax(Array.from(b.slice(r * smallVocab, (r + 1) * smallVocab)))).length;
  const largest = small.logits.reduce((m, x) => (x > -1e30 ? Math.max(m, Math.abs(x)) : m), 1);
  runs.forEach(([name, model, options], i) => {
    const reference = model === "phi3small" ? smallQ8 : small;
    const err = maxDiff(smallLogits[i], reference.logits);
    // As natively (tests/phi3small.rs): f32 arithmetic, or q8's rounding of keys and values.
    const bound = options.kvCache === "q8" ? 8e-3 * largest : 2e-5;
    figures[`phi3small_logit_error_${name.replaceAll(/[^a-z0-9]+/g, "_")}`] = err;
    assert.ok(err <= bound, `${name}: max |logit error| ${err} > ${bound}`);
    assert.equal(top1(smallLogits[i], small.logits), small.ids.length, `${name}: top-1 against the f32 reference`);
  });

  // tests/data/tiny-phi3v against scripts/make_tiny_phi3v.py's reference:
  // the browser decodes the PNGs, then the HD transform, the CLIP tower,
  // the projector and the splice run in wasm / WGSL, as natively.
  step("tiny Phi-3.5-vision's logits in Chromium match the reference with one and two images (a URL, a data: URL, a Blob), on the CPU backend and WebGPU");
  const vision = JSON.parse(readFileSync(`${root}tests/data/tiny-phi3v/golden.json`, "utf8"));
  const visionBytes = readFileSync(`${root}tests/data/tiny-phi3v/logits.f32`);
  const visionLogits = new Float32Array(visionBytes.buffer, visionBytes.byteOffset, visionBytes.length / 4);
  const png = (path) => readFileSync(`${root}tests/data/tiny-phi3v/${path}`).toString("base64");
  const visionCases = vision.cases.map((c) => ({ ...c, pngs: c.images.map(png) }));
  const visionOut = await page.evaluate(async ({ cases, vocab }) => {
    const out = {};
    for (const backend of ["cpu", "webgpu"]) {
      const engine = await phiWeb.createEngine("/models/phi3v-f32/model.json", { backend, kvCache: "f32", contextLength: 2048 });
      for (const c of cases) {
        // Image k's rows stand where its id -k first appears.
        const images = c.pngs.map((b64, k) => {
          const at = c.input_ids.indexOf(-(k + 1));
          const name = c.images[k].split("/").pop();
          const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
          const image = [`/hf/phi3v-images/${name}`, `data:image/png;base64,${b64}`, new Blob([bytes], { type: "image/png" })][(k + c.name.length) % 3];
          return { at, image };
        });
        const logits = await engine.logits(c.input_ids.map((id) => Math.max(id, 0)), { images });
        out[`${c.name} ${backend}`] = c.rows.flatMap((r) => Array.from(logits.slice(r * vocab, (r + 1) * vocab)));
      }
      await engine.unload();
    }
    return out;
  }, { cases: visionCases, vocab: vision.vocab });
  for (const c of vision.cases) {
    const want = visionLogits.slice(c.logits_offset, c.logits_offset + c.rows.length * vision.vocab);
    for (const backend of ["cpu", "webgpu"]) {
      const err = maxDiff(visionOut[`${c.name} ${backend}`], want);
      figures[`phi3v_logit_error_${c.name.replaceAll("-", "_")}_${backend}`] = err;
      assert.ok(err <= 1e-3, `${c.name} on ${backend}: max |logit error| ${err}`);
    }
  }

  step("a chat with an image answers as the native CLI; an undecodable image, an image for a text-only model and images beyond the context are named errors, and the engine answers after them");
  const nativeVision = JSON.parse(
    execFileSync(phiWeb, ["generate", phi3vF32Dir, "--image", join(root, "tests/data/tiny-phi3v/images/wide.png"), "--prompt", QUESTION, "--max-tokens", "8", "--context", "2048", "--backend", "cpu", "--json"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }),
  );
  const visionChat = await page.evaluate(async (question) => {
    const ask = (engine, image, text = question) =>
      engine.chat.completions.create({
        messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: image } }, { type: "text", text }] }],
        max_tokens: 8,
      });
    const named = (promise) => promise.then(() => "no error", (e) => `${e.name}: ${e.message}`);
    const engine = await phiWeb.createEngine("/models/phi3v-f32/model.json", { backend: "cpu", contextLength: 2048 });
    const answer = await ask(engine, "/hf/phi3v-images/wide.png");
    const again = await ask(engine, "/hf/phi3v-images/wide.png");
    const stats = await engine.stats();
    const broken = await named(ask(engine, new Blob([new TextEncoder().encode("<!doctype html>not an image")])));
    const missing = await named(ask(engine, "/hf/phi3v-images/missing.png"));
    const after = await engine.chat.completions.create({ messages: [{ role: "user", content: question }], max_tokens: 4 });
    await engine.unload();
    const small = await phiWeb.createEngine("/models/phi3v-f32/model.json", { backend: "cpu", contextLength: 512 });
    const tooLarge = await named(ask(small, "/hf/phi3v-images/wide.png"));
    await small.unload();
    const textOnly = await phiWeb.createEngine("/models/phi3small-f32/model.json", { backend: "cpu", contextLength: 64 });
    const refused = await named(ask(textOnly, "/hf/phi3v-images/wide.png"));
    await textOnly.unload();
    return { answer, again, stats, broken, missing, after: after.choices[0].finish_reason, tooLarge, refused };
  }, QUESTION);
  assert.equal(visionChat.answer.choices[0].message.content, nativeVision.text, "the same greedy answer as the native CLI");
  assert.equal(visionChat.answer.usage.prompt_tokens, nativeVision.stats.prompt_tokens);
  assert.equal(visionChat.again.choices[0].message.content, nativeVision.text);
  assert.equal(visionChat.stats.cached_tokens, nativeVision.stats.prompt_tokens - 1, "the second turn reuses the image's KV cache");
  assert.deepEqual(visionChat.stats.vision, { numCrops: 4, weightBytes: visionChat.stats.vision.weightBytes });
  assert.match(visionChat.broken, /^ImageError: image 1 is not an image the browser can decode/);
  assert.match(visionChat.missing, /^ImageError: image 1 \(\/hf\/phi3v-images\/missing.png\): HTTP 404/);
  assert.ok(["stop", "length"].includes(visionChat.after), visionChat.after);
  assert.match(visionChat.tooLarge, /^InputError: .*757 of them for its images/);
  assert.match(visionChat.refused, /^InputError: .*takes no images/);
  figures.phi3v_prompt_tokens_one_image = nativeVision.stats.prompt_tokens;

  step("an embedding model: embeddings.create matches transformers, and chat is refused");
  const reference = JSON.parse(readFileSync(`${root}tests/data/minilm-reference.json`, "utf8")).sentences;
  const embedded = await page.evaluate(async (reference) => {
    const engine = await phiWeb.createEngine("/models/minilm/model.json");
    const response = await engine.embeddings.create({ input: reference.map((r) => r.text) });
    const dot = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0);
    const cosines = response.data.map((d, i) => dot(d.embedding, reference[i].embedding));
    const single = await engine.embeddings.create({ input: reference[0].text });
    // Throughput: 16 short texts in one request.
    const texts = Array.from({ length: 16 }, (_, i) => `Sentence number ${i} about retrieval in the browser.`);
    const started = performance.now();
    await engine.embeddings.create({ input: texts });
    const textsPerS = (16 * 1000) / (performance.now() - started);
    let chatError;
    try {
      await engine.chat.completions.create({ messages: [{ role: "user", content: "Hi" }] });
    } catch (e) {
      chatError = e.name;
    }
    const stats = await engine.stats();
    await engine.unload();
    return { cosines, usage: response.usage, singleLength: single.data[0].embedding.length, textsPerS, chatError, stats };
  }, reference);
  assert.ok(Math.min(...embedded.cosines) >= 0.999, JSON.stringify(embedded.cosines));
  assert.equal(embedded.singleLength, 384);
  assert.equal(embedded.usage.prompt_tokens, reference.reduce((n, r) => n + r.ids.length, 0));
  assert.equal(embedded.chatError, "InputError");
  assert.equal(embedded.stats.kind, "embedding");
  figures.embedding_min_cosine = Math.min(...embedded.cosines);
  figures.embedding_texts_per_s = embedded.textsPerS;

  // Chromium's quota override (below) is not reflected in storage.estimate(), so
  // the page's estimate() is replaced to check what the loader does with it.
  step("an estimate() too small for the model fails before downloading, giving both numbers");
  const requestsBefore = shardRequests();
  const estimate = await page.evaluate(async () => {
    const real = StorageManager.prototype.estimate;
    StorageManager.prototype.estimate = async () => ({ quota: 60e6, usage: 10e6 });
    try {
      await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512, worker: false });
      return { name: "no error" };
    } catch (e) {
      return { name: e.name, message: e.message };
    } finally {
      StorageManager.prototype.estimate = real;
    }
  });
  assert.equal(estimate.name, "QuotaExceededError", estimate.message);
  assert.match(estimate.message, /needs 97 MB of browser storage but only 50 MB are free/);
  assert.equal(shardRequests(), requestsBefore, "nothing was downloaded");

  // Chromium's quota override is enforced but not reflected in storage.estimate(),
  // so this exercises the refused write, not the up-front estimate check.
  step("too little storage is a QuotaExceededError naming the file and the model's size");
  const cdp = await context.newCDPSession(page);
  await cdp.send("Storage.overrideQuotaForOrigin", { origin: server.url, quotaSize: 20e6 });
  const quota = await page.evaluate(async () => {
    try {
      await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 512 });
      return { name: "no error" };
    } catch (e) {
      return { name: e.name, message: e.message };
    }
  });
  assert.equal(quota.name, "QuotaExceededError", quota.message);
  // Which write is refused (model.json, the tokenizer or a shard) depends on what the origin already stores.
  assert.match(quota.message, /storing .+ \(\d+ MB\) exceeded the browser's storage quota.*this model needs 97 MB.*cache: "none"/);

  console.log(`web e2e | all checks passed | ${JSON.stringify(figures)}`);
} finally {
  await browser.close();
  server.close();
}
