//! Every Phi vocabulary through the HF `tokenizers` crate, exact ids on
//! varied text against an independent encoder:
//! - tiktoken (npm js-tiktoken's encoder, tests/web/tiktoken-ids.mjs):
//!   Phi-3-small's cl100k_base converted by `phi-web convert` from the
//!   `cl100k_base.tiktoken` file its hub folder ships, with its chat
//!   template; Phi-4's cl100k and Phi-4-mini's o200k rebuilt from
//!   js-tiktoken's ranks plus each model's special tokens; and the same
//!   vocabularies stored in a GGUF as llama.cpp writes them (`gpt2` model,
//!   `dbrx` / `gpt-4o` pre-tokenizers), converted back.
//! - SentencePiece (npm llama-tokenizer-js, tests/web/llama-ids.mjs): the
//!   Llama-2 vocabulary plus Phi-3's added tokens in a GGUF (`llama` model:
//!   tokens, scores, token types) as Microsoft's Phi-3 GGUFs store it.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use phi_web::chat_templates;
use phi_web::convert::{convert, ConvertOptions};
use phi_web::formats::gguf::Gguf;
use phi_web::formats::gguf_tokenizer;
use phi_web::formats::package::Package;
use phi_web::formats::tiktoken::{
    self, parse_js_tiktoken, phi3small_special_tokens, phi4_special_tokens, phi4mini_special_tokens,
};
use phi_web::tokenizer::{Message, Tokenizer};
use serde_json::{json, Value};

#[path = "support/gguf_builder.rs"]
mod gguf_builder;
use gguf_builder::GgufBuilder;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const TEXTS: &[&str] = &[
    "Hello, world! It's a test; we'll see what they've done.",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
    "1234567890 3.14159 -42 1e-5 0xDEADBEEF 2026-12-03",
    "tabs\tand   runs of     spaces\n\n\n  and newlines\r\n\r\nCRLF  ",
    "Ça coûte 12 € — naïve façade, Ångström, Straße, ĳ, ǅ",
    "emoji 👍🏽 family 👨‍👩‍👧 flags 🇫🇷 ✨",
    "中文分词测试，日本語のテキスト、한국어 문장입니다.",
    "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|><|endoftext|>",
    "not special: <|user> <|end| |end|> <|dummy_id_3|>x",
    "   leading spaces and trailing   ",
    "DON'T SHOUT'LL 'S 'd 're",
    "",
];

/// The tiny Phi-3-small folder with the cl100k_base.tiktoken file (written
/// from js-tiktoken's ranks) in place of a tokenizer.json, converted.
fn package_with_tiktoken() -> Package {
    static CONVERTED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    Package::open(CONVERTED.get_or_init(convert_with_tiktoken)).unwrap()
}

fn convert_with_tiktoken() -> PathBuf {
    let data = root().join("tests/data/tiny-phi3small");
    let scratch = root().join("target/test-scratch/tiktoken-phi3small");
    let (input, out) = (scratch.join("input"), scratch.join("package"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&input).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(data.join(file), input.join(file)).unwrap();
    }
    let ranks = parse_js_tiktoken(&js_ranks("cl100k_base")).unwrap();
    let lines: String = ranks.iter().map(|(token, rank)| format!("{} {rank}\n", base64(token))).collect();
    std::fs::write(input.join("cl100k_base.tiktoken"), lines).unwrap();
    convert(&input, &out, &ConvertOptions::default(), &mut |_| {}).unwrap();
    out
}

