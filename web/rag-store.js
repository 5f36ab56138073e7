// The RAG page's library in IndexedDB, so it survives reloads:
//   documents: {id, name, type, bytes, pages, chunks, addedAt, embeddingModel}
//   chunks:    {id, docId, page, start, end, text, vector (Float32Array)}

const DB_NAME = "phi-web-rag";
const VERSION = 1;

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new DOMException("the transaction was aborted", "AbortError"));
  });
}

export class Library {
  static async open() {
    const open = indexedDB.open(DB_NAME, VERSION);
    open.onupgradeneeded = () => {
      const db = open.result;
      db.createObjectStore("documents", { keyPath: "id" });
      const chunks = db.createObjectStore("chunks", { keyPath: "id" });
      chunks.createIndex("docId", "docId");
    };
    return new Library(await request(open));
  }

  constructor(db) {
    this.db = db;
  }

  /** Stores a document and all its chunks in one transaction (all or nothing). */
  async addDocument(document, chunks) {
    const tx = this.db.transaction(["documents", "chunks"], "readwrite");
    tx.objectStore("documents").put(document);
    const store = tx.objectStore("chunks");
    for (const chunk of chunks) store.put(chunk);
    await done(tx);
  }

  documents() {
    return request(this.db.transaction("documents").objectStore("documents").getAll());
  }

  chunks() {
    return request(this.db.transaction("chunks").objectStore("chunks").getAll());
  }

  async removeDocument(docId) {
    const tx = this.db.transaction(["documents", "chunks"], "readwrite");
    tx.objectStore("documents").delete(docId);
    const index = tx.objectStore("chunks").index("docId");
    const keys = await request(index.getAllKeys(docId));
    for (const key of keys) tx.objectStore("chunks").delete(key);
    await done(tx);
  }

  async clear() {
    const tx = this.db.transaction(["documents", "chunks"], "readwrite");
    tx.objectStore("documents").clear();
    tx.objectStore("chunks").clear();
    await done(tx);
  }
}
