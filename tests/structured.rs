//! Constrained decoding and tool calls on SmolLM2-135M: each answer is
//! parsed and validated against its schema by the `jsonschema` crate (not
//! by llguidance, which produced it), grammars admit only their words, tool
//! calls are valid and stream as they are returned, and bad schemas and
//! grammars are InputErrors before anything is generated.
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;

use phi_web::convert::{convert, ConvertOptions};
use phi_web::engine::{Engine, EngineOptions, Request};
use phi_web::formats::package::Package;
use phi_web::session::Generation;
use phi_web::structured::tools::{Delta, ToolCallDelta};
use phi_web::tokenizer::{Message, Tokenizer};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// SmolLM2's GGUF converted once per test binary.
fn smollm2() -> &'static PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let gguf = root().join(".models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(gguf.exists(), "{} is missing: run `make models` (make test does)", gguf.display());
        let dir = root().join("target").join("test-scratch").join("structured-smollm2");
        let _ = std::fs::remove_dir_all(&dir);
        convert(&gguf, &dir, &ConvertOptions::default(), &mut |_| {}).unwrap();
        dir
    })
}

fn engine() -> Engine {
    let package = Package::open(smollm2()).unwrap();
    let bytes = std::fs::read(smollm2().join(package.manifest.tokenizer.as_ref().unwrap())).unwrap();
    let tokenizer = Tokenizer::from_bytes(&bytes, &package.manifest).unwrap();
    let options = EngineOptions { context: 1024, ..Default::default() };
    pollster::block_on(Engine::load(&package, Some(tokenizer), &options)).unwrap()
}

/// A request from its JSON, as JavaScript sends it.
fn request(body: Value) -> Request {
    serde_json::from_value(body).unwrap()
}

fn chat(engine: &Engine, body: Value) -> Generation {
    pollster::block_on(engine.chat(&request(body), |_| {})).unwrap()
}

fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

fn assert_valid(schema: &Value, answer: &str) -> Value {
    let value: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"));
    let validator = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{answer} is invalid against {schema}: {errors:?}");
    value
}

#[test]
fn answers_are_valid_against_their_schemas() {
    let engine = engine();
    let short = |n: u64| json!({ "type": "string", "maxLength": n });
    let schemas = [
        (
            "Describe a person called Ada who is 36.",
            json!({
                "type": "object",
                "properties": {
                    "name": short(20),
                    "age": { "type": "integer", "minimum": 0, "maximum": 120 },
                    "email": short(30),
                },
                "required": ["name", "age"],
                "additionalProperties": false,
            }),
        ),
        (
            "Is 'I loved this film' positive or negative?",
            json!({
                "type": "object",
                "properties": { "sentiment": { "enum": ["positive", "negative", "neutral"] } },
                "required": ["sentiment"],
                "additionalProperties": false,
            }),
        ),
        (
            "Name some colours of the rainbow.",
            json!({
                "type": "object",
                "properties": { "colors": { "type": "array", "items": short(12), "minItems": 2, "maxItems": 3 } },
                "required": ["colors"],
                "additionalProperties": false,
            }),
        ),
        (
            "What is the capital of France, and how many people live there?",
            json!({
                "type": "object",
                "properties": {
                    "city": {
                        "type": "object",
                        "properties": {
                            "name": short(24),
                            "population": { "type": "integer", "minimum": 0, "maximum": 100000000 },
                            "coastal": { "type": "boolean" },
                        },
                        "required": ["name", "population"],
                        "additionalProperties": false,
                    },
                },
                "required": ["city"],
                "additionalProperties": false,
            }),
        ),
    ];
    for (question, schema) in schemas {
        let format =
            json!({ "type": "json_schema", "json_schema": { "name": "answer", "schema": schema, "strict": true } });
        let g = chat(&engine, json!({ "messages": user(question), "max_tokens": 160, "response_format": format }));
        assert_eq!(g.finish_reason, "stop", "{question}: {}", g.text);
        let value = assert_valid(&schema, &g.text);
        eprintln!("{question} -> {value}  ({} masks, {:.2} ms each)", g.stats.masks.unwrap(), g.stats.mask_ms.unwrap());
        assert!(g.stats.masks.unwrap() >= g.tokens.len() - 1);
    }
    // Sampled rather than greedy: still valid.
    let schema = json!({ "type": "object", "properties": { "n": { "type": "integer", "minimum": 1, "maximum": 9 } }, "required": ["n"], "additionalProperties": false });
    for seed in 0..3 {
        let format = json!({ "type": "json_schema", "json_schema": { "schema": schema } });
        let body = json!({ "messages": user("Pick a number."), "max_tokens": 40, "temperature": 1.0, "seed": seed, "response_format": format });
        let g = chat(&engine, body);
        assert_eq!(g.finish_reason, "stop", "{}", g.text);
        assert_valid(&schema, &g.text);
    }
    // Any JSON object.
    let g = chat(
        &engine,
        json!({ "messages": user("Give me a JSON object."), "max_tokens": 96, "response_format": { "type": "json_object" } }),
    );
    if g.finish_reason == "stop" {
        assert!(serde_json::from_str::<Value>(&g.text).unwrap().is_object(), "{}", g.text);
    } else {
        assert_eq!(g.finish_reason, "length");
        assert!(g.text.starts_with('{'), "{}", g.text);
    }
}

