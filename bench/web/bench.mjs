// `make bench` in the browser: phi-web's npm package, wllama (llama.cpp in
// wasm, @wllama/wllama) and transformers.js (ONNX Runtime Web,
// @huggingface/transformers) on the same SmolLM2 weights, in one headless
// Chromium session (WebGPU on SwiftShader; COOP/COEP from `phi-web serve` so
// the wasm peers can use threads). Same chat prompt, greedy, same number of
// new tokens. Each runtime first answers a short warm-up question (wasm
// tiers up from baseline code while it runs hot, ONNX Runtime builds its
// kernels and arenas on the first call): the figures are a warm run's.
//
//   node bench/web/bench.mjs PHI_WEB_BINARY MODELS_DIR OUT.json
//
// MODELS_DIR holds smollm2/ (the phi-web package), smollm2.gguf (the same
// weights as llama.cpp reads them) and smollm2-onnx/ (bench/export_onnx.py:
// the GGUF exported to ONNX, f32 and 4-bit); `make bench` prepares them.
//
// Prints one JSON object and writes it to OUT.json. A peer that cannot run
// gets {"error": "..."} instead of figures.

import { spawn } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [phiWeb, models, out] = process.argv.slice(2);
if (!out) {
  console.error("usage: node bench/web/bench.mjs PHI_WEB_BINARY MODELS_DIR OUT.json");
  process.exit(2);
}
const root = new URL("../..", import.meta.url).pathname;
const NEW_TOKENS = Number(process.env.BENCH_NEW_TOKENS ?? 16);
// 128 prompt tokens once SmolLM2's chat template is applied (peers.md's length).
const QUESTION = process.env.BENCH_QUESTION ??
  "Here are some notes about lighthouses. A lighthouse is a tower with a bright lamp that guides ships at night. " +
  "Keepers once lived in them, trimming wicks and winding the clockwork that turned the lens. Most are automatic now, " +
  "watched from far away, and many have become museums. Visitors climb their stairs in summer, painters set up " +
  "easels on the rocks below, and a few still warn sailors in the fog. Which job did the keepers do, in one sentence?";
const WARM_UP = "Say hello.";
const log = (s) => console.error(`web bench | ${s}`);
// BENCH_PEERS=none: phi-web alone (when tuning it); BENCH_PEERS=a,b: only the
// runs whose names start with a or b (phi_web, wllama, transformers_js_wasm, ...).
const only = process.env.BENCH_PEERS;
const selected = (name) =>
  !only || (only === "none" ? name.startsWith("phi_web") : only.split(",").some((prefix) => name.startsWith(prefix)));

