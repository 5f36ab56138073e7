// A static server for the browser tests: the npm package under /pkg/, the
// Vite app built from its tarball under /vite/, model packages under
// /models/NAME/, the test page at /. Counts every request, and
// serves two broken copies of a model: /models/corrupt/ (one shard with a
// flipped byte) and /models/html/ (shards answered with an HTML error page).

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

export function startServer({ root, models }) {
  const requests = new Map();
  const count = (path) => requests.set(path, (requests.get(path) ?? 0) + 1);

  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    count(path);
    const send = (status, type, body) => {
      res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
      res.end(body);
    };
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
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}`, requests, close: () => server.close() });
    });
  });
}
