// Writes DIR/peers.md from DIR/bench.json (phi-web natively), DIR/llama_cpp.json
// and DIR/web.json: the ratio table the README carries. Run by `make bench`.
//   node bench/table.mjs target/bench

import { readFileSync, writeFileSync } from "node:fs";

const dir = process.argv[2] ?? "target/bench";
const read = (name) => {
  try {
    return JSON.parse(readFileSync(`${dir}/${name}`, "utf8"));
  } catch (e) {
    return { error: `${name}: ${e.message}` };
  }
};
const native = read("bench.json");
const llama = read("llama_cpp.json");
const web = read("web.json");
const fmt = (x, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : "—");
const rows = [];
const row = (what, ours, peer, peerName) => {
  const ratio = Number.isFinite(ours) && Number.isFinite(peer) ? `${fmt(ours / peer, 3)}×` : "—";
  rows.push(`| ${what} | ${fmt(ours)} | ${peerName}: ${fmt(peer)} | ${ratio} |`);
};

// Natively: SmolLM2 through phi-web on the wgpu adapter, and on its CPU
// backend (a run per thread count, each against llama.cpp at the same
// count), vs llama.cpp on the CPU.
const smolRuns = (backend) =>
  native.models?.filter((m) => /smollm2/i.test(m.model) && (m.backend ?? "webgpu") === backend && m.prefill.length) ?? [];
const runsOf = [...smolRuns("webgpu").slice(0, 1).map((smol) => ["native (wgpu)", smol]),
  ...smolRuns("cpu").map((smol) => [`native CPU backend (${smol.threads} thread${smol.threads === 1 ? "" : "s"})`, smol])];
for (const [label, smol] of runsOf) {
  for (const run of llama.runs ?? []) {
    if (smol.backend === "cpu" && run.threads !== smol.threads) continue;
    const peer = `llama.cpp ${run.threads} thread${run.threads > 1 ? "s" : ""}`;
    for (const p of run.prefill) {
      row(`${label} prefill tok/s, ${p.prompt_tokens} tokens`, smol.prefill.find((q) => q.prompt_tokens === p.prompt_tokens)?.tokens_per_s, p.tokens_per_s, peer);
    }
    for (const d of run.decode) {
      row(`${label} decode tok/s at ${d.context_tokens} context`, smol.decode.find((q) => q.context_tokens === d.context_tokens)?.tokens_per_s, d.tokens_per_s, peer);
    }
  }
}
if (llama.error) rows.push(`| native | | llama.cpp: ${llama.error} | |`);

// In Chromium: the npm package vs wllama on the same GGUF, and transformers.js
// on its ONNX export.
const exportAgreement = web.transformers_js_export ?? {};
const peerNames = {
  wllama_wasm_1_thread: "wllama wasm 1 thread",
  wllama_wasm_2_threads: "wllama wasm 2 threads",
  wllama_webgpu: "wllama WebGPU",
  transformers_js_webgpu_q4: "transformers.js WebGPU q4",
  transformers_js_wasm_q4: "transformers.js wasm q4, 2 threads",
  transformers_js_webgpu_fp32: "transformers.js WebGPU fp32",
  transformers_js_wasm_fp32: "transformers.js wasm fp32, 2 threads",
  transformers_js_wasm_fp32_1_thread: "transformers.js wasm fp32, 1 thread",
};
for (const [peer, label] of Object.entries(peerNames)) {
  const p = web[peer];
  if (!p || p.error) {
    rows.push(`| browser | | ${label}: ${p?.error ?? web.error ?? "not run"} | |`);
    continue;
  }
  row("browser prefill tok/s", web.phi_web?.prefill_tokens_per_s, p.prefill_tokens_per_s, label);
  row("browser decode tok/s", web.phi_web?.decode_tokens_per_s, p.decode_tokens_per_s, label);
  // The CPU backend against the CPU peers (wasm); its thread count is in the label.
  for (const cpu of [web.phi_web_cpu, web.phi_web_cpu_1_thread]) {
    if (cpu && !cpu.error && !/webgpu/.test(peer)) {
      const ours = `browser CPU backend (${cpu.threads} thread${cpu.threads === 1 ? "" : "s"})`;
      row(`${ours} prefill tok/s`, cpu.prefill_tokens_per_s, p.prefill_tokens_per_s, label);
      row(`${ours} decode tok/s`, cpu.decode_tokens_per_s, p.decode_tokens_per_s, label);
    }
  }
}
// The synthetic Phi-3-mini on the CPU backend in Chromium (no peer ran it).
const mini = web.phi_web_cpu_phi3_mini;
const miniNote = !mini
  ? "Synthetic Phi-3-mini on the CPU backend in Chromium: not run."
  : mini.error
    ? `Synthetic Phi-3-mini on the CPU backend in Chromium: ${mini.error}`
    : `Synthetic Phi-3-mini (3.8B, random q4_0) on the CPU backend in Chromium, ${mini.threads} thread(s): ` +
      `${mini.decode_tokens_per_s?.toFixed(2)} tok/s decode (${mini.effective_gbps?.toFixed(2)} GB/s), ` +
      `${mini.prefill_tokens_per_s?.toFixed(2)} tok/s prefill; wasm memory after load ` +
      `${(mini.wasm_memory_after_load_bytes / 1e9).toFixed(2)} GB = ${mini.wasm_memory_over_weights_and_kv?.toFixed(3)}× ` +
      `the weights + KV cache (${(mini.weights_and_kv_bytes / 1e9).toFixed(2)} GB).`;