#[test]
fn a_grammar_admits_only_its_words() {
    let engine = engine();
    let grammar = "start: answer \".\"\nanswer: \"yes\" | \"no\" | \"maybe later\"";
    for question in ["Is the sky blue?", "Can pigs fly?", "Will you help me tomorrow?"] {
        let body = json!({ "messages": user(question), "max_tokens": 16, "response_format": { "type": "grammar", "grammar": grammar } });
        let g = chat(&engine, body);
        assert_eq!(g.finish_reason, "stop");
        assert!(["yes.", "no.", "maybe later."].contains(&g.text.as_str()), "{question}: {:?}", g.text);
    }
    // A raw prompt (no template) takes response_format too.
    let tokenizer = engine.tokenizer().unwrap();
    let ids = tokenizer.encode("The answer is: ").unwrap();
    let format = json!({ "type": "grammar", "grammar": "start: /[0-9]{1,3}/" });
    let r = request(json!({ "max_tokens": 8, "response_format": format }));
    let g = pollster::block_on(engine.complete(&ids, &r, |_| {})).unwrap();
    assert!(!g.text.is_empty() && g.text.len() <= 3 && g.text.bytes().all(|b| b.is_ascii_digit()), "{:?}", g.text);
}

fn weather_tools() -> Value {
    json!([
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city today.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": { "type": "string", "maxLength": 30 },
                        "unit": { "enum": ["celsius", "fahrenheit"] },
                    },
                    "required": ["city", "unit"],
                    "additionalProperties": false,
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "The time now in a time zone.",
                "parameters": { "type": "object", "properties": { "zone": { "type": "string", "maxLength": 30 } }, "required": ["zone"] },
            },
        },
    ])
}

#[test]
fn a_required_tool_call_is_valid_and_streams_as_returned() {
    let engine = engine();
    let tools = weather_tools();
    let body = json!({
        "messages": user("What's the weather in Paris?"),
        "tools": tools,
        "tool_choice": "required",
        "max_tokens": 80,
    });
    let mut deltas: Vec<ToolCallDelta> = Vec::new();
    let mut text = String::new();
    let g = pollster::block_on(engine.chat(&request(body), |d| match d {
        Delta::Text(t) => text.push_str(t),
        Delta::ToolCall(c) => deltas.push(c.clone()),
    }))
    .unwrap();
    assert_eq!(g.finish_reason, "tool_calls", "{:?}", g);
    assert_eq!((g.text.as_str(), text.as_str()), ("", ""));
    let call = &g.tool_calls[0];
    let tool = tools.as_array().unwrap().iter().find(|t| t["function"]["name"] == call.function.name.as_str());
    let tool = tool.unwrap_or_else(|| panic!("{} is not a tool", call.function.name));
    assert_valid(&tool["function"]["parameters"], &call.function.arguments);
    assert!(call.id.starts_with("call_"));
    // Streamed: the id and name first, then the arguments in pieces.
    assert_eq!(deltas[0].id.as_deref(), Some(call.id.as_str()));
    assert_eq!(deltas[0].function.name.as_deref(), Some(call.function.name.as_str()));
    let streamed: String = deltas.iter().map(|d| d.function.arguments.as_str()).collect();
    assert_eq!(streamed, call.function.arguments);
    assert!(deltas.len() > 2);

    // A named function, then the result goes back and the model answers in text.
    let named = json!({ "type": "function", "function": { "name": "get_time" } });
    let body = json!({ "messages": user("What time is it in Tokyo?"), "tools": tools, "tool_choice": named, "max_tokens": 60 });
    let g = chat(&engine, body);
    assert_eq!(g.finish_reason, "tool_calls");
    let call = &g.tool_calls[0];
    assert_eq!(call.function.name, "get_time");
    assert_valid(&tools[1]["function"]["parameters"], &call.function.arguments);
    let messages = json!([
        { "role": "user", "content": "What time is it in Tokyo?" },
        { "role": "assistant", "content": null, "tool_calls": [call] },
        { "role": "tool", "tool_call_id": call.id, "content": "{\"time\": \"14:05\"}" },
    ]);
    let g = chat(&engine, json!({ "messages": messages, "tools": tools, "tool_choice": "none", "max_tokens": 24 }));
    assert!(g.tool_calls.is_empty() && !g.text.is_empty() && g.finish_reason != "tool_calls", "{g:?}");
}

