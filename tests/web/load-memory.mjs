// Peak memory while the npm package loads a model in Chromium (WebGPU on
// SwiftShader), sampled from outside: the resident memory of the renderer
// process (page + worker: JS heap, ArrayBuffers, wasm) and of the GPU process
// (where SwiftShader keeps the GPU buffers). Not a test; a measurement:
//
//   node tests/web/load-memory.mjs MODEL_DIR
//
// (a model package with a tokenizer, e.g. target/web-models/smollm2, or the
// 2.1 GB synthetic Phi-3-mini from `cargo run --release --example
// synthetic_phi3_mini`). Loads it twice (cold: download and cache; warm:
// from the cache), each in a fresh page. Prints one JSON line.

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./server.mjs";

const [modelDir] = process.argv.slice(2);
const root = new URL("../..", import.meta.url).pathname;
const server = await startServer({ root, models: { model: modelDir } });
const profile = mkdtempSync(join(tmpdir(), "phi-web-memory-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"],
});

// Resident set sizes (bytes) of this browser's processes, by --type.
function rssByType() {
  const out = execFileSync("ps", ["-eo", "rss=,args="], { encoding: "utf8" });
  const totals = {};
  for (const line of out.split("\n")) {
    if (!line.includes(profile)) continue;
    const [, kb, args] = line.match(/^\s*(\d+)\s+(.*)$/) ?? [];
    if (!kb) continue;
    const type = args.match(/--type=([\w-]+)/)?.[1] ?? "browser";
    totals[type] = (totals[type] ?? 0) + Number(kb) * 1024;
  }
  return totals;
}

const peak = {};
const sampler = setInterval(() => {
  for (const [type, bytes] of Object.entries(rssByType())) peak[type] = Math.max(peak[type] ?? 0, bytes);
}, 250);

try {
  const page = await context.newPage();
  await page.goto(`${server.url}/`);
  const mb = (b) => Math.round(b / 1e5) / 10;
  const figures = {};
  for (const visit of ["cold", "warm"]) {
    await page.reload();
    await page.waitForFunction(() => window.ready === true);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const before = rssByType();
    for (const type of Object.keys(peak)) delete peak[type];
    const stats = await page.evaluate(async () => {
      const engine = await phiWeb.createEngine("/models/model/model.json", { contextLength: 512 });
      const stats = await engine.stats();
      await engine.unload();
      return stats;
    });
    Object.assign(figures, {
      model_mb: mb(stats.weightBytes),
      gpu_storage_mb: mb(stats.gpuBytes),
      [`${visit}_load_ms`]: Math.round(stats.loadMs),
      [`${visit}_network_mb`]: mb(stats.networkBytes),
      [`${visit}_wasm_memory_mb`]: mb(stats.wasmMemoryBytes),
      [`${visit}_renderer_rss_growth_mb`]: mb((peak.renderer ?? 0) - (before.renderer ?? 0)),
      [`${visit}_gpu_process_rss_peak_mb`]: mb(peak["gpu-process"] ?? 0),
    });
  }
  console.log(JSON.stringify(figures));
} finally {
  clearInterval(sampler);
  await context.close();
  server.close();
  rmSync(profile, { recursive: true, force: true });
}