fn js_ranks(name: &str) -> PathBuf {
    let path = root().join(format!("tests/web/node_modules/js-tiktoken/dist/ranks/{name}.js"));
    assert!(path.exists(), "{} is missing: run `npm ci --prefix tests/web` (make test does)", path.display());
    path
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// Runs `tests/web/<script>` with `input` on stdin; its stdout as JSON.
fn node<T: serde::de::DeserializeOwned>(script: &str, input: &Value) -> T {
    let path = root().join("tests/web").join(script);
    let mut child = Command::new("node")
        .arg(&path)
        .current_dir(root().join("tests/web"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("node runs {}: {e}", path.display()));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.to_string().as_bytes()).unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{script} failed (run `npm ci --prefix tests/web`; make test does)");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// js-tiktoken's ids for `texts` over `ranks` plus `specials`.
fn tiktoken_ids(ranks: &str, specials: &[(String, u32)], texts: &[&str]) -> Vec<Vec<u32>> {
    let specials: serde_json::Map<String, Value> = specials.iter().map(|(t, id)| (t.clone(), json!(id))).collect();
    node("tiktoken-ids.mjs", &json!({"ranks": ranks, "specials": specials, "texts": texts}))
}

/// js-tiktoken's ids for `texts` with Phi-3-small's specials.
fn reference_ids(texts: &[&str]) -> Vec<Vec<u32>> {
    tiktoken_ids("cl100k_base", &phi3small_special_tokens(), texts)
}

fn tokenizer(package: &Package, dir: &Path) -> Tokenizer {
    let file = dir.join(package.manifest.tokenizer.as_deref().expect("the converter wrote a tokenizer"));
    Tokenizer::from_bytes(&std::fs::read(file).unwrap(), &package.manifest).unwrap()
}

#[test]
fn phi3small_cl100k_ids_match_tiktoken() {
    let package = package_with_tiktoken();
    let tokenizer = tokenizer(&package, &package.dir);
    let expected = reference_ids(TEXTS);
    for (text, want) in TEXTS.iter().zip(&expected) {
        let got = tokenizer.encode(text).unwrap();
        assert_eq!(&got, want, "ids of {text:?}");
        assert_eq!(tokenizer.decode(&got).unwrap(), *text, "decode(encode({text:?}))");
    }
    let total: usize = expected.iter().map(Vec::len).sum();
    eprintln!(
        "tiktoken | cl100k + Phi-3-small specials: {} texts, {total} ids, all equal to js-tiktoken's",
        TEXTS.len()
    );
    // <|end|> stops a chat turn beside the config's <|endoftext|>.
    assert!(package.manifest.stop_token_ids.contains(&100266), "{:?}", package.manifest.stop_token_ids);
}

#[test]
fn phi3small_chat_template_renders_as_the_model_card_says() {
    let package = package_with_tiktoken();
    let tokenizer = tokenizer(&package, &package.dir);
    let messages = [
        Message::new("system", "You are terse."),
        Message::new("user", "Hi!"),
        Message::new("assistant", "Hello."),
        Message::new("user", "What is 2+2?"),
    ];
    let prompt = tokenizer.apply_chat_template(&messages).unwrap();
    let expected =
        "<|endoftext|><|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n\
                    <|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n";
    assert_eq!(prompt, expected);
    let ids = tokenizer.encode(&prompt).unwrap();
    assert_eq!(&ids[..3], &[100257, 100261, 198], "<|endoftext|> <|system|> \\n");
    assert_eq!(ids.last(), Some(&198));
    assert_eq!(ids, reference_ids(&[expected])[0]);
}

/// Texts for every vocabulary: TEXTS plus chat turns in Phi-4's and
/// Phi-4-mini's own special tokens.
fn all_texts() -> Vec<&'static str> {
    let mut texts = TEXTS.to_vec();
    texts.extend([
        "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi!<|im_end|><|im_start|>assistant<|im_sep|>",
        "<|system|>Tools:<|tool|>[{\"name\": \"add\"}]<|/tool|><|end|><|user|>2+2?<|end|><|assistant|><|tool_call|>{}<|/tool_call|>",
        "ａｂｃ ℌ𝔢𝔩𝔩𝔬 ÀÉÎÕÜ àéîõü ΑΒΓ αβγ Ωμέγα ДОБРЫЙ день I'M HERE you'RE",
    ]);
    texts
}

/// The ids `tokenizer_json` (a tokenizer.json document) gives each text.
fn hf_ids(tokenizer_json: &Value, texts: &[&str]) -> Vec<Vec<u32>> {
    let tokenizer: tokenizers::Tokenizer = tokenizer_json.to_string().parse().unwrap();
    texts.iter().map(|t| tokenizer.encode(*t, false).unwrap().get_ids().to_vec()).collect()
}

fn assert_same_ids(what: &str, texts: &[&str], got: &[Vec<u32>], expected: &[Vec<u32>]) {
    for ((text, got), want) in texts.iter().zip(got).zip(expected) {
        assert_eq!(got, want, "{what}: ids of {text:?}");
    }
    let total: usize = expected.iter().map(Vec::len).sum();
    eprintln!("vocabularies | {what}: {} texts, {total} ids, all equal to the reference's", texts.len());
}

/// The tokenizer.json of js-tiktoken's `ranks` plus `specials`.
fn tiktoken_tokenizer(ranks: &str, pattern: &str, specials: &[(String, u32)]) -> Value {
    tiktoken::tokenizer_json(&parse_js_tiktoken(&js_ranks(ranks)).unwrap(), pattern, specials).unwrap()
}

#[test]
fn o200k_pattern_is_js_tiktokens() {
    let text = std::fs::read_to_string(js_ranks("o200k_base")).unwrap();
    let module: Value =
        serde_json::from_str(text.trim().trim_start_matches("export default").trim_end_matches(';')).unwrap();
    assert_eq!(module["pat_str"].as_str(), Some(tiktoken::O200K_PATTERN));
}

/// js-tiktoken's ids for `all_texts()` over `ranks` plus `specials`, after
/// checking that the tokenizer.json rebuilt from them gives the same ids,
/// directly and through a GGUF with pre-tokenizer `pre`.
fn check_tiktoken_vocabulary(
    ranks: &str,
    pattern: &str,
    specials: &[(String, u32)],
    pre: &str,
    what: &str,
) -> Vec<Vec<u32>> {
    let texts = all_texts();
    let tokenizer = tiktoken_tokenizer(ranks, pattern, specials);
    let expected = tiktoken_ids(ranks, specials, &texts);
    assert_same_ids(what, &texts, &hf_ids(&tokenizer, &texts), &expected);
    let gguf = byte_level_gguf(&tokenizer, pre, &format!("{ranks}.gguf"));
    let what = format!("{what}, from a GGUF (pre `{pre}`)");
    assert_same_ids(&what, &texts, &hf_ids(&gguf_tokenizer(&gguf), &texts), &expected);
    expected
}

#[test]
fn phi4_cl100k_ids_match_tiktoken() {
    let specials = phi4_special_tokens();
    let expected =
        check_tiktoken_vocabulary("cl100k_base", tiktoken::CL100K_PATTERN, &specials, "dbrx", "cl100k + Phi-4");
    assert_eq!(expected[expected.len() - 3][..3], [100264, 9125, 100266], "<|im_start|> system <|im_sep|>");
}

#[test]
fn phi4mini_o200k_ids_match_tiktoken() {
    let specials = phi4mini_special_tokens();
    let what = "o200k + Phi-4-mini";
    let expected = check_tiktoken_vocabulary("o200k_base", tiktoken::O200K_PATTERN, &specials, "gpt-4o", what);
    assert_eq!(expected[expected.len() - 2][0], 200022, "<|system|>");
}

/// A GGUF holding `tokenizer` (a byte-level BPE tokenizer.json) as
/// llama.cpp's converter writes one: `gpt2` model, tokens by id (gaps
/// filled), special tokens as control tokens, merges as "left right".
fn byte_level_gguf(tokenizer: &Value, pre: &str, name: &str) -> PathBuf {
    let mut by_id: HashMap<u64, (String, i32)> = tokenizer["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(token, id)| (id.as_u64().unwrap(), (token.clone(), 1)))
        .collect();
    for added in tokenizer["added_tokens"].as_array().unwrap() {
        by_id.insert(added["id"].as_u64().unwrap(), (added["content"].as_str().unwrap().to_string(), 3));
    }
    let n = by_id.keys().max().unwrap() + 1;
    let (tokens, types): (Vec<String>, Vec<i32>) =
        (0..n).map(|id| by_id.remove(&id).unwrap_or_else(|| (format!("[PAD{id}]"), 5))).unzip();
    let merges: Vec<String> = tokenizer["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()))
        .collect();
    let path = scratch(name);
    GgufBuilder::default()
        .string("general.architecture", "phi3")
        .string("tokenizer.ggml.model", "gpt2")
        .string("tokenizer.ggml.pre", pre)
        .strings("tokenizer.ggml.tokens", &tokens)
        .i32s("tokenizer.ggml.token_type", &types)
        .strings("tokenizer.ggml.merges", &merges)
        .write(&path)
}

fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target/test-scratch/vocabularies");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn gguf_tokenizer(path: &Path) -> Value {
    serde_json::from_str(&gguf_tokenizer::tokenizer_json(&Gguf::open(path).unwrap()).unwrap()).unwrap()
}

/// Phi-3's added tokens on top of Llama-2's 32000 (its tokenizer.json).
const PHI3_ADDED: [&str; 11] = [
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
];

/// Microsoft's Phi-3 GGUF vocabulary rebuilt from llama-tokenizer-js:
/// tokens, types (<unk> unknown, <s> </s> control, <0xNN> byte, Phi-3's
/// added tokens control) and scores. SentencePiece keeps a score per piece,
/// the package its merges: a piece scores minus the rank of its first merge,
/// pieces no merge makes score below every merged one.
fn phi3_gguf() -> GgufBuilder {
    #[derive(serde::Deserialize)]
    struct Dump {
        tokens: Vec<String>,
        merges: Vec<(String, String)>,
    }
    let Dump { mut tokens, merges } = node("llama-ids.mjs", &json!({"dump": true}));
    let mut first_merge: HashMap<String, usize> = HashMap::new();
    for (rank, (l, r)) in merges.iter().enumerate() {
        first_merge.entry(format!("{l}{r}")).or_insert(rank);
    }
    let mut scores: Vec<f32> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| match first_merge.get(t) {
            Some(&rank) => -(rank as f32),
            None if id < 259 => 0.0,
            None => -((merges.len() + id) as f32),
        })
        .collect();
    let mut types: Vec<i32> = (0..tokens.len())
        .map(|id| {
            if id < 3 {
                [2, 3, 3][id]
            } else if id < 259 {
                6
            } else {
                1
            }
        })
        .collect();
    tokens.extend(PHI3_ADDED.iter().map(|t| t.to_string()));
    types.extend([3; PHI3_ADDED.len()]);
    scores.extend([0.0; PHI3_ADDED.len()]);
    GgufBuilder::default()
        .string("general.name", "Phi3")
        .string("tokenizer.ggml.model", "llama")
        .strings("tokenizer.ggml.tokens", &tokens)
        .f32s("tokenizer.ggml.scores", &scores)
        .i32s("tokenizer.ggml.token_type", &types)
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 32000)
        .bool("tokenizer.ggml.add_space_prefix", true)
}

