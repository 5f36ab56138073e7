// Reference for the SentencePiece path in tests/vocabularies.rs: npm
// llama-tokenizer-js (the Llama-2 vocabulary that Phi-3, Phi-3.5 and
// Phi-3-medium extend, with its own encoder).
// stdin {"dump": true}: stdout {"tokens": [...], "merges": [[left, right], ...]} (merges by priority)
// stdin {"texts": [...], "specials": ["<|user|>", ...], "rstrip": ["<|user|>", ...]}:
//   stdout [[ids], ...]: each text split at the special tokens (an rstrip one
//   swallows the whitespace after it), each piece encoded with a leading
//   space and no bos, as transformers runs Phi-3's tokenizer.json.
import llama from "llama-tokenizer-js";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const request = JSON.parse(input);

if (request.dump) {
  const merges = [...llama.merges.entries()].sort((a, b) => a[1] - b[1]).map(([key]) => key.split(" "));
  process.stdout.write(JSON.stringify({ tokens: llama.vocabById, merges }));
} else {
  const ids = request.texts.map((text) => {
    const out = [];
    let rest = text;
    while (rest.length > 0) {
      let at = rest.length, special = null;
      for (const s of request.specials) {
        const i = rest.indexOf(s);
        if (i >= 0 && (i < at || (i === at && s.length > special.length))) [at, special] = [i, s];
      }
      if (at > 0) out.push(...llama.encode(rest.slice(0, at), false, true));
      if (special === null) break;
      out.push(request.specialIds[special]);
      rest = rest.slice(at + special.length);
      if (request.rstrip.includes(special)) rest = rest.replace(/^\s+/u, "");
    }
    return out;
  });
  process.stdout.write(JSON.stringify(ids));
}
