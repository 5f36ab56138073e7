// What the badge and the ready line say about where the model runs: the GPU
// adapter on WebGPU, or the CPU backend (wasm SIMD) with its threads, and why.

const MB = (bytes) => Math.round((bytes ?? 0) / 1e6);

/** "SwiftShader · no f16", or "CPU · wasm simd128 · 1 thread"; the reason as a tooltip. */
export function showBackend(element, stats) {
  element.textContent =
    stats.backend === "cpu"
      ? `CPU · ${stats.simd} · ${stats.threads} thread${stats.threads === 1 ? "" : "s"}`
      : `${stats.adapter || "unknown GPU"} · ${stats.shaderF16 ? "f16" : "no f16"}`;
  element.title =
    stats.backend === "cpu"
      ? `CPU backend: ${stats.backendReason}; ${stats.threads} thread${stats.threads === 1 ? "" : "s"}: ${stats.threadsReason}`
      : `WebGPU: ${stats.backendReason}`;
  element.hidden = false;
}

/** "123 MB GPU memory", or "123 MB memory" on the CPU backend. */
export function memoryText(stats) {
  return stats.backend === "cpu" ? `${MB(stats.memoryBytes)} MB memory` : `${MB(stats.gpuBytes)} MB GPU memory`;
}
