//! The `phi-web` command as other tools use it: convert, verify, inspect, logits,
//! tokenize, generate, and their errors (exit status 1 and a message, never a panic).
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn phi_web(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phi-web")).args(args).env("NODEVICE_SELECT", "1").output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn converted(name: &str, quant: &str) -> PathBuf {
    let out = root().join("target").join("test-scratch").join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&out);
    let input = root().join("tests").join("data").join("tiny-phi3");
    let o = phi_web(&["convert", input.to_str().unwrap(), out.to_str().unwrap(), "--quant", quant, "--shard-mb", "1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("tensors"), "{}", text(&o.stdout));
    out
}

#[test]
fn logits_prints_one_row_per_token() {
    let dir = converted("logits", "f32");
    let o = phi_web(&["logits", dir.to_str().unwrap(), "--tokens", "1,17,300"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = json["logits"].as_array().unwrap();
    assert_eq!((rows.len(), rows[0].as_array().unwrap().len()), (3, 512));
    let o = phi_web(&["logits", dir.to_str().unwrap(), "--tokens", "1,17,300", "--top", "2"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["top"][2].as_array().unwrap().len(), 2);
    // A context shorter than a prefill chunk prefills in chunks of its length: the same logits.
    let o = phi_web(&["logits", dir.to_str().unwrap(), "--tokens", "1,17,300", "--context", "3"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let short: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(short["logits"].as_array().unwrap().len(), 3);
    let o = phi_web(&["logits", dir.to_str().unwrap(), "--tokens", "1,17,300", "--context", "2"]);
    assert!(o.status.code() == Some(1) && text(&o.stderr).contains("pass --context 3"), "{}", text(&o.stderr));
}

/// `--kv-cache f32` leaves only f32 arithmetic: transformers' logits within
/// 2e-5 (the f16 cache rounds them by ~1e-4); an unknown format is an error.
#[test]
fn logits_with_an_f32_kv_cache_match_transformers() {
    let dir = converted("logits-f32-cache", "f32");
    let golden = std::fs::read(root().join("tests/data/tiny-phi3/logits.f32")).unwrap();
    let golden: Vec<f32> = bytemuck::pod_collect_to_vec(&golden[..3 * 512 * 4]);
    let o = phi_web(&["logits", dir.to_str().unwrap(), "--tokens", "1,17,300", "--kv-cache", "f32"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ours: Vec<f32> = json["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let err = ours.iter().zip(&golden).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 2e-5, "max |logit error| {err}");
    let o = phi_web(&["logits", dir.to_str().unwrap(), "--tokens", "1", "--kv-cache", "int4"]);
    assert!(!o.status.success() && text(&o.stderr).contains("expected f16, q8 or f32"), "{}", text(&o.stderr));
}

#[test]
fn damaged_packages_and_bad_arguments_are_errors() {
    let dir = converted("damaged", "q8_0");
    let o = phi_web(&["verify", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let shard = dir.join("shard-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    for args in [vec!["verify"], vec!["logits", "--tokens", "1"]] {
        let mut full = args.clone();
        full.insert(1, dir.to_str().unwrap());
        let o = phi_web(&full);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            text(&o.stderr).contains("shard-00000.bin") && text(&o.stderr).contains("corrupted"),
            "{}",
            text(&o.stderr)
        );
    }
    let o = phi_web(&["generate", dir.to_str().unwrap(), "--prompt", "hi", "--no-verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no tokenizer"), "{}", text(&o.stderr));
    let o = phi_web(&["logits", dir.to_str().unwrap(), "--tokens", "1,x", "--no-verify"]);
    assert!(text(&o.stderr).contains("`x` is not a token id"), "{}", text(&o.stderr));
    let o = phi_web(&["logits", dir.to_str().unwrap(), "--tokens", "1,99999", "--no-verify"]);
    assert!(text(&o.stderr).contains("outside the vocabulary"), "{}", text(&o.stderr));
    // Bad usage exits with 2 and says what was wrong.
    let o = phi_web(&["frobnicate"]);
    assert!(o.status.code() == Some(2) && text(&o.stderr).contains("unrecognized subcommand"), "{}", text(&o.stderr));
    let o = phi_web(&["verify"]);
    assert!(o.status.code() == Some(2) && text(&o.stderr).contains("<DIR>"), "{}", text(&o.stderr));
}

/// README's command table and the CLI agree: every command has a row, and
/// each row's flags appear in that command's `--help`; `help <command>` and
/// the shell completions work.
#[test]
fn the_readme_command_table_matches_the_help() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `phi-web ")).collect();
    let o = phi_web(&["--help"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let help = text(&o.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&c| c != "help")
        .collect();
    assert!(commands.len() >= 10, "{help}");
    for row in &rows {
        let usage = row.split('`').nth(1).unwrap();
        let command = usage.split_whitespace().nth(1).unwrap();
        assert!(commands.contains(&command), "README has `phi-web {command}`, the CLI does not");
    }
    for command in commands {
        let row = rows.iter().find(|r| r.starts_with(&format!("| `phi-web {command}")));
        let row = row.unwrap_or_else(|| panic!("README's command table has no row for `phi-web {command}`"));
        let o = phi_web(&[command, "--help"]);
        assert!(o.status.success(), "{command} --help: {}", text(&o.stderr));
        let help = text(&o.stdout);
        let usage = row.split('`').nth(1).unwrap();
        for flag in usage.split(|c: char| !(c.is_alphanumeric() || c == '-')).filter(|w| w.starts_with("--")) {
            assert!(help.contains(flag), "README's `phi-web {command}` row has {flag}; its --help does not");
        }
        assert_eq!(text(&phi_web(&["help", command]).stdout), help, "help {command}");
    }
    let o = phi_web(&["completions", "bash"]);
    assert!(o.status.success() && text(&o.stdout).contains("phi-web"), "{}", text(&o.stderr));
}

/// SmolLM2's GGUF converted once per test binary.
fn smollm2() -> &'static PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let gguf = root().join(".models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(gguf.exists(), "{} is missing: run `make models` (make test does)", gguf.display());
        let dir = root().join("target").join("test-scratch").join("cli-smollm2");
        let _ = std::fs::remove_dir_all(&dir);
        let o = phi_web(&["convert", gguf.to_str().unwrap(), dir.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        dir
    })
}

/// `tokenize`: SmolLM2's ids of a chat turn, its special tokens one id each
/// (their ids in the tokenizer.json), and the ids decode back to the text; a
/// package without a tokenizer is an error.
#[test]
fn tokenize_prints_the_prompt_ids() {
    let dir = smollm2();
    let turn = "<|im_start|>user\nCafé  au lait, 1234 ☕<|im_end|>\n";
    let o = phi_web(&["tokenize", dir.to_str().unwrap(), "--text", turn]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<u32> = json["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let vocab = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let id = |token: &str| vocab.token_to_id(token).unwrap();
    assert_eq!((ids[0], ids[ids.len() - 2]), (id("<|im_start|>"), id("<|im_end|>")), "{ids:?}");
    assert!(ids.len() > 8, "{ids:?}");
    assert_eq!(vocab.decode(&ids, false).unwrap(), turn);

    let bare = converted("tokenize", "f32");
    let o = phi_web(&["tokenize", bare.to_str().unwrap(), "--text", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no tokenizer"), "{}", text(&o.stderr));
}

/// `generate --stop TEXT --repetition-penalty R`: the text ends before the stop
/// string, with finish_reason "stop" (greedy SmolLM2 says "…is Paris.").
#[test]
fn generate_ends_at_a_stop_string() {
    let prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let args = ["--prompt", prompt, "--max-tokens", "12", "--context", "64", "--json"];
    let dir = smollm2().to_str().unwrap();
    let o = phi_web(&[&["generate", dir][..], &args, &["--stop", " Paris", "--repetition-penalty", "1.0"]].concat());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (json["text"].as_str(), json["finish_reason"].as_str()),
        (Some("The capital of France is"), Some("stop"))
    );
    let o = phi_web(&[&["generate", dir][..], &args, &["--repetition-penalty", "x"]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("invalid value 'x' for '--repetition-penalty"), "{}", text(&o.stderr));
}

/// `generate --grammar / --json-schema / --json-object`: stdout is exactly the
/// constrained answer; a bad schema is an InputError (exit 1) before anything
/// is generated; two formats at once are a usage error (exit 2).
#[test]
fn generate_holds_the_answer_to_a_grammar_or_schema() {
    let dir = smollm2().to_str().unwrap();
    let scratch = root().join("target").join("test-scratch").join("cli-structured");
    std::fs::create_dir_all(&scratch).unwrap();
    let file = |name: &str, body: &str| {
        let path = scratch.join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_string()
    };
    let grammar = file("answer.lark", "start: (\"yes\" | \"no\") \".\"\n");
    let base = ["generate", dir, "--chat", "--prompt", "Is the sky blue?", "--context", "128"];
    let o = phi_web(&[&base[..], &["--grammar", &grammar, "--max-tokens", "8"]].concat());
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(["yes.\n", "no.\n"].contains(&text(&o.stdout).as_str()), "{:?}", text(&o.stdout));

    let schema = file(
        "answer.json",
        r#"{"type": "object", "properties": {"sky": {"enum": ["blue", "green"]}}, "required": ["sky"], "additionalProperties": false}"#,
    );
    let o = phi_web(&[&base[..], &["--json-schema", &schema, "--max-tokens", "16"]].concat());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let answer: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert!(["blue", "green"].contains(&answer["sky"].as_str().unwrap()), "{answer}");

    let o = phi_web(&[&base[..], &["--json-object", "--max-tokens", "8"]].concat());
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(serde_json::from_str::<serde_json::Value>(text(&o.stdout).trim()).unwrap().is_object());
    let o = phi_web(&[&base[..], &["--json-schema", &schema, "--max-tokens", "2"]].concat());
    assert!(o.status.success() && text(&o.stdout).starts_with('{'), "{}", text(&o.stdout));
    assert!(text(&o.stderr).contains("finish_reason \"length\""), "{}", text(&o.stderr));

    let bad = file("bad.json", r#"{"type": "objekt"}"#);
    let o = phi_web(&[&base[..], &["--json-schema", &bad]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).starts_with("phi-web: InputError:") && text(&o.stderr).contains("objekt"),
        "{}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty());
    let o = phi_web(&[&base[..], &["--json-schema", &bad, "--grammar", &grammar]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

/// `phi-web chat` on SmolLM2: two turns streamed, the second reusing the first's
/// KV cache; a turn that outgrows the context is an error the chat survives.
#[test]
fn chat_keeps_the_conversation_and_survives_an_overlong_turn() {
    use std::io::Write;
    let dir = smollm2();
    let mut child = Command::new(env!("CARGO_BIN_EXE_phi-web"))
        .args(["chat", dir.to_str().unwrap(), "--context", "128", "--max-tokens", "12"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let long_turn = "Please summarise this. ".repeat(40);
    let input = format!("What is the capital of France?\nAnd of Germany?\n{long_turn}\n/exit\n");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("Paris") && stdout.contains("Berlin"), "{stdout}");
    let reused: Vec<usize> =
        stderr.lines().filter_map(|l| l.split(" reused").next()?.rsplit(' ').next()?.parse().ok()).collect();
    assert!(reused.len() == 2 && reused[0] == 0 && reused[1] > 30, "{stderr}");
    assert!(stderr.contains("error: ") && stderr.contains("context holds 128"), "{stderr}");
}

/// A PhiMoE package: `inspect` reports its experts and the bytes a token
/// reads; it chats through Phi-3.5's template (14 prompt ids, as HF's
/// tokenizer encodes the rendered prompt: scripts/make_tiny_models.py).
#[test]
fn phimoe_package_is_inspected_and_chats() {
    let out = root().join("target").join("test-scratch").join("cli-phimoe");
    let _ = std::fs::remove_dir_all(&out);
    let input = root().join("tests").join("data").join("tiny-phimoe");
    let o = phi_web(&["convert", input.to_str().unwrap(), out.to_str().unwrap(), "--quant", "q8_0"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = phi_web(&["inspect", out.to_str().unwrap()]);
    let report = text(&o.stdout);
    assert!(report.contains("experts: 16 per layer, 2 per token (sparsemixer, jitter 0.01)"), "{report}");
    assert!(report.contains("a token reads"), "{report}");
    let prompt = "What is the capital of France?";
    let o = phi_web(&["generate", out.to_str().unwrap(), "--chat", "--prompt", prompt, "--max-tokens", "4", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["stats"]["prompt_tokens"], 14);
    assert_eq!(json["tokens"].as_array().unwrap().len(), 4);
    let o = phi_web(&["bench", "--only", "phi-4"]);
    let stderr = text(&o.stderr);
    assert!(o.status.code() == Some(2) && stderr.contains("smollm2, phi3-mini, phi-mini-moe"), "{stderr}");
}

/// A tiny Phi-3.5-vision: `generate --image` shows images before the prompt
/// (757 positions each at 2×2 crops), and `chat`'s `/image FILE` attaches
/// one to the next message, whose later turns reuse its cache.
#[test]
fn vision_generate_and_chat_take_images() {
    use std::io::Write;
    let out = root().join("target/test-scratch/cli-phi3v");
    let _ = std::fs::remove_dir_all(&out);
    let data = root().join("tests/data/tiny-phi3v");
    let o = phi_web(&["convert", data.to_str().unwrap(), out.to_str().unwrap(), "--quant", "f32"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (dir, wide) = (out.to_str().unwrap(), data.join("images/wide.png"));
    let (wide, tall) = (wide.to_str().unwrap(), data.join("images/tall.png"));
    let args = ["generate", dir, "--image", wide, "--prompt", "Hi", "--max-tokens", "2", "--json"];
    let one = phi_web(&args);
    assert!(one.status.success(), "{}", text(&one.stderr));
    let one: serde_json::Value = serde_json::from_str(&text(&one.stdout)).unwrap();
    let two = phi_web(&[&args[..4], &["--image", tall.to_str().unwrap()], &args[4..]].concat());
    assert!(two.status.success(), "{}", text(&two.stderr));
    let two: serde_json::Value = serde_json::from_str(&text(&two.stdout)).unwrap();
    // The tall image: 2×1 crops, 469 positions, then the piece after it: <s> and its newline.
    let (one, two) = (one["stats"]["prompt_tokens"].as_u64().unwrap(), two["stats"]["prompt_tokens"].as_u64().unwrap());
    assert!(one > 757 && two == one + 469 + 2, "{one} then {two}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_phi-web"))
        .args(["chat", dir, "--max-tokens", "2"])
        .env("NODEVICE_SELECT", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("/image {wide}\nWhat is this?\nAnd now?\n/image /no/such/file.png\n/exit\n");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let turns: Vec<(usize, usize)> = stderr
        .lines()
        .filter_map(|l| {
            let (prompt, rest) = l.strip_prefix('[')?.split_once(" prompt tokens, ")?;
            Some((prompt.parse().ok()?, rest.split(' ').next()?.parse().ok()?))
        })
        .collect();
    assert_eq!(turns.len(), 2, "{stderr}");
    assert!(turns[0].0 > 757 && turns[0].1 == 0, "{stderr}");
    assert!(turns[1].1 > 757, "the second turn reuses the image's cache: {stderr}");
    assert!(stderr.contains("error: /no/such/file.png"), "{stderr}");
}