#[test]
fn phi3_sentencepiece_gguf_matches_llama_tokenizer_js() {
    let mut texts = all_texts();
    texts.extend(["<|user|>\n  Hi<|end|>\n<|assistant|>", "<s>x</s> <unk>", "\u{2581}already marked", "🦀🦀🦀"]);
    let gguf = phi3_gguf().string("general.architecture", "phi3");
    let tokenizer = gguf_tokenizer(&gguf.write(&scratch("phi3-vocab.gguf")));
    let specials: Vec<&str> = ["<unk>", "<s>", "</s>"].into_iter().chain(PHI3_ADDED).collect();
    let special_ids: HashMap<&str, u32> =
        specials.iter().enumerate().map(|(i, s)| (*s, if i < 3 { i as u32 } else { 32000 + i as u32 - 3 })).collect();
    let rstrip: Vec<&str> =
        specials.iter().copied().filter(|s| !["<unk>", "<s>", "<|endoftext|>"].contains(s)).collect();
    let expected: Vec<Vec<u32>> = node(
        "llama-ids.mjs",
        &json!({"texts": texts, "specials": specials, "specialIds": special_ids, "rstrip": rstrip}),
    );
    assert_same_ids("Llama-2 + Phi-3 SentencePiece from a GGUF", &texts, &hf_ids(&tokenizer, &texts), &expected);

    // Decoding gives the text back, but for the space SentencePiece prepends.
    let hf: tokenizers::Tokenizer = tokenizer.to_string().parse().unwrap();
    for text in TEXTS.iter().filter(|t| !t.contains("<|")) {
        let ids = hf.encode(*text, false).unwrap().get_ids().to_vec();
        assert_eq!(hf.decode(&ids, false).unwrap(), *text, "decode(encode({text:?}))");
    }
}

