// The demo page (web/) served by `phi-web serve` exactly as `make demo` does,
// used like a person would in headless Chromium (WebGPU on SwiftShader): load
// the default model, ask a question, watch the streamed answer, stop a long
// one, reload and load from the cache. Run by `make test-web`:
//
//   node tests/web/demo.mjs PHI_WEB_BINARY
//
// Saves screenshots to target/test-artifacts/ (not committed).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";
import { renderMarkdown } from "../../web/markdown.js";

const [phiWeb] = process.argv.slice(2);

const LIGHTHOUSE = `# The Skerry lighthouse

The lighthouse on the island of Skerry has been kept by Ada Morrow since 1998.
Every evening she climbs the 143 steps to light the lamp, and every morning she
writes the weather in a green logbook.
`;
const BAKERY = [
  "The Corner Bakery opens at six in the morning.",
  "Its rye bread is baked in a wood-fired oven,",
  "and the croissants sell out before nine.",
];

/** A minimal one-page PDF with `lines` of text (Helvetica), xref and all. */
function makePdf(lines) {
  const text = lines.map((l, i) => `BT /F1 14 Tf 72 ${720 - 20 * i} Td (${l}) Tj ET`).join("\n");
  const objects = [
    "<< /Type /Catalog /Pages 2 0 R >>",
    "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
    `<< /Length ${text.length} >>\nstream\n${text}\nendstream`,
    "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
  ];
  let pdf = "%PDF-1.4\n";
  const offsets = objects.map((body, i) => {
    const at = pdf.length;
    pdf += `${i + 1} 0 obj\n${body}\nendobj\n`;
    return at;
  });
  const xref = pdf.length;
  pdf += `xref\n0 ${objects.length + 1}\n0000000000 65535 f \n`;
  pdf += offsets.map((o) => `${String(o).padStart(10, "0")} 00000 n \n`).join("");
  pdf += `trailer\n<< /Size ${objects.length + 1} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
  return Buffer.from(pdf, "latin1");
}
const root = new URL("../..", import.meta.url).pathname;
const artifacts = `${root}target/test-artifacts`;
mkdirSync(artifacts, { recursive: true });

function step(name) {
  console.log(`demo | ${name}`);
}

// Markdown that tries everything a model answer (or a document quoted in one)
// could carry to run code; nothing of it may reach the DOM as markup.
const HOSTILE = [
  '<script>alert(1)</script> **bold** <img src=x onerror="alert(2)">',
  "[click](javascript:alert(3)) [data](data:text/html,<script>alert(4)</script>) [ok](https://example.com/a?b=1)",
  '<a href="https://x" onclick="alert(5)">x</a> <div onmouseover=alert(6)>hover</div> &lt;script&gt; &#60;img src=x onerror=alert(7)&#62;',
  "![pixel](https://tracker.example/p.png) <svg onload=alert(8)> <iframe src=javascript:alert(9)>",
  '```html\n<b onclick="alert(10)">"code"</b>\n```',
  "[ref]: javascript:alert(11)\n\n[ref] JAVASCRIPT:alert(12) <javascript:alert(13)>",
].join("\n\n");
const CANNED = [
  "Here is how the two runtimes compare:",
  "",
  "| runtime | backend | decode tok/s |",
  "|---|---|---:|",
  "| phi-web | WebGPU | 42.0 |",
  "| wllama | wasm | 17.5 |",
  "",
  "```python",
  "def tokens_per_second(tokens, seconds):",
  '    """Decode speed."""',
  "    return tokens / seconds",
  "```",
  "",
  "See [the README](https://github.com/) for **more**.",
].join("\n");

