// The engine's Web Worker: messages from index.js in, progress / deltas /
// results / errors out. One engine per worker.

import { loadEngine } from "./core.js";

let engine;

function post(message, transfer = []) {
  self.postMessage(message, transfer);
}

function errorMessage(id, e) {
  post({ id, type: "error", name: e?.name ?? "Error", message: e?.message ?? String(e) });
}

self.onmessage = async ({ data }) => {
  const { id, type } = data;
  try {
    switch (type) {
      case "load":
        engine = await loadEngine(data.modelUrl, {
          ...data.options,
          onProgress: (progress) => post({ id, type: "progress", progress }),
        });
        post({ id, type: "result", value: engine.stats() });
        break;
      case "generate": {
        const value = await engine.generate(data.request, (delta) => post({ id, type: "delta", delta }));
        post({ id, type: "result", value });
        break;
      }
      case "embed":
        post({ id, type: "result", value: await engine.embed(data.input) });
        break;
      case "logits": {
        const value = await engine.logits(data.ids, data.images);
        post({ id, type: "result", value }, [value.buffer]);
        break;
      }
      case "tokenize": {
        const value = engine.tokenize(data.text);
        post({ id, type: "result", value }, [value.buffer]);
        break;
      }
      case "chunk":
        post({ id, type: "result", value: engine.chunk(data.text, data.options) });
        break;
      case "interrupt":
        engine?.interrupt();
        post({ id, type: "result" });
        break;
      case "resetChat":
        engine?.resetChat();
        post({ id, type: "result" });
        break;
      case "loseDevice":
        engine?.loseDevice();
        post({ id, type: "result" });
        break;
      case "stats":
        post({ id, type: "result", value: engine?.stats() });
        break;
      case "unload":
        engine?.unload();
        engine = undefined;
        post({ id, type: "result" });
        break;
      default:
        throw new Error(`unknown message ${type}`);
    }
  } catch (e) {
    errorMessage(id, e);
  }
};