#[test]
fn tool_choice_none_and_auto() {
    let engine = engine();
    let body =
        json!({ "messages": user("Say hello."), "tools": weather_tools(), "tool_choice": "none", "max_tokens": 16 });
    let g = chat(&engine, body);
    assert!(g.tool_calls.is_empty() && !g.text.is_empty() && g.stats.masks.is_none(), "{g:?}");
    // "auto": whichever the model does, a call is valid and text is text.
    for question in ["Say hello.", "What's the weather in Oslo? Use the tool."] {
        let body = json!({ "messages": user(question), "tools": weather_tools(), "max_tokens": 64 });
        let g = chat(&engine, body);
        match g.finish_reason {
            "tool_calls" => {
                let call = &g.tool_calls[0];
                let index = usize::from(call.function.name == "get_time");
                assert_valid(&weather_tools()[index]["function"]["parameters"], &call.function.arguments);
            }
            _ => assert!(g.tool_calls.is_empty() && !g.text.starts_with("<tool_call>\n{"), "{g:?}"),
        }
    }
}

#[test]
fn a_structure_cut_by_max_tokens_finishes_with_length() {
    let engine = engine();
    let schema = json!({ "type": "object", "properties": { "story": { "type": "string" } }, "required": ["story"] });
    let format = json!({ "type": "json_schema", "json_schema": { "schema": schema } });
    let g =
        chat(&engine, json!({ "messages": user("Tell me a long story."), "max_tokens": 6, "response_format": format }));
    assert_eq!(g.finish_reason, "length");
    assert!(g.text.starts_with("{\"story\""), "{:?}", g.text);
}

fn error_of(engine: &Engine, body: Value) -> phi_web::Error {
    match pollster::block_on(engine.chat(&request(body), |_| panic!("nothing may be generated"))) {
        Err(e) => e,
        Ok(g) => panic!("expected an error, got {g:?}"),
    }
}

#[test]
fn bad_schemas_grammars_and_tools_are_input_errors() {
    let engine = engine();
    let cases = [
        (json!({ "type": "json_schema", "json_schema": { "schema": { "type": "strnig" } } }), "strnig"),
        (json!({ "type": "json_schema", "json_schema": { "schema": [1, 2] } }), "not an array"),
        (
            json!({ "type": "json_schema", "json_schema": { "strict": true, "schema": { "type": "object", "unevaluatedProperties": { "type": "string" } } } }),
            "unevaluatedProperties",
        ),
        (
            json!({ "type": "json_schema", "json_schema": { "schema": { "type": "integer", "minimum": 5, "maximum": 1 } } }),
            "nsatisfiable",
        ),
        (json!({ "type": "grammar", "grammar": "start: \"a\" | \nfoo: (" }), "2"),
        (json!({ "type": "grammar", "grammar": "start: undefined_rule" }), "undefined_rule"),
    ];
    for (format, needle) in cases {
        let e = error_of(&engine, json!({ "messages": user("hi"), "response_format": format }));
        assert_eq!(e.js_name(), "InputError", "{e}");
        assert!(e.to_string().contains(needle), "{format}: {e}");
    }
    let e = error_of(
        &engine,
        json!({ "messages": user("hi"), "tools": [{ "type": "function", "function": { "name": "f", "parameters": { "type": "bogus" } } }], "tool_choice": "required" }),
    );
    assert!(e.js_name() == "InputError" && e.to_string().contains("bogus"), "{e}");
    let e = error_of(&engine, json!({ "messages": user("hi"), "tools": [], "tool_choice": "required" }));
    assert!(e.to_string().contains("tools is empty"), "{e}");
    let body = json!({ "messages": user("hi"), "response_format": { "type": "yaml" } });
    assert!(serde_json::from_value::<Request>(body).unwrap_err().to_string().contains("yaml"));
    // The engine is still usable.
    let g = chat(&engine, json!({ "messages": user("hi"), "max_tokens": 4 }));
    assert!(!g.tokens.is_empty());
}

#[test]
fn messages_with_tool_calls_and_null_content_parse() {
    let m: Vec<Message> = serde_json::from_value(json!([
        { "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function", "function": { "name": "f", "arguments": "{}" } }] },
        { "role": "tool", "tool_call_id": "call_1", "content": "ok" },
    ]))
    .unwrap();
    assert_eq!((m[0].content.as_str(), m[0].tool_calls[0].function.name.as_str()), ("", "f"));
    assert_eq!(m[1].tool_call_id.as_deref(), Some("call_1"));
}
