// The RAG page: documents dropped here are read, chunked by tokens with
// overlap, embedded by an embedding engine and kept in IndexedDB; a question
// is embedded, the closest chunks retrieved, and a chat engine answers from
// them with numbered citations. Two phi-web engines, nothing leaves the page.

import { createEngine } from "./pkg/index.js";
import { renderMarkdown } from "./markdown.js";
import { memoryText, showBackend } from "./backend.js";
import { explain } from "./errors.js";
import { ACCEPTED, extractText } from "./extract.js";
import { Library } from "./rag-store.js";
import { groundedMessages, VectorIndex } from "./retrieval.js";

const $ = (id) => document.getElementById(id);
const CHUNK = { maxTokens: 128, overlap: 32 };
const EMBED_BATCH = 16;

const state = {
  catalog: undefined,
  embedder: undefined,
  chat: undefined,
  library: undefined,
  index: undefined,
  documents: [],
  busy: false,
};

const MB = (bytes) => (bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0);

function showError(error) {
  console.error(error);
  $("error").textContent = explain(error);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function setBusy(busy) {
  state.busy = busy;
  const ready = Boolean(state.embedder && state.chat);
  $("question").disabled = !ready;
  $("ask").disabled = !ready || busy;
  $("stop").disabled = !busy || !state.chat;
  $("load").disabled = busy;
  $("reindex").disabled = busy || !state.embedder || state.documents.length === 0;
  $("clear").disabled = busy || state.documents.length === 0;
}

// ---- models ----------------------------------------------------------------

function progressTo(label) {
  const started = performance.now();
  return (p) => {
    $("progress-bar").max = p.totalBytes || 1;
    $("progress-bar").value = p.loadedBytes;
    const seconds = (performance.now() - started) / 1000;
    const rate = p.networkBytes && seconds > 0.5 ? ` · ${MB(p.networkBytes / seconds)} MB/s` : "";
    $("progress-text").textContent =
      `${label}: ${MB(p.loadedBytes)} / ${MB(p.totalBytes)} MB${rate} · shards: ${p.fromCache} from cache, ` +
      `${p.shardsDone - p.fromCache} downloaded, ${p.shardsTotal - p.shardsDone} to go`;
  };
}

async function loadModels() {
  clearError();
  setBusy(true);
  $("progress").hidden = false;
  try {
    const catalog = state.catalog;
    const embedding = catalog.embeddingModels[0];
    if (!state.embedder) {
      state.embedder = await createEngine(embedding.url, { onProgress: progressTo(embedding.name) });
      await rebuildIndex();
    }
    const model = catalog.models.find((m) => m.id === $("model-picker").value) ?? catalog.models[0];
    if (state.chat?.model !== model.url) {
      await state.chat?.engine.unload();
      state.chat = undefined;
      const engine = await createEngine(model.url, { contextLength: catalog.contextLength ?? 2048, onProgress: progressTo(model.name) });
      state.chat = { engine, model: model.url };
    }
    const stats = await state.chat.engine.stats();
    $("progress-text").textContent = `Ready: ${embedding.name} and ${model.name} · ${memoryText(stats)} for the answering model`;
    showBackend($("adapter"), stats);
  } catch (error) {
    showError(error);
  } finally {
    setBusy(false);
    if (state.chat) $("question").focus();
  }
}

// ---- library ---------------------------------------------------------------

/** The in-memory index from IndexedDB (at start, and after re-indexing). */
async function rebuildIndex() {
  const chunks = await state.library.chunks();
  const dimensions = chunks[0]?.vector.length ?? 384;
  state.index = new VectorIndex(dimensions);
  for (const chunk of chunks) state.index.add(chunk, chunk.vector);
  state.documents = await state.library.documents();
  renderDocuments();
}

function renderDocuments() {
  const list = $("documents");
  list.replaceChildren(
    ...state.documents
      .sort((a, b) => a.addedAt - b.addedAt)
      .map((doc) => {
        const li = document.createElement("li");
        const label = document.createElement("span");
        const pages = doc.pages.length > 1 ? `${doc.pages.length} pages · ` : "";
        label.textContent = `${doc.name} · ${pages}${doc.chunks} ${doc.chunks === 1 ? "chunk" : "chunks"}`;
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "secondary";
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", `Remove ${doc.name}`);
        remove.addEventListener("click", () => removeDocument(doc.id));
        li.append(label, remove);
        return li;
      }),
  );
  const chunks = state.index?.size ?? 0;
  $("library-summary").textContent = state.documents.length ? `${state.documents.length} documents, ${chunks} chunks` : "No documents yet.";
  setBusy(state.busy);
}

function ingestProgress(text, done, total) {
  $("ingest").hidden = false;
  $("ingest-bar").max = total || 1;
  $("ingest-bar").value = done;
  $("ingest-text").textContent = text;
}

/** Chunks and embeds one document's pages; returns its chunk records. */
async function embedDocument(doc, onProgress) {
  const pieces = [];
  for (const [p, text] of doc.pages.entries()) {
    for (const { start, end } of await state.embedder.embeddings.chunk(text, CHUNK)) {
      pieces.push({ id: `${doc.id}:${pieces.length}`, docId: doc.id, page: p + 1, start, end, text: text.slice(start, end) });
    }
  }
  for (let i = 0; i < pieces.length; i += EMBED_BATCH) {
    const batch = pieces.slice(i, i + EMBED_BATCH);
    const { data } = await state.embedder.embeddings.create({ input: batch.map((c) => c.text) });
    data.forEach((d, j) => (batch[j].vector = Float32Array.from(d.embedding)));
    onProgress(Math.min(i + EMBED_BATCH, pieces.length), pieces.length);
  }
  return pieces;
}

async function addFiles(files) {
  if (!state.embedder) {
    showError(Object.assign(new Error("load the models first: the embedding model reads the documents"), { name: "InputError" }));
    return;
  }
  clearError();
  setBusy(true);
  try {
    for (const file of files) {
      ingestProgress(`Reading ${file.name}…`, 0, 1);
      const { pages } = await extractText(file);
      if (!pages.some((p) => p.trim())) throw Object.assign(new Error(`${file.name} has no text`), { name: "InputError" });
      const doc = { id: crypto.randomUUID(), name: file.name, type: file.type, bytes: file.size, pages, addedAt: Date.now() };
      const chunks = await embedDocument(doc, (done, total) => ingestProgress(`Embedding ${file.name}: ${done} / ${total} chunks`, done, total));
      doc.chunks = chunks.length;
      await state.library.addDocument(doc, chunks);
      for (const chunk of chunks) state.index.add(chunk, chunk.vector);
      state.documents.push(doc);
      renderDocuments();
    }
    ingestProgress(`Added ${files.length} file${files.length === 1 ? "" : "s"}.`, 1, 1);
  } catch (error) {
    showError(error);
    $("ingest").hidden = true;
  } finally {
    setBusy(false);
  }
}

async function removeDocument(docId) {
  await state.library.removeDocument(docId);
  state.index.remove((chunk) => chunk.docId === docId);
  state.documents = state.documents.filter((d) => d.id !== docId);
  renderDocuments();
}

async function reindex() {
  setBusy(true);
  try {
    const docs = state.documents.slice();
    for (const doc of docs) {
      const chunks = await embedDocument(doc, (done, total) => ingestProgress(`Re-indexing ${doc.name}: ${done} / ${total}`, done, total));
      doc.chunks = chunks.length;
      await state.library.removeDocument(doc.id);
      await state.library.addDocument(doc, chunks);
    }
    await rebuildIndex();
    ingestProgress("Re-indexed.", 1, 1);
  } catch (error) {
    showError(error);
  } finally {
    setBusy(false);
  }
}

async function clearAll() {
  await state.library.clear();
  await rebuildIndex();
}

// ---- asking ----------------------------------------------------------------

function sourceList(hits) {
  const ol = document.createElement("ol");
  ol.className = "sources";
  const stamp = Date.now();
  hits.forEach((hit, i) => {
    const doc = state.documents.find((d) => d.id === hit.entry.docId);
    const li = document.createElement("li");
    li.id = `source-${stamp}-${i + 1}`;
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    const page = doc?.pages.length > 1 ? `, page ${hit.entry.page}` : "";
    summary.textContent = `${doc?.name ?? "removed document"}${page} · score ${hit.score.toFixed(3)}`;
    summary.dataset.document = doc?.name ?? "";
    const quote = document.createElement("blockquote");
    quote.textContent = hit.entry.text;
    details.append(summary, quote);
    li.append(details);
    ol.append(li);
  });
  return { list: ol, anchor: (n) => `source-${stamp}-${n}` };
}

/** Turns the escaped "[n]" citations of a rendered answer into links to its sources. */
function linkCitations(html, anchor, count) {
  return html.replace(/\[(\d+)\]/g, (text, n) => (Number(n) >= 1 && Number(n) <= count ? `<a href="#${anchor(n)}">[${n}]</a>` : text));
}

async function ask() {
  const question = $("question").value.trim();
  if (!question || state.busy || !state.chat) return;
  clearError();
  if (!state.index.size) {
    showError(Object.assign(new Error("add documents first: answers come from your library"), { name: "InputError" }));
    return;
  }
  $("question").value = "";
  setBusy(true);
  const card = document.createElement("article");
  card.className = "message assistant";
  const heading = document.createElement("p");
  heading.className = "question";
  heading.textContent = question;
  const body = document.createElement("div");
  card.append(heading, body);
  $("answers").append(card);
  try {
    const started = performance.now();
    const { data } = await state.embedder.embeddings.create({ input: question });
    const k = Math.max(1, Number($("top-k").value) || 3);
    const hits = state.index.search(data[0].embedding, k, { query: question, keywordWeight: $("keyword").checked ? 0.2 : 0 });
    const retrievalMs = performance.now() - started;
    const { list, anchor } = sourceList(hits);
    card.append(list);
    card.dataset.sources = hits.map((h) => state.documents.find((d) => d.id === h.entry.docId)?.name).join("|");
    const sources = hits.map((h) => ({ title: state.documents.find((d) => d.id === h.entry.docId)?.name ?? "", text: h.entry.text }));
    body.classList.add("streaming");
    let content = "";
    let finish = null;
    const stream = await state.chat.engine.chat.completions.create({
      messages: groundedMessages(question, sources),
      stream: true,
      temperature: 0,
      max_tokens: Math.max(1, Number($("max-tokens").value) || 200),
    });
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (choice.delta.content) {
        content += choice.delta.content;
        body.innerHTML = linkCitations(renderMarkdown(content), anchor, hits.length);
      }
      finish = choice.finish_reason ?? finish;
    }
    const stats = await state.chat.engine.stats();
    const note = document.createElement("span");
    note.className = "stats";
    note.textContent =
      `retrieval ${retrievalMs.toFixed(0)} ms over ${state.index.size} chunks · ${stats.decode_tokens_per_s?.toFixed(2)} tok/s · ` +
      `first token after ${(stats.ttft_ms / 1000).toFixed(1)} s${finish === "abort" ? " · stopped" : ""}`;
    card.insertBefore(note, list);
    card.dataset.finish = finish ?? "stop";
  } catch (error) {
    showError(error);
    card.dataset.finish = "error";
  } finally {
    body.classList.remove("streaming");
    await state.chat?.engine.resetChat().catch(() => {}); // each question stands alone
    setBusy(false);
    $("question").focus();
  }
}

// ---- wiring ----------------------------------------------------------------

const drop = $("drop");
drop.addEventListener("click", () => $("files").click());
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    $("files").click();
  }
});
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  addFiles([...e.dataTransfer.files]);
});
$("files").addEventListener("change", () => {
  addFiles([...$("files").files]);
  $("files").value = "";
});
$("load").addEventListener("click", loadModels);
$("reindex").addEventListener("click", reindex);
$("clear").addEventListener("click", clearAll);
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  ask();
});
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ask();
  }
});
$("stop").addEventListener("click", () => state.chat?.engine.interrupt());

async function start() {
  try {
    state.catalog = await (await fetch("models.json")).json();
    $("embedding-name").textContent = state.catalog.embeddingModels[0].name;
    $("model-picker").replaceChildren(...state.catalog.models.map((m) => new Option(m.name, m.id)));
    for (const m of [...state.catalog.models, ...state.catalog.embeddingModels]) m.url = new URL(m.url, location.href).href;
    state.library = await Library.open();
    await rebuildIndex();
  } catch (error) {
    showError(error);
  }
  $("files").accept = ACCEPTED.join(",");
  document.body.dataset.ready = "true";
}

start();