step("model output is rendered by markdown-it: tables, highlighted code, http(s) links only, no raw HTML");
const hostile = renderMarkdown(HOSTILE);
assert.ok(!/<(script|img|svg|iframe|div|b)[\s>]/i.test(hostile), hostile);
assert.ok(!/<[^>]*\son\w+\s*=/i.test(hostile), `an event-handler attribute: ${hostile}`);
assert.ok(!/href="(?!https?:)/i.test(hostile), `a link that is not http(s): ${hostile}`);
assert.match(hostile, /&lt;script&gt;alert\(1\)&lt;\/script&gt; <strong>bold<\/strong> &lt;img src=x onerror=&quot;alert\(2\)&quot;&gt;/);
assert.match(hostile, /<a href="https:\/\/example.com\/a\?b=1" target="_blank" rel="noopener noreferrer">ok<\/a>/);
assert.match(hostile, /&lt;script&gt; &lt;img src=x onerror=alert\(7\)&gt;/, "entities stay text");
const rich = renderMarkdown(CANNED);
assert.match(rich, /<table>[\s\S]*<th>runtime<\/th>[\s\S]*<td>phi-web<\/td>[\s\S]*<td style="text-align:right">42.0<\/td>/);
assert.match(rich, /<pre><code class="language-python"><span class="hljs-keyword">def<\/span> <span class="hljs-title function_">tokens_per_second<\/span>/);
assert.equal(renderMarkdown("```js\nunfinished"), '<pre><code class="language-js">unfinished</code></pre>\n', "an open fence streams");

const mounts = [
  "/pkg=pkg",
  "/models=target/demo/models",
  "/vendor/pdfjs=web/node_modules/pdfjs-dist/build",
  "/vendor/markdown-it=web/node_modules/markdown-it/dist/browser",
  "/vendor/highlightjs=web/node_modules/@highlightjs/cdn-assets",
];
const server = spawn(phiWeb, ["serve", "web", ...mounts.flatMap((m) => ["--mount", m]), "--port", "0"], {
  cwd: root,
  stdio: ["ignore", "pipe", "inherit"],
});
const url = await new Promise((resolve, reject) => {
  server.on("exit", (code) => reject(new Error(`phi-web serve exited with ${code}`)));
  createInterface({ input: server.stdout }).once("line", (line) => resolve(line.match(/http:\/\/\S+/)[0]));
});

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"],
});
const context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
const page = await context.newPage();
page.on("pageerror", (e) => console.log("page error:", e.message));
const figures = {};

async function openPage() {
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]");
}

async function loadModel() {
  await page.click("#load");
  await page.waitForSelector("#prompt:not([disabled])", { timeout: 180_000 });
  const text = await page.textContent("#progress-text");
  assert.match(text, /^Loaded SmolLM2 135M Instruct in [\d.]+ s/, text);
  return text;
}

/** Types a message, sends it with Enter, returns the answer element's handle once streaming shows text. */
async function ask(question) {
  await page.fill("#prompt", question);
  await page.press("#prompt", "Enter");
  await page.waitForFunction(() => document.querySelector(".message.assistant.streaming")?.textContent.trim().length > 0, null, {
    timeout: 300_000,
  });
  return page.locator(".message.assistant").last();
}

async function finished(answer) {
  await page.waitForFunction(() => [...document.querySelectorAll(".message.assistant")].at(-1)?.dataset.finish, null, {
    timeout: 600_000,
  });
  return { finish: await answer.getAttribute("data-finish"), text: await answer.textContent() };
}

