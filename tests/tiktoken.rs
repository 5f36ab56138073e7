//! tiktoken vocabularies through the HF `tokenizers` crate: Phi-3-small's
//! cl100k_base plus its special tokens, converted by `phi-web convert` from
//! the `cl100k_base.tiktoken` file its hub folder ships, against npm
//! js-tiktoken's encoder (tests/web/tiktoken-ids.mjs) on varied text — exact
//! ids — and its chat template.
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use phi_web::convert::{convert, ConvertOptions};
use phi_web::formats::package::Package;
use phi_web::formats::tiktoken::{parse_js_tiktoken, phi3small_special_tokens};
use phi_web::tokenizer::{Message, Tokenizer};

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

/// js-tiktoken's ids for `texts`.
fn reference_ids(texts: &[&str]) -> Vec<Vec<u32>> {
    let specials: serde_json::Map<String, serde_json::Value> =
        phi3small_special_tokens().into_iter().map(|(t, id)| (t, id.into())).collect();
    let input = serde_json::json!({"ranks": "cl100k_base", "specials": specials, "texts": texts});
    let script = root().join("tests/web/tiktoken-ids.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs tests/web/tiktoken-ids.mjs");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.to_string().as_bytes()).unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "tiktoken-ids.mjs failed");
    serde_json::from_slice(&output.stdout).unwrap()
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
