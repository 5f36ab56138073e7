// The demo chat page: pick a model from models.json, load it with a progress
// bar (cached for the next visit), chat with streamed answers rendered as
// escaped Markdown. Everything runs in this browser through phi-web.

import { checkCachedModel, createEngine, deleteCachedModel } from "./pkg/index.js";
import { memoryText, showBackend } from "./backend.js";
import { explain } from "./errors.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const ui = {
  picker: $("model-picker"),
  load: $("load"),
  deleteCached: $("delete-cached"),
  detail: $("model-detail"),
  progress: $("progress"),
  progressBar: $("progress-bar"),
  progressText: $("progress-text"),
  error: $("error"),
  adapter: $("adapter"),
  system: $("system"),
  temperature: $("temperature"),
  temperatureValue: $("temperature-value"),
  maxTokens: $("max-tokens"),
  chat: $("chat"),
  emptyChat: $("empty-chat"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  attach: $("attach"),
  attachLabel: $("attach-label"),
  attachments: $("attachments"),
};

const state = {
  models: [], // {id, name, url, description, manifest?, bytes?, gpuBytes?, cached?}
  contextLength: 2048,
  engine: undefined,
  loadedUrl: undefined,
  messages: [], // the conversation, OpenAI-shaped (a user turn with images has content parts)
  generating: false,
  vision: false, // the loaded model takes images
  pending: [], // images attached to the next message: File/Blob
};

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const MB = (bytes) => (bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0);

// ---- errors ----------------------------------------------------------------