const agreement = (file) => (Number.isFinite(exportAgreement[file]) ? `${(100 * exportAgreement[file]).toFixed(0)} %` : "?");
const exportNote =
  `transformers.js runs bench/export_onnx.py's export of the same GGUF: fp32 = the GGUF's weights dequantized ` +
  `(top-1 agreement with transformers ${agreement("model.onnx")}), q4 = onnxruntime's MatMulNBits re-quantization ` +
  `of them (agreement ${agreement("model_q4.onnx")}; the embedding stays f32).`;

// The synthetic Phi-3.5-vision on the CPU backend in Chromium (no peer ran it).
const vision = web.phi_web_cpu_phi3_vision;
const visionNote = !vision
  ? "Synthetic Phi-3.5-vision on the CPU backend in Chromium: not run."
  : vision.error
    ? `Synthetic Phi-3.5-vision on the CPU backend in Chromium: ${vision.error}`
    : `Synthetic Phi-3.5-vision (CLIP-L tower, 4 of 32 decoder layers) on the CPU backend in Chromium, ${vision.threads} thread(s): ` +
      `a ${vision.crops}-crop image through the tower in ${(vision.encode_ms_per_image / 1000).toFixed(1)} s ` +
      `(${(vision.encode_ms_per_crop / 1000).toFixed(1)} s a crop), then ${vision.prompt_tokens} prompt tokens ` +
      `(${vision.image_tokens} of them the image's) prefilled at ${vision.prefill_tokens_per_s?.toFixed(1)} tok/s.`;

// The mixture of experts in Chromium (no peer runs PhiMoE): resident and cached.
const moe = web.phi_web_moe;
const moeRun = (r) =>
  `${r.decode_tokens_per_s?.toFixed(3)} tok/s decode (${r.effective_gbps?.toFixed(2)} GB/s over ` +
  `${(r.active_bytes_per_token / 1e6).toFixed(0)} MB of active weights a token)`;
const moeNote = !moe
  ? "Synthetic Phi-mini-MoE in Chromium: not run."
  : moe.error
    ? `Synthetic Phi-mini-MoE in Chromium: ${moe.error}`
    : `Synthetic Phi-mini-MoE (its widths, 8 of 32 layers, random q4_0) in Chromium: every expert resident ` +
      `${moeRun(moe.all_resident)}; 8 of 16 experts per layer cached ${moeRun(moe.half_cached)}, hit rate ` +
      `${moe.half_cached.expert_cache?.hit_rate?.toFixed(2)}, ` +
      `${(moe.half_cached.expert_cache?.uploaded_bytes_per_token / 1e6).toFixed(1)} MB uploaded per token (prefill included).`;

const adapter = native.adapter ?? "?";
const text = [
  `SmolLM2-135M-Instruct (the Q4_1 GGUF; phi-web converts it losslessly). Native phi-web on ${adapter};`,
  `browser: ${web.phi_web?.adapter ?? "?"} in Chromium ${web.browser ?? "?"}. Ratios are phi-web ÷ peer, measured in one run,`,
  "each runtime's second request (a short warm-up first).",
  exportNote,
  "",
  "| figure | phi-web | peer | phi-web ÷ peer |",
  "|---|---|---|---|",
  ...rows,
  "",
  moeNote,
  "",
  miniNote,
  "",
  visionNote,
  "",
].join("\n");
writeFileSync(`${dir}/peers.md`, text);
console.log(text);
