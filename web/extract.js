// Text out of the files a user drops on the RAG page: .txt and .md as they
// are, .html without its markup (parsed inertly: nothing runs), .pdf page by
// page through pdf.js (served locally from web/node_modules, see package.json).
// Returns { pages: [text, …] } (one page for everything but PDFs).

export const ACCEPTED = [".txt", ".md", ".markdown", ".html", ".htm", ".pdf"];

function extension(name) {
  return name.toLowerCase().match(/\.[a-z]+$/)?.[0] ?? "";
}

export async function extractText(file) {
  const ext = extension(file.name);
  if (!ACCEPTED.includes(ext)) {
    throw Object.assign(new Error(`${file.name}: only ${ACCEPTED.join(", ")} files can be added`), { name: "InputError" });
  }
  if (ext === ".pdf") return { pages: await pdfPages(file) };
  const text = await file.text();
  if (ext === ".html" || ext === ".htm") {
    const doc = new DOMParser().parseFromString(text, "text/html");
    doc.querySelectorAll("script, style, noscript, template").forEach((e) => e.remove());
    return { pages: [(doc.body?.textContent ?? "").replace(/[ \t]+/g, " ").replace(/\n\s*\n+/g, "\n\n").trim()] };
  }
  return { pages: [text] };
}

async function pdfPages(file) {
  const base = new URL("vendor/pdfjs/", document.baseURI);
  const pdfjs = await import(new URL("pdf.min.mjs", base).href);
  pdfjs.GlobalWorkerOptions.workerSrc = new URL("pdf.worker.min.mjs", base).href;
  const task = pdfjs.getDocument({ data: new Uint8Array(await file.arrayBuffer()) });
  try {
    let pdf;
    try {
      pdf = await task.promise;
    } catch (e) {
      throw Object.assign(new Error(`${file.name}: not a readable PDF (${e.message})`), { name: "InputError" });
    }
    const pages = [];
    for (let n = 1; n <= pdf.numPages; n++) {
      const content = await (await pdf.getPage(n)).getTextContent();
      pages.push(content.items.map((item) => item.str + (item.hasEOL ? "\n" : " ")).join(""));
    }
    return pages;
  } finally {
    await task.destroy();
  }
}