try {
  step("without WebGPU the page shows no error and offers Load (the CPU backend runs the model)");
  const noGpu = await context.newPage();
  await noGpu.addInitScript(() => delete Navigator.prototype.gpu);
  await noGpu.goto(url);
  await noGpu.waitForSelector("body[data-ready=true]");
  assert.equal(await noGpu.isHidden("#error"), true, await noGpu.textContent("#error"));
  assert.equal(await noGpu.isDisabled("#load"), false);
  await noGpu.close();

  step("the page is cross-origin isolated and lists the default model first");
  await openPage();
  assert.equal(await page.evaluate(() => crossOriginIsolated), true, "COOP/COEP from phi-web serve");
  const options = await page.$$eval("#model-picker option", (os) => os.map((o) => ({ label: o.textContent, disabled: o.disabled })));
  assert.match(options[0].label, /^SmolLM2 135M Instruct · 97 MB · ~\d+ MB GPU$/, options[0].label);
  assert.equal(options[0].disabled, false);
  assert.ok(options.slice(1).every((o) => o.disabled && /not available/.test(o.label)), JSON.stringify(options));

  step("in the page: a canned answer shows a table and highlighted code; hostile Markdown runs nothing");
  const dom = await page.evaluate(
    async ({ canned, hostile }) => {
      window.alerted = [];
      window.alert = (x) => window.alerted.push(x);
      const { renderMarkdown } = await import("/markdown.js");
      const chat = document.getElementById("chat");
      const messages = [canned, hostile].map((text) => {
        const div = document.createElement("div");
        div.className = "message assistant";
        div.innerHTML = renderMarkdown(text);
        chat.append(div);
        return div;
      });
      document.getElementById("empty-chat").hidden = true;
      await new Promise((resolve) => setTimeout(resolve, 300)); // onerror / onload would have fired
      const all = messages.flatMap((m) => [...m.querySelectorAll("*")]);
      return {
        executable: all.filter((e) => /^(SCRIPT|IMG|SVG|IFRAME|OBJECT|EMBED)$/i.test(e.tagName)).length,
        handlers: all.filter((e) => [...e.attributes].some((a) => a.name.startsWith("on"))).length,
        badLinks: all.filter((e) => e.tagName === "A" && !/^https?:/.test(e.getAttribute("href"))).length,
        tables: messages[0].querySelectorAll("table td").length,
        highlighted: getComputedStyle(messages[0].querySelector(".hljs-keyword")).color,
        plain: getComputedStyle(messages[0].querySelector("pre code")).color,
        alerted: window.alerted,
      };
    },
    { canned: CANNED, hostile: HOSTILE },
  );
  assert.deepEqual({ executable: dom.executable, handlers: dom.handlers, badLinks: dom.badLinks, alerted: dom.alerted },
    { executable: 0, handlers: 0, badLinks: 0, alerted: [] });
  assert.equal(dom.tables, 6);
  assert.notEqual(dom.highlighted, dom.plain, "keywords are coloured by the highlight.js theme");
  await page.locator(".message.assistant").first().screenshot({ path: `${artifacts}/demo-markdown.png` });
  await page.evaluate(() => {
    document.querySelectorAll(".message").forEach((m) => m.remove());
    document.getElementById("empty-chat").hidden = false;
  });

  step("Load shows progress and ends ready, naming the backend (the CPU: the only adapter is SwiftShader)");
  const cold = await loadModel();
  assert.match(cold, /0 of 2 shards from cache · 97 MB downloaded/, cold);
  figures.cold_load = cold;
  figures.adapter = await page.textContent("#adapter");
  assert.match(figures.adapter, /^CPU · wasm simd128 · \d+ threads?$/);
  assert.match(await page.getAttribute("#adapter", "title"), /software rasterizer/);

  step("Shift+Enter is a new line, not a send");
  await page.fill("#prompt", "a");
  await page.press("#prompt", "Shift+Enter");
  await page.type("#prompt", "b");
  assert.equal(await page.inputValue("#prompt"), "a\nb");
  assert.equal(await page.locator(".message").count(), 0);

  step("a question gets a streamed answer mentioning Paris, with its speed");
  await page.click("#settings summary");
  await page.$eval("#temperature", (input) => {
    input.value = "0";
    input.dispatchEvent(new Event("input"));
  });
  const paris = await finished(await ask("What is the capital of France?"));
  assert.equal(paris.finish, "stop", paris.text);
  assert.match(paris.text, /Paris/);
  const stats = await page.locator(".message.assistant .stats").last().textContent();
  assert.match(stats, /^\d+ tokens? · [\d.]+ tok\/s · first token after [\d.]+ s · prefill [\d.]+ tok\/s$/, stats);
  figures.answer = paris.text;
  assert.equal(await page.evaluate(() => document.activeElement.id), "prompt", "focus returns to the message box");

  step("Stop ends a long answer mid-stream");
  await page.fill("#max-tokens", "200");
  const story = await ask("Write a long story about a dragon who learns to bake bread.");
  await page.click("#stop");
  const stopped = await finished(story);
  assert.equal(stopped.finish, "abort", stopped.text);
  assert.match(stopped.text, /stopped$/);
  await page.screenshot({ path: `${artifacts}/demo-chat.png`, fullPage: true });

  step("on a phone-sized screen nothing scrolls sideways");
  await page.setViewportSize({ width: 390, height: 844 });
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 390), "no horizontal overflow");
  await page.screenshot({ path: `${artifacts}/demo-phone.png` });
  await page.setViewportSize({ width: 1000, height: 900 });

  step("after a reload the model is marked cached and loads from the cache");
  await openPage();
  const label = await page.textContent("#model-picker option");
  assert.match(label, /· cached$/, label);
  const warm = await loadModel();
  assert.match(warm, /2 of 2 shards from cache · 0\.0 MB downloaded/, warm);
  figures.warm_load = warm;

  // A tiny random Phi-3.5-vision (converted by make test-web) added to the
  // page's models.json: its answers are noise, what is checked is the flow.
  step("a vision model takes an attached and a pasted image: thumbnails in the composer and in the message, then an answer");
  // A context of its own: the page's service worker would answer models.json before a route could.
  const visionContext = await browser.newContext({ viewport: { width: 1000, height: 900 }, serviceWorkers: "block" });
  const vision = await visionContext.newPage();
  vision.on("pageerror", (e) => console.log("page error:", e.message));
  await vision.route("**/models.json", async (route) => {
    const response = await route.fetch();
    const catalog = await response.json();
    catalog.models.push({ id: "tiny-phi3v", name: "tiny Phi-3.5-vision (test)", url: "models/tiny-phi3v/model.json", description: "random weights" });
    await route.fulfill({ response, json: catalog });
  });
  await vision.goto(url);
  await vision.waitForSelector("body[data-ready=true]");
  assert.equal(await vision.isVisible("#attach-label"), false, "no image button before a vision model is loaded");
  await vision.selectOption("#model-picker", "tiny-phi3v");
  await vision.click("#load");
  await vision.waitForSelector("#prompt:not([disabled])", { timeout: 180_000 });
  assert.equal(await vision.isVisible("#attach-label"), true, "the image button shows for a vision model");
  await vision.setInputFiles("#attach", `${root}tests/data/tiny-phi3v/images/wide.png`);
  const pasted = readFileSync(`${root}tests/data/tiny-phi3v/images/small.png`).toString("base64");
  await vision.evaluate((b64) => {
    const data = new DataTransfer();
    data.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], "pasted.png", { type: "image/png" }));
    const paste = new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
    document.getElementById("prompt").dispatchEvent(paste);
  }, pasted);
  assert.equal(await vision.locator("#attachments img").count(), 2);
  await vision.click("#settings summary");
  await vision.fill("#max-tokens", "4");
  await vision.fill("#prompt", "What is in these pictures?");
  await vision.press("#prompt", "Enter");
  await vision.waitForFunction(() => [...document.querySelectorAll(".message.assistant")].at(-1)?.dataset.finish, null, { timeout: 600_000 });
  const pictures = await vision.locator(".message.assistant").last().getAttribute("data-finish");
  assert.ok(["stop", "length"].includes(pictures), pictures);
  assert.equal(await vision.locator(".message.user").last().locator("img").count(), 2, "the message shows both images");
  assert.equal(await vision.locator("#attachments img").count(), 0, "the composer is cleared");
  assert.ok(await vision.isHidden("#error"), await vision.textContent("#error"));
  await vision.screenshot({ path: `${artifacts}/demo-vision.png`, fullPage: true });
  await visionContext.close();

  step("retrieval over 10,000 chunks in the browser");
  figures.retrieval_ms_10k = await page.evaluate(async () => {
    const { VectorIndex } = await import("/retrieval.js");
    const index = new VectorIndex(384);
    let seed = 1;
    const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
    const unit = () => {
      const v = Float32Array.from({ length: 384 }, random);
      const n = Math.hypot(...v);
      return v.map((x) => x / n);
    };
    for (let i = 0; i < 10_000; i++) index.add({ id: i, text: `chunk ${i} about topic ${i % 97} and lighthouses` }, unit());
    const times = [];
    for (let i = 0; i < 21; i++) {
      const query = unit();
      const started = performance.now();
      index.search(query, 5, { query: "which topic mentions lighthouses", keywordWeight: 0.2 });
      times.push(performance.now() - started);
    }
    return times.sort((a, b) => a - b)[10];
  });
  assert.ok(figures.retrieval_ms_10k < 100, `median ${figures.retrieval_ms_10k} ms`);

  step("the RAG page ingests a Markdown file and a PDF into IndexedDB");
  await page.goto(`${url}rag.html`);
  await page.waitForSelector("body[data-ready=true]");
  await page.click("#load");
  await page.waitForSelector("#question:not([disabled])", { timeout: 300_000 });
  await page.setInputFiles("#files", [
    { name: "lighthouse.md", mimeType: "text/markdown", buffer: Buffer.from(LIGHTHOUSE) },
    { name: "bakery.pdf", mimeType: "application/pdf", buffer: makePdf(BAKERY) },
  ]);
  await page.waitForFunction(
    () => /^2 documents/.test(document.getElementById("library-summary").textContent) || !document.getElementById("error").hidden,
    null,
    { timeout: 300_000 },
  );
  assert.equal(await page.isHidden("#error"), true, await page.textContent("#error"));
  const library = await page.$$eval("#documents li span", (spans) => spans.map((s) => s.textContent));
  assert.match(library.join("\n"), /lighthouse\.md · \d+ chunks?\nbakery\.pdf · \d+ chunks?/);

  step("a question answered by one document cites that document");
  await page.click("#settings summary");
  await page.fill("#top-k", "1");
  await page.fill("#max-tokens", "12");
  await page.fill("#question", "What is the name of the keeper of the Skerry lighthouse?");
  await page.press("#question", "Enter");
  await page.waitForFunction(() => document.querySelector("#answers article")?.dataset.finish, null, { timeout: 600_000 });
  const answer = await page.$eval("#answers article", (a) => ({
    finish: a.dataset.finish,
    sources: a.dataset.sources,
    text: a.querySelector("div").textContent,
    stats: a.querySelector(".stats")?.textContent,
  }));
  assert.equal(answer.sources, "lighthouse.md", JSON.stringify(answer));
  assert.ok(answer.text.trim().length > 0, JSON.stringify(answer));
  figures.rag_answer = answer;
  await page.screenshot({ path: `${artifacts}/demo-rag.png`, fullPage: true });

  step("the library survives a reload, and a document can be removed");
  await page.reload();
  await page.waitForSelector("body[data-ready=true]");
  assert.match(await page.textContent("#library-summary"), /^2 documents, \d+ chunks$/);
  await page.click("button[aria-label='Remove bakery.pdf']");
  await page.waitForFunction(() => /^1 documents/.test(document.getElementById("library-summary").textContent));

  console.log(`demo | all checks passed | ${JSON.stringify(figures)}`);
} finally {
  await browser.close();
  server.kill();
}
