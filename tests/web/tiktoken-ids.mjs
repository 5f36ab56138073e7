// Reference token ids for tests/tiktoken.rs: npm js-tiktoken's encoder over
// its own ranks plus extra special tokens, with every special token allowed
// (as Phi-3-small's tokenizer calls tiktoken).
// stdin: {"ranks": "cl100k_base", "specials": {"<|end|>": 100266, ...}, "texts": ["...", ...]}
// stdout: [[ids of texts[0]], ...]
import { Tiktoken } from "js-tiktoken/lite";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { ranks, specials, texts } = JSON.parse(input);
const bpe = (await import(`js-tiktoken/ranks/${ranks}`)).default;
const encoder = new Tiktoken(bpe, specials);
process.stdout.write(JSON.stringify(texts.map((text) => encoder.encode(text, "all"))));