const modules = `${root}bench/web/node_modules`;
const moeDir = `${root}target/bench/synthetic-phi-mini-moe`;
const phi3MiniDir = `${root}target/bench/synthetic-phi3-mini`;
const visionDir = `${root}target/bench/synthetic-phi3-vision`;
const mounts = [
  `/pkg=${root}pkg`,
  `/models=${models}`,
  ...(existsSync(`${moeDir}/model.json`) ? [`/models/phi-mini-moe=${moeDir}`] : []),
  ...(existsSync(`${phi3MiniDir}/model.json`) ? [`/models/phi3-mini=${phi3MiniDir}`] : []),
  ...(existsSync(`${visionDir}/model.json`) ? [`/models/phi3-vision=${visionDir}`] : []),
  `/wllama=${modules}/@wllama/wllama/esm`,
  `/transformers=${modules}/@huggingface/transformers/dist`,
  `/ort=${modules}/onnxruntime-web/dist`,
];
const server = spawn(phiWeb, ["serve", `${root}bench/web`, ...mounts.flatMap((m) => ["--mount", m]), "--port", "0"], {
  stdio: ["ignore", "pipe", "inherit"],
});
const url = await new Promise((resolve, reject) => {
  server.on("exit", (code) => reject(new Error(`phi-web serve exited with ${code}`)));
  createInterface({ input: server.stdout }).once("line", (line) => resolve(line.match(/http:\/\/\S+/)[0]));
});

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--disable-background-networking", "--no-first-run",
    "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"],
});
const context = await browser.newContext();
async function openPage() {
  const page = await context.newPage();
  page.on("pageerror", (e) => log(`page error: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 60_000 });
  page.setDefaultTimeout(0); // a SwiftShader prefill takes minutes
  return page;
}
const page = await openPage();
const report = {
  browser: browser.version(),
  hardware_concurrency: await page.evaluate(() => navigator.hardwareConcurrency),
  cross_origin_isolated: await page.evaluate(() => crossOriginIsolated),
  new_tokens: NEW_TOKENS,
  question: QUESTION,
};

async function attempt(name, run) {
  log(name);
  try {
    report[name] = await run();
  } catch (e) {
    report[name] = { error: String(e?.message ?? e).split("\n")[0] };
  }
  log(`${name}: ${JSON.stringify(report[name])}`);
}

// phi-web on WebGPU (SwiftShader here), and on its CPU backend (wasm SIMD)
// with one thread per core (the page is cross-origin isolated: the Worker
// pool) and with one thread.
const phiWebRuns = [
  ["phi_web", "webgpu", 0],
  ["phi_web_cpu", "cpu", 0],
  ["phi_web_cpu_1_thread", "cpu", 1],
];
for (const [name, backend, threads] of phiWebRuns) if (selected(name)) await attempt(name, () =>
  page.evaluate(async ({ question, warmUp, newTokens, backend, threads }) => {
    await phiWeb.deleteCachedModel("/models/smollm2/model.json").catch(() => {});
    const ask = async (engine) => {
      await engine.chat.completions.create({ messages: [{ role: "user", content: warmUp }], max_tokens: 4, temperature: 0 });
      await engine.resetChat(); // the measured prompt is computed whole, as the peers' are
      const reply = await engine.chat.completions.create({
        messages: [{ role: "user", content: question }],
        max_tokens: newTokens,
        temperature: 0,
      });
      return { reply, stats: await engine.stats() };
    };
    let engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 1024, backend, threads });
    const cold = await engine.stats();
    engine.unload();
    engine = await phiWeb.createEngine("/models/smollm2/model.json", { contextLength: 1024, backend, threads });
    const warm = await engine.stats();
    const { reply, stats } = await ask(engine);
    engine.unload();
    return {
      adapter: stats.backend === "cpu" ? `CPU backend, ${stats.simd}, ${stats.threads} thread(s)` : stats.adapter,
      threads: stats.threads,
      threads_reason: stats.threadsReason,
      wasm_memory_bytes: stats.wasmMemoryBytes,
      cold_load_ms: cold.loadMs,
      warm_load_ms: warm.loadMs,
      prompt_tokens: reply.usage.prompt_tokens,
      cached_tokens: stats.cached_tokens,
      completion_tokens: reply.usage.completion_tokens,
      prefill_tokens_per_s: stats.prefill_tokens_per_s,
      decode_tokens_per_s: stats.decode_tokens_per_s,
      ttft_ms: stats.ttft_ms,
      gpu_bytes: stats.gpuBytes,
      text: reply.choices[0].message.content,
    };
  }, { question: QUESTION, warmUp: WARM_UP, newTokens: NEW_TOKENS, backend, threads }));

// The synthetic Phi-3-mini (3.8B, random q4_0; served from target/bench
// once `phi-web bench` wrote it) on the CPU backend: decode with the Worker
// pool, and the wasm memory after load against the engine's weights + KV.
if (selected("phi_web_cpu_phi3_mini") && existsSync(`${phi3MiniDir}/model.json`)) await attempt("phi_web_cpu_phi3_mini", () =>
  page.evaluate(async ({ newTokens }) => {
    const engine = await phiWeb.createEngine("/models/phi3-mini/model.json", { contextLength: 512, backend: "cpu", cache: "none" });
    const loaded = await engine.stats();
    const reply = await engine.chat.completions.create({
      messages: [{ role: "user", content: "t1 t2 t3 t4 t5 t6 t7 t8" }],
      max_tokens: newTokens,
      temperature: 0,
    });
    const stats = await engine.stats();
    engine.unload();
    return {
      threads: stats.threads,
      prompt_tokens: reply.usage.prompt_tokens,
      completion_tokens: reply.usage.completion_tokens,
      prefill_tokens_per_s: stats.prefill_tokens_per_s,
      decode_tokens_per_s: stats.decode_tokens_per_s,
      weight_bytes_per_token: stats.weightBytes,
      effective_gbps: (stats.weightBytes * stats.decode_tokens_per_s) / 1e9,
      load_ms: loaded.loadMs,
      weights_and_kv_bytes: loaded.memoryBytes,
      wasm_memory_after_load_bytes: loaded.wasmMemoryBytes,
      wasm_memory_over_weights_and_kv: loaded.wasmMemoryBytes / loaded.memoryBytes,
    };
  }, { newTokens: 8 }));

// The synthetic Phi-3.5-vision (the CLIP-L tower, 4 of 32 decoder layers;
// served from target/bench once `phi-web bench` wrote it) on the CPU
// backend: a 640×480 picture (2×2 crops and the global view) through the
// image tower, then the prompt with its 757 image positions.
if (selected("phi_web_cpu_phi3_vision") && existsSync(`${visionDir}/model.json`)) await attempt("phi_web_cpu_phi3_vision", () =>
  page.evaluate(async () => {
    const canvas = new OffscreenCanvas(640, 480);
    const context = canvas.getContext("2d");
    const gradient = context.createLinearGradient(0, 0, 640, 480);
    gradient.addColorStop(0, "#1d4ed8");
    gradient.addColorStop(1, "#f59e0b");
    context.fillStyle = gradient;
    context.fillRect(0, 0, 640, 480);
    const image = await canvas.convertToBlob({ type: "image/png" });
    const engine = await phiWeb.createEngine("/models/phi3-vision/model.json", { contextLength: 1024, backend: "cpu", cache: "none" });
    const reply = await engine.chat.completions.create({
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: image } }, { type: "text", text: "t1 t2 t3" }] }],
      max_tokens: 2,
      temperature: 0,
    });
    const stats = await engine.stats();
    engine.unload();
    // ttft covers the tower and the prefill; the prefill alone is the rest.
    const prefillMs = stats.ttft_ms - stats.images.encode_ms;
    return {
      threads: stats.threads,
      crops: stats.images.crops,
      image_tokens: stats.images.tokens,
      encode_ms_per_image: stats.images.encode_ms,
      encode_ms_per_crop: stats.images.encode_ms / stats.images.crops,
      prompt_tokens: reply.usage.prompt_tokens,
      prefill_tokens_per_s: (1000 * reply.usage.prompt_tokens) / prefillMs,
      memory_bytes: stats.memoryBytes,
    };
  }));

// A synthetic Phi-mini-MoE (real widths, 8 of 32 layers, random q4_0; served
// from target/bench once `phi-web bench` wrote it): decode with every
// expert resident and with half of each layer's experts cached, whose misses
// read Cache Storage. GB/s counts the active bytes a token reads.
if (selected("phi_web_moe") && existsSync(`${moeDir}/model.json`)) await attempt("phi_web_moe", () =>
  page.evaluate(async ({ newTokens }) => {
    const url = "/models/phi-mini-moe/model.json";
    const manifest = await (await fetch(url)).json();
    const run = async (gpuMemoryBudget) => {
      const engine = await phiWeb.createEngine(url, { contextLength: 256, gpuMemoryBudget });
      const reply = await engine.chat.completions.create({
        messages: [{ role: "user", content: "t1 t2 t3 t4 t5 t6 t7 t8" }],
        max_tokens: newTokens,
        temperature: 0,
      });
      const stats = await engine.stats();
      engine.unload();
      return {
        prompt_tokens: reply.usage.prompt_tokens,
        completion_tokens: reply.usage.completion_tokens,
        prefill_tokens_per_s: stats.prefill_tokens_per_s,
        decode_tokens_per_s: stats.decode_tokens_per_s,
        active_bytes_per_token: stats.weightBytes,
        effective_gbps: (stats.weightBytes * stats.decode_tokens_per_s) / 1e9,
        gpu_bytes: stats.gpuBytes,
        load_ms: stats.loadMs,
        expert_cache: stats.experts,
      };
    };
    return { all_resident: await run(0), half_cached: await run(phiWeb.expertSizes(manifest).budgetFor(8)) };
  }, { newTokens: 4 }));

// wllama: its wasm CPU build with 1 and 2 threads, and its WebGPU backend.
const peers = [
  ["wllama_wasm_1_thread", { n_threads: 1, n_gpu_layers: 0 }],
  ["wllama_wasm_2_threads", { n_threads: 2, n_gpu_layers: 0 }],
  ["wllama_webgpu", { n_threads: 2, n_gpu_layers: 99 }],
].filter(([name]) => selected(name));
for (const [name, params] of peers) {
  await attempt(name, () =>
    page.evaluate(async ({ question, warmUp, newTokens, params }) => {
      const wllama = new Wllama({ default: "/wllama/wasm/wllama.wasm" }, { logger: { debug() {}, log() {}, warn() {}, error: console.error } });
      const start = performance.now();
      await wllama.loadModelFromUrl("/models/smollm2.gguf", { n_ctx: 1024, useCache: false, ...params });
      const loadMs = performance.now() - start;
      // cache_prompt: false, so the warm-up's tokens are not reused.
      await wllama.createChatCompletion({ messages: [{ role: "user", content: warmUp }], max_tokens: 4, temperature: 0, cache_prompt: false });
      const reply = await wllama.createChatCompletion({
        messages: [{ role: "user", content: question }],
        max_tokens: newTokens,
        temperature: 0,
        cache_prompt: false,
      });
      await wllama.exit();
      const t = reply.timings ?? {};
      return {
        load_ms: loadMs,
        prompt_tokens: t.prompt_n,
        completion_tokens: t.predicted_n,
        prefill_tokens_per_s: t.prompt_per_second,
        decode_tokens_per_s: t.predicted_per_second,
        ttft_ms: t.prompt_ms,
        text: reply.choices?.[0]?.message?.content,
      };
    }, { question: QUESTION, warmUp: WARM_UP, newTokens: NEW_TOKENS, params }));
}

// transformers.js on the ONNX export: WebGPU and wasm (2 threads, and 1),
// the 4-bit MatMulNBits model (its own re-quantization of the weights) and
// the f32 one (the GGUF's weights exactly, 4x the bytes). Each in a page of
// its own: ONNX Runtime takes its thread count once per page.
const tjsPeers = [
  ["transformers_js_webgpu_q4", { device: "webgpu", dtype: "q4" }],
  ["transformers_js_wasm_q4", { device: "wasm", dtype: "q4" }],
  ["transformers_js_webgpu_fp32", { device: "webgpu", dtype: "fp32" }],
  ["transformers_js_wasm_fp32", { device: "wasm", dtype: "fp32" }],
  ["transformers_js_wasm_fp32_1_thread", { device: "wasm", dtype: "fp32" }, 1],
].filter(([name]) => selected(name));
for (const [name, options, threads = 2] of tjsPeers) {
  const tjsPage = await openPage();
  await attempt(name, () =>
    tjsPage.evaluate(async ({ question, warmUp, newTokens, options, threads }) => {
      const { AutoTokenizer, AutoModelForCausalLM, TextStreamer, env } = window.Transformers;
      Object.assign(env, { allowRemoteModels: false, allowLocalModels: true, localModelPath: "/models/", useBrowserCache: false });
      Object.assign(env.backends.onnx.wasm, { wasmPaths: "/ort/", numThreads: threads });
      const start = performance.now();
      const tokenizer = await AutoTokenizer.from_pretrained("smollm2-onnx");
      const model = await AutoModelForCausalLM.from_pretrained("smollm2-onnx", options);
      const loadMs = performance.now() - start;
      const chat = (content) => tokenizer.apply_chat_template([{ role: "user", content }], { add_generation_prompt: true, return_dict: true });
      await model.generate({ ...chat(warmUp), max_new_tokens: 4, do_sample: false });
      const inputs = chat(question);
      const times = []; // when each new token arrived
      const streamer = new TextStreamer(tokenizer, { skip_prompt: true, token_callback_function: () => times.push(performance.now()) });
      const begin = performance.now();
      const output = await model.generate({ ...inputs, max_new_tokens: newTokens, do_sample: false, streamer });
      await model.dispose();
      const promptTokens = inputs.input_ids.dims[1];
      const ttft = times[0] - begin;
      return {
        threads,
        load_ms: loadMs,
        prompt_tokens: promptTokens,
        completion_tokens: output.dims[1] - promptTokens,
        prefill_tokens_per_s: promptTokens / (ttft / 1000),
        decode_tokens_per_s: (times.length - 1) / ((times.at(-1) - times[0]) / 1000),
        ttft_ms: ttft,
        text: tokenizer.batch_decode(output.slice(null, [promptTokens, null]), { skip_special_tokens: true })[0],
      };
    }, { question: QUESTION, warmUp: WARM_UP, newTokens: NEW_TOKENS, options, threads }));
  await tjsPage.close();
}

// How far the 4-bit export strays from transformers (bench/export_onnx.py).
try {
  report.transformers_js_export = JSON.parse(readFileSync(`${models}/smollm2-onnx/agreement.json`, "utf8"));
} catch {
  report.transformers_js_export = { error: "no ONNX export (bench/export_onnx.py)" };
}

// phi-web ÷ each peer, decode and prefill.
const ours = report.phi_web;
report.ratios = {};
for (const name of [...peers, ...tjsPeers].map(([peerName]) => peerName)) {
  const peer = report[name];
  if (ours?.decode_tokens_per_s && peer?.decode_tokens_per_s) {
    report.ratios[name] = {
      decode: ours.decode_tokens_per_s / peer.decode_tokens_per_s,
      prefill: ours.prefill_tokens_per_s / peer.prefill_tokens_per_s,
    };
  } else {
    report.ratios[name] = { error: peer?.error ?? ours?.error ?? "no figures" };
  }
}
// The CPU backend ÷ the CPU (wasm) peers.
const cpu = report.phi_web_cpu;
report.ratios_cpu_backend = {};
for (const name of [...peers, ...tjsPeers].map(([peerName]) => peerName).filter((n) => !/webgpu/.test(n))) {
  const peer = report[name];
  report.ratios_cpu_backend[name] =
    cpu?.decode_tokens_per_s && peer?.decode_tokens_per_s
      ? { decode: cpu.decode_tokens_per_s / peer.decode_tokens_per_s, prefill: cpu.prefill_tokens_per_s / peer.prefill_tokens_per_s }
      : { error: peer?.error ?? cpu?.error ?? "no figures" };
}
await browser.close();
server.kill();
const json = JSON.stringify(report, null, 2);
writeFileSync(out, json + "\n");
console.log(json);