#[test]
fn a_phi3_gguf_converts_with_its_vocabulary_template_and_stop_tokens() {
    let gguf = phi3_gguf().string("general.name", "Phi-3-mini-4k-instruct");
    let mut builder = GgufBuilder::tiny_llama("llama");
    builder.kv.extend(gguf.kv.into_iter().filter(|(k, _, _)| k != "general.name"));
    let builder = builder.string("general.name", "Phi-3-mini-4k-instruct");
    let out = scratch("phi3-package");
    let summary =
        convert(&builder.write(&scratch("phi3-model.gguf")), &out, &ConvertOptions::default(), &mut |_| {}).unwrap();
    assert!(summary.warnings.iter().any(|w| w.contains("no chat template")), "{:?}", summary.warnings);
    let package = Package::open(&out).unwrap();
    assert_eq!(package.manifest.chat_template.as_deref(), Some(chat_templates::PHI3_MINI));
    // eos <|endoftext|> and the end of a turn, <|end|>.
    assert!(package.manifest.stop_token_ids.contains(&32000), "{:?}", package.manifest.stop_token_ids);
    assert!(package.manifest.stop_token_ids.contains(&32007), "{:?}", package.manifest.stop_token_ids);
    let tokenizer = tokenizer(&package, &out);
    let prompt = tokenizer.apply_chat_template(&[Message::new("user", "Hi")]).unwrap();
    assert_eq!(prompt, "<|user|>\nHi<|end|>\n<|assistant|>\n");
    // <|user|> swallows the newline after it, as in Phi-3's tokenizer.json.
    let hi: Vec<Vec<u32>> =
        node("llama-ids.mjs", &json!({"texts": ["Hi"], "specials": [], "specialIds": {}, "rstrip": []}));
    let expected: Vec<u32> = [32010].into_iter().chain(hi[0].iter().copied()).chain([32007, 32001]).collect();
    assert_eq!(tokenizer.encode(&prompt).unwrap(), expected);
}
