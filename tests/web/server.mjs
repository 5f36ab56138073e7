// A static server for the browser tests: the npm package under /pkg/, the
// Vite app built from its tarball under /vite/, model packages under
// /models/NAME/, the test page at /. Counts every request, and
// serves two broken copies of a model: /models/corrupt/ (one shard with a
// flipped byte) and /models/html/ (shards answered with an HTML error page).
// Single files (GGUFs) are served by range from /gguf/NAME (206 with
// Content-Range and an ETag), as a server without range support from
// /gguf-norange/NAME (200, the whole file), and from /gguf-cut/NAME with the
// connection broken mid-body on the first range that starts past 3/4 of the
// file (an interrupted download, after the first 64 MiB shard of SmolLM2).
// Folders (Hugging Face-style) are served by range from /hf/NAME/FILE.
// `bytes` counts body bytes sent per path (per folder for /hf/). With
// `isolated`, every response carries COOP/COEP, so pages are cross-origin
// isolated (SharedArrayBuffer: the CPU backend's threads).

import { createReadStream, readFileSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize } from "node:path";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".bin": "application/octet-stream",
};

export function startServer({ root, models, files = {}, folders = {}, isolated = false }) {
  const requests = new Map();
  const bytes = new Map();
  const count = (path) => requests.set(path, (requests.get(path) ?? 0) + 1);
  const sent = (path, n) => bytes.set(path, (bytes.get(path) ?? 0) + n);
  const cut = new Set(); // files whose /gguf-cut/ download was broken once

  const server = createServer((req, res) => {
    if (isolated) {
      res.setHeader("cross-origin-opener-policy", "same-origin");
      res.setHeader("cross-origin-embedder-policy", "require-corp");
    }
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    count(path);
    const send = (status, type, body) => {
      res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
      res.end(body);
    };
    const single = path.match(/^\/(gguf|gguf-norange|gguf-cut)\/([\w.-]+)$/);
    if (single) {
      const [, mode, name] = single;
      if (!files[name]) return send(404, "text/plain", "not found");
      return serveRange(req, res, files[name], mode, name, (n) => sent(path, n));
    }
    const inFolder = path.match(/^\/hf\/([\w-]+)\/([\w.-]+(?:\/[\w.-]+)?)$/);
    if (inFolder) {
      const [, name, rest] = inFolder;
      const file = folders[name] && join(folders[name], rest);
      if (!file || rest.includes("..") || !statSync(file, { throwIfNoEntry: false })?.isFile()) return send(404, "text/plain", "not found");
      return serveRange(req, res, file, "gguf", `${name}/${rest}`, (n) => sent(`/hf/${name}`, n));
    }
    let file;
    if (path === "/") file = join(root, "tests/web/page.html");
    else if (path.startsWith("/pkg/")) file = join(root, "pkg", normalize(path.slice(5)));
    else if (path.startsWith("/vite/")) file = join(root, "target/web/vite-app/dist", normalize(path.slice(6)) || "index.html");
    else {
      const m = path.match(/^\/models\/([a-z0-9-]+)\/([\w.-]+)$/);
      if (!m) return send(404, "text/plain", "not found");
      const [, name, rest] = m;
      if (name === "html" && rest.endsWith(".bin")) {
        return send(200, "text/html", "<!doctype html><title>Sign in</title><p>Please sign in");
      }
      const dir = models[name === "corrupt" || name === "html" ? "smollm2" : name];
      if (!dir) return send(404, "text/plain", "no such model");
      file = join(dir, rest);
      if (name === "corrupt" && rest === "shard-00001.bin") {
        const bytes = readFileSync(file);
        bytes[1000] ^= 0xff;
        return send(200, TYPES[".bin"], bytes);
      }
    }
    let size;
    try {
      size = statSync(file).size;
    } catch {
      return send(404, "text/plain", "not found");
    }
    res.writeHead(200, {
      "content-type": TYPES[extname(file)] ?? "application/octet-stream",
      "content-length": size,
      "cache-control": "no-store",
    });
    createReadStream(file).pipe(res);
  });
  /** `file` by range; `mode` as the header says. */
  function serveRange(req, res, file, mode, name, onSent) {
    const { size, mtimeMs } = statSync(file);
    const headers = { "content-type": "application/octet-stream", "cache-control": "no-store", etag: `"${size}-${Math.round(mtimeMs)}"` };
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    if (!range || mode === "gguf-norange") {
      res.writeHead(200, { ...headers, "content-length": size });
      return createReadStream(file).on("data", (chunk) => onSent(chunk.length)).pipe(res);
    }
    const start = Number(range[1]);
    const end = Math.min(range[2] === "" ? size - 1 : Number(range[2]), size - 1);
    if (start >= size) {
      res.writeHead(416, { ...headers, "content-range": `bytes */${size}` });
      return res.end();
    }
    res.writeHead(206, { ...headers, "accept-ranges": "bytes", "content-range": `bytes ${start}-${end}/${size}`, "content-length": end - start + 1 });
    if (mode === "gguf-cut" && start > (size * 3) / 4 && !cut.has(name)) {
      cut.add(name);
      // Half the range, then the connection drops.
      const half = Math.floor((end - start + 1) / 2);
      return createReadStream(file, { start, end: start + half - 1 })
        .on("data", (chunk) => onSent(chunk.length))
        .on("end", () => res.destroy())
        .pipe(res, { end: false });
    }
    createReadStream(file, { start, end }).on("data", (chunk) => onSent(chunk.length)).pipe(res);
  }

  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}`, requests, bytes, close: () => server.close() });
    });
  });
}
