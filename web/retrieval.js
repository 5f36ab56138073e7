// Retrieval for the RAG page: an in-memory index of L2-normalised chunk
// vectors (cosine = dot product) with an optional keyword score blended in,
// and the prompt that asks the model for numbered citations. Pure JS: runs in
// the page, in node, anywhere.

const STOPWORDS = new Set(
  "a an and are as at be by can do does did for from has have how i in is it its of on or that the their this to was what when where which who why will with you your".split(" "),
);

/** Lower-cased content words of a text (for the keyword score). */
export function terms(text) {
  return (text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []).filter((t) => t.length > 1 && !STOPWORDS.has(t));
}

export class VectorIndex {
  constructor(dimensions) {
    this.dimensions = dimensions;
    this.vectors = new Float32Array(1024 * dimensions);
    this.entries = []; // {id, ...whatever the caller stores}, parallel to the rows
    this.termSets = [];
  }

  get size() {
    return this.entries.length;
  }

  /** Adds one chunk: `entry` must hold `id` and `text`; `vector` its embedding. */
  add(entry, vector) {
    if (vector.length !== this.dimensions) {
      throw new Error(`a ${vector.length}-dimensional vector cannot join a ${this.dimensions}-dimensional index`);
    }
    const row = this.entries.length;
    if ((row + 1) * this.dimensions > this.vectors.length) {
      const grown = new Float32Array(this.vectors.length * 2);
      grown.set(this.vectors);
      this.vectors = grown;
    }
    this.vectors.set(vector, row * this.dimensions);
    this.entries.push(entry);
    this.termSets.push(new Set(terms(entry.text ?? "")));
  }

  /** Drops every chunk for which `drop(entry)` is true. */
  remove(drop) {
    const keep = this.entries.map((e, i) => [e, i]).filter(([e]) => !drop(e));
    const vectors = new Float32Array(Math.max(1024, keep.length) * this.dimensions);
    keep.forEach(([, i], row) => vectors.set(this.vectors.subarray(i * this.dimensions, (i + 1) * this.dimensions), row * this.dimensions));
    this.termSets = keep.map(([, i]) => this.termSets[i]);
    this.entries = keep.map(([e]) => e);
    this.vectors = vectors;
  }

  /**
   * The k best chunks for a query vector: [{entry, score, cosine, keyword}].
   * With `query` text and `keywordWeight` > 0, the score blends in the share
   * of the query's content words that the chunk contains.
   */
  search(queryVector, k, { query = "", keywordWeight = 0 } = {}) {
    const d = this.dimensions;
    const words = keywordWeight > 0 ? [...new Set(terms(query))] : [];
    const top = []; // kept sorted, best first, at most k
    for (let row = 0; row < this.entries.length; row++) {
      let cosine = 0;
      const base = row * d;
      for (let i = 0; i < d; i++) cosine += this.vectors[base + i] * queryVector[i];
      let keyword = 0;
      if (words.length) {
        const set = this.termSets[row];
        for (const w of words) if (set.has(w)) keyword += 1;
        keyword /= words.length;
      }
      const score = (1 - keywordWeight) * cosine + keywordWeight * keyword;
      if (top.length < k || score > top[top.length - 1].score) {
        let at = top.length;
        while (at > 0 && top[at - 1].score < score) at--;
        top.splice(at, 0, { entry: this.entries[row], score, cosine, keyword });
        if (top.length > k) top.pop();
      }
    }
    return top;
  }
}

/** Chat messages asking `question` over numbered `sources` [{title, text}]. */
export function groundedMessages(question, sources) {
  const numbered = sources.map((s, i) => `[${i + 1}] (${s.title})\n${s.text.trim()}`).join("\n\n");
  return [
    {
      role: "system",
      content:
        "Answer the question using only the numbered sources. Cite the sources you use like [1]. " +
        "If the sources do not contain the answer, say that you do not know.",
    },
    { role: "user", content: `Sources:\n\n${numbered}\n\nQuestion: ${question}` },
  ];
}