function showError(error) {
  console.error(error);
  ui.error.textContent = explain(error);
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

// ---- models ----------------------------------------------------------------

/** Download size and an estimate of GPU memory (weights + f16 KV cache). */
function sizes(manifest, contextLength) {
  const bytes = manifest.shards.reduce((sum, shard) => sum + shard.bytes, 0);
  const c = manifest.config;
  const context = Math.min(contextLength, c.max_position_embeddings);
  const kvCache = 2 * c.num_layers * context * c.num_kv_heads * c.head_dim * 2;
  return { bytes, gpuBytes: bytes + kvCache };
}

async function describeModel(model) {
  model.url = new URL(model.url, location.href).href;
  try {
    const response = await fetch(model.url, { cache: "no-cache" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    model.manifest = await response.json();
    Object.assign(model, sizes(model.manifest, state.contextLength));
  } catch {
    model.manifest = undefined; // offline, or not converted: the cache may still have it
  }
  const cached = await checkCachedModel(model.url).catch(() => undefined);
  model.cached = Boolean(cached?.complete);
  model.bytes ??= cached?.bytes;
}

function optionLabel(model) {
  if (!model.manifest && !model.cached) return `${model.name} — not available (see README to convert it)`;
  const parts = [model.name];
  if (model.bytes) parts.push(`${MB(model.bytes)} MB`);
  if (model.gpuBytes) parts.push(`~${MB(model.gpuBytes)} MB GPU`);
  if (model.cached) parts.push("cached");
  return parts.join(" · ");
}

function renderPicker() {
  const selected = ui.picker.value;
  ui.picker.replaceChildren(
    ...state.models.map((model) => {
      const option = new Option(optionLabel(model), model.id);
      option.disabled = !model.manifest && !model.cached;
      return option;
    }),
  );
  if (selected) ui.picker.value = selected;
  onPick();
}

function pickedModel() {
  return state.models.find((m) => m.id === ui.picker.value);
}

function onPick() {
  const model = pickedModel();
  ui.detail.textContent = model?.description ?? "";
  ui.deleteCached.disabled = !model?.cached || model.url === state.loadedUrl;
  ui.load.disabled = !model || (!model.manifest && !model.cached) || state.generating;
}

async function initModels() {
  const response = await fetch("models.json");
  const catalog = await response.json();
  state.contextLength = catalog.contextLength ?? state.contextLength;
  state.models = catalog.models;
  await Promise.all(state.models.map(describeModel));
  renderPicker();
}

// ---- loading ---------------------------------------------------------------

function progressReporter() {
  const started = performance.now();
  return (p) => {
    const seconds = (performance.now() - started) / 1000;
    ui.progressBar.max = p.totalBytes || 1;
    ui.progressBar.value = p.loadedBytes;
    const parts = [`${MB(p.loadedBytes)} / ${MB(p.totalBytes)} MB`];
    const network = p.networkBytes ?? 0;
    if (network > 0 && seconds > 0.5) {
      const rate = network / seconds;
      parts.push(`${MB(rate)} MB/s`);
      const left = (p.totalBytes - p.loadedBytes) / rate;
      if (p.loadedBytes < p.totalBytes) parts.push(`ETA ${Math.ceil(left)} s`);
    }
    const downloaded = p.shardsDone - p.fromCache;
    parts.push(`shards: ${p.fromCache} from cache, ${downloaded} downloaded, ${p.shardsTotal - p.shardsDone} to go`);
    if (p.phase === "ready") parts.unshift("Ready");
    ui.progressText.textContent = parts.join(" · ");
  };
}

async function loadModel() {
  const model = pickedModel();
  if (!model) return;
  clearError();
  setBusy(true);
  ui.progress.hidden = false;
  ui.progressText.textContent = `Loading ${model.name}…`;
  try {
    if (state.engine) await state.engine.unload();
    state.engine = undefined;
    state.loadedUrl = undefined;
    state.engine = await createEngine(model.url, { contextLength: state.contextLength, onProgress: progressReporter() });
    state.loadedUrl = model.url;
    const stats = await state.engine.stats();
    ui.progressText.textContent =
      `Loaded ${model.name} in ${(stats.loadMs / 1000).toFixed(1)} s · ` +
      `${stats.shardsFromCache} of ${model.manifest?.shards.length ?? stats.shardsFromCache} shards from cache · ` +
      `${MB(stats.networkBytes)} MB downloaded · ${memoryText(stats)}`;
    showBackend(ui.adapter, stats);
    state.vision = Boolean(stats.vision);
    model.cached = true;
    newChat();
  } catch (error) {
    showError(error);
    ui.progressText.textContent = "Not loaded.";
  } finally {
    setBusy(false);
    renderPicker();
    if (state.engine) ui.prompt.focus();
  }
}

async function deleteCached() {
  const model = pickedModel();
  if (!model || model.url === state.loadedUrl) return;
  try {
    await deleteCachedModel(model.url);
    await describeModel(model);
  } catch (error) {
    showError(error);
  }
  renderPicker();
}

// ---- chat ------------------------------------------------------------------

function setBusy(busy) {
  state.generating = busy;
  const ready = Boolean(state.engine) && !busy;
  ui.prompt.disabled = !state.engine;
  ui.send.disabled = !ready;
  ui.newChat.disabled = !ready;
  ui.stop.disabled = !busy || !state.engine;
  ui.attachLabel.hidden = !state.vision;
  ui.attach.disabled = !ready;
  ui.picker.disabled = busy;
  onPick();
}

/** Thumbnails of `images` (Blobs) as `parent`'s children; with `remove(i)`, a button to drop each. */
function showThumbnails(parent, images, remove) {
  parent.classList.add("thumbnails");
  parent.replaceChildren();
  images.forEach((image, i) => {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(image);
    img.alt = image.name || `image ${i + 1}`;
    img.onload = () => URL.revokeObjectURL(img.src);
    parent.append(img);
    if (remove) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = "×";
      button.title = `Remove ${img.alt}`;
      button.onclick = () => remove(i);
      parent.append(button);
    }
  });
  return parent;
}

function renderPending() {
  ui.attachments.hidden = state.pending.length === 0;
  showThumbnails(ui.attachments, state.pending, (i) => {
    state.pending.splice(i, 1);
    renderPending();
  });
}

function attachImages(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/"));
  if (!images.length) return false;
  if (!state.vision) {
    showError(Object.assign(new Error("this model takes no images; load a vision model (Phi-3.5-vision)"), { name: "InputError" }));
    return true;
  }
  state.pending.push(...images);
  renderPending();
  return true;
}

function addMessage(role, text, images = []) {
  ui.emptyChat.hidden = true;
  const div = document.createElement("div");
  div.className = `message ${role}`;
  if (images.length) div.append(showThumbnails(document.createElement("div"), images));
  if (role === "user") div.append(text);
  ui.chat.append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function newChat() {
  state.messages = [];
  state.pending = [];
  renderPending();
  ui.chat.querySelectorAll(".message").forEach((m) => m.remove());
  ui.emptyChat.hidden = false;
  state.engine?.resetChat().catch(showError);
}

async function send() {
  const text = ui.prompt.value.trim();
  const images = state.pending;
  if ((!text && !images.length) || !state.engine || state.generating) return;
  clearError();
  ui.prompt.value = "";
  state.pending = [];
  renderPending();
  addMessage("user", text, images);
  // Images as content parts; the engine decodes the Blobs in this browser.
  const parts = [...images.map((url) => ({ type: "image_url", image_url: { url } })), { type: "text", text }];
  state.messages.push({ role: "user", content: images.length ? parts : text });
  const answer = addMessage("assistant", "");
  answer.classList.add("streaming");
  answer.setAttribute("aria-busy", "true");
  const body = document.createElement("div");
  answer.append(body);
  setBusy(true);

  const system = ui.system.value.trim();
  const messages = system ? [{ role: "system", content: system }, ...state.messages] : state.messages;
  let content = "";
  let finish = null;
  let usage;
  try {
    const stream = await state.engine.chat.completions.create({
      messages,
      stream: true,
      temperature: Number(ui.temperature.value),
      max_tokens: Math.max(1, Number(ui.maxTokens.value) || 256),
      seed: Math.floor(Math.random() * 2 ** 31),
    });
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (choice.delta.content) {
        content += choice.delta.content;
        body.innerHTML = renderMarkdown(content);
        answer.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    state.messages.push({ role: "assistant", content });
    const stats = await state.engine.stats();
    const note = document.createElement("span");
    note.className = "stats";
    const reason = { stop: "", length: " · hit max tokens", abort: " · stopped" }[finish] ?? ` · ${finish}`;
    note.textContent =
      `${plural(usage?.completion_tokens ?? 0, "token")} · ${stats.decode_tokens_per_s?.toFixed(2)} tok/s · ` +
      `first token after ${(stats.ttft_ms / 1000).toFixed(1)} s · prefill ${stats.prefill_tokens_per_s?.toFixed(1)} tok/s${reason}`;
    answer.append(note);
  } catch (error) {
    state.messages.pop(); // the turn did not happen
    if (!content) answer.remove();
    showError(error);
    if (error.name === "DeviceLostError") {
      state.engine = undefined;
      state.loadedUrl = undefined;
    }
  } finally {
    answer.classList.remove("streaming");
    answer.removeAttribute("aria-busy");
    answer.dataset.finish = finish ?? "error";
    setBusy(false);
    ui.prompt.focus();
  }
}

// ---- wiring ----------------------------------------------------------------

ui.picker.addEventListener("change", onPick);
ui.load.addEventListener("click", loadModel);
ui.deleteCached.addEventListener("click", deleteCached);
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", () => state.engine?.interrupt());
ui.newChat.addEventListener("click", () => {
  newChat();
  ui.prompt.focus();
});
ui.temperature.addEventListener("input", () => (ui.temperatureValue.textContent = ui.temperature.value));
ui.attach.addEventListener("change", () => {
  attachImages(ui.attach.files);
  ui.attach.value = "";
});
ui.prompt.addEventListener("paste", (event) => {
  if (attachImages(event.clipboardData?.files ?? [])) event.preventDefault();
});

async function start() {
  if ("serviceWorker" in navigator && window.isSecureContext) {
    navigator.serviceWorker.register("sw.js").catch((e) => console.warn("no offline support:", e));
  }
  try {
    await initModels();
  } catch (error) {
    showError(Object.assign(new Error(`models.json could not be read: ${error.message}`), { name: "NetworkError" }));
  }
  document.body.dataset.ready = "true";
}

start();
