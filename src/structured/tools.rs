//! OpenAI-style tool calling. The tools go into the system message and the
//! model answers a call as
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! (the Hermes / Qwen2.5 format, which open models are trained on; tool
//! results go back as `<tool_response>` blocks in a user turn, which every
//! chat template renders). The call is held to a grammar: the name is one of
//! the tools and the arguments are valid against its `parameters`.
//! `tool_choice` "required" or a named function constrains the answer from
//! its first token; "auto" lets the model write text, and constrains it only
//! once it starts with `<tool_call>`; "none" leaves the tools out.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::structured::{json_block, Constraint, Grammars};
use crate::tokenizer::Message;

/// Where a call starts; "auto" commits to the grammar once the answer does.
const CALL_START: &str = "<tool_call>\n";
const CALL_END: &str = "\n</tool_call>";
/// What precedes the tool name and follows it, as the grammar writes them.
const NAME_START: &str = "{\"name\": \"";
const NAME_END: &str = "\", \"arguments\": ";

/// `tools[i]`: `{ type: "function", function: { name, description, parameters } }`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Tool {
    #[serde(rename = "type", default = "function")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema of the arguments object; absent: no arguments.
    #[serde(default = "no_parameters")]
    pub parameters: Value,
}

fn function() -> String {
    "function".into()
}

fn no_parameters() -> Value {
    serde_json::json!({ "type": "object", "properties": {} })
}

/// `tool_choice`: "auto" (the default with tools), "none", "required", or
/// `{ type: "function", function: { name } }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Function { function: NamedFunction },
}

#[derive(Clone, Debug, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

/// A call the model made: `message.tool_calls[i]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text (valid against the tool's parameters).
    pub arguments: String,
}

/// A streamed piece of a tool call, in OpenAI's `delta.tool_calls[i]` shape:
/// the first carries the id and name, the others pieces of the arguments.
#[derive(Clone, Debug, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Clone, Debug, Serialize)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

/// What a chat request streams: answer text, or a piece of a tool call.
#[derive(Clone, Copy, Debug)]
pub enum Delta<'a> {
    Text(&'a str),
    ToolCall(&'a ToolCallDelta),
}

fn input(message: String) -> Error {
    Error::Shape { op: "tools", message }
}

/// A request's tools and which of them the answer may call.
pub struct ToolPlan<'a> {
    tools: &'a [Tool],
    /// The tools the grammar admits (all of them, or the named one).
    callable: Vec<&'a Tool>,
    /// false for "auto": the model may answer in text instead.
    required: bool,
}

impl<'a> ToolPlan<'a> {
    /// None when there are no tools or `tool_choice` is "none".
    pub fn new(tools: &'a [Tool], choice: Option<&ToolChoice>) -> Result<Option<ToolPlan<'a>>> {
        for (i, tool) in tools.iter().enumerate() {
            let name = &tool.function.name;
            if tool.kind != "function" {
                return Err(input(format!("tools[{i}].type is \"{}\"; only \"function\" tools exist", tool.kind)));
            }
            let valid = (1..=64).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(input(format!(
                    "tools[{i}].function.name \"{name}\" must be 1 to 64 of a-z, A-Z, 0-9, _ and -"
                )));
            }
            if tools[..i].iter().any(|t| &t.function.name == name) {
                return Err(input(format!("two tools are named \"{name}\"")));
            }
        }
        let (callable, required) = match choice {
            None => (tools.iter().collect(), false),
            Some(ToolChoice::Mode(mode)) => match mode.as_str() {
                "auto" => (tools.iter().collect(), false),
                "required" => (tools.iter().collect(), true),
                "none" => return Ok(None),
                other => {
                    let message = format!("tool_choice \"{other}\" is not one of \"auto\", \"none\", \"required\" or {{ type: \"function\", function: {{ name }} }}");
                    return Err(input(message));
                }
            },
            Some(ToolChoice::Function { function }) => {
                let tool = tools.iter().find(|t| t.function.name == function.name);
                let tool = tool
                    .ok_or_else(|| input(format!("tool_choice names \"{}\", which is not in tools", function.name)))?;
                (vec![tool], true)
            }
        };
        if tools.is_empty() {
            return match required {
                true => Err(input("tool_choice asks for a tool call but tools is empty".into())),
                false => Ok(None),
            };
        }
        Ok(Some(ToolPlan { tools, callable, required }))
    }

    /// The grammar of one call: the wrapper, a callable tool's name and
    /// arguments valid against its parameters.
    pub fn constraint(&self, grammars: &Grammars) -> Result<Constraint> {
        let mut lark = format!("start: {} call {}\ncall: ", quote(CALL_START), quote(CALL_END));
        let alternatives: Vec<String> = (0..self.callable.len()).map(|i| format!("call_{i}")).collect();
        lark += &alternatives.join(" | ");
        for (i, tool) in self.callable.iter().enumerate() {
            let name = &tool.function.name;
            let head = quote(&format!("{NAME_START}{name}{NAME_END}"));
            let what = format!("the parameters of tool \"{name}\"");
            lark += &format!(
                "\ncall_{i}: {head} args_{i} \"}}\"\nargs_{i}: {}",
                json_block(&tool.function.parameters, &what, true)?
            );
        }
        let trigger = (!self.required).then(|| CALL_START.trim_end().to_string());
        grammars.lark(lark, "tools", trigger)
    }

    /// The system text that describes the tools and the call format.
    fn system_text(&self) -> String {
        let mut text = String::from(
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
        );
        for tool in self.tools {
            text.push('\n');
            text += &serde_json::to_string(tool).unwrap_or_default();
        }
        text += "\n</tools>\n\nFor each function call, return a json object with function name and arguments \
                 within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \
                 \"arguments\": <args-json-object>}\n</tool_call>";
        text
    }
}

/// A Lark string literal (JSON's quoting).
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// `messages` as the chat template can render them: the tools (if `plan`)
/// in the system message, assistant tool calls as `<tool_call>` text, and
/// each run of tool results as one user turn of `<tool_response>` blocks.
pub fn render_messages(messages: &[Message], plan: Option<&ToolPlan>) -> Result<Vec<Message>> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    if let Some(plan) = plan {
        let tools = plan.system_text();
        match messages.first() {
            Some(first) if first.role == "system" => {
                out.push(Message::new("system", &format!("{}\n\n{tools}", first.content)));
            }
            _ => out.push(Message::new("system", &tools)),
        }
    }
    let skip = usize::from(plan.is_some() && messages.first().is_some_and(|m| m.role == "system"));
    let mut previous_was_tool = false;
    for (i, message) in messages.iter().enumerate().skip(skip) {
        match message.role.as_str() {
            "tool" => {
                if message.tool_call_id.is_none() {
                    return Err(Error::Shape {
                        op: "request",
                        message: format!("messages[{i}] has role \"tool\" but no tool_call_id"),
                    });
                }
                let block = format!("<tool_response>\n{}\n</tool_response>", message.content);
                match out.last_mut() {
                    Some(last) if previous_was_tool => last.content = format!("{}\n{block}", last.content),
                    _ => out.push(Message::new("user", &block)),
                }
                previous_was_tool = true;
                continue;
            }
            "assistant" if !message.tool_calls.is_empty() => {
                let mut parts: Vec<String> = Vec::new();
                if !message.content.is_empty() {
                    parts.push(message.content.clone());
                }
                for call in &message.tool_calls {
                    let arguments = call.function.arguments.trim();
                    let arguments = if arguments.is_empty() { "{}" } else { arguments };
                    parts.push(format!(
                        "{CALL_START}{NAME_START}{}{NAME_END}{arguments}}}{CALL_END}",
                        call.function.name
                    ));
                }
                out.push(Message::new("assistant", &parts.join("\n")));
            }
            // With its images (their marks are in the content).
            _ => out.push(message.clone()),
        }
        previous_was_tool = false;
    }
    Ok(out)
}

#[derive(Debug, PartialEq)]
enum Mode {
    /// The answer may still become a call.
    Undecided,
    Text,
    Call,
}

/// Splits a streamed answer into text and tool-call deltas, and assembles
/// the call itself, so the streamed and the returned call are the same bytes.
pub struct ToolStream {
    mode: Mode,
    /// The answer so far.
    text: String,
    id: String,
    name: Option<String>,
    /// Where the arguments start in `text`, once the name is known.
    arguments_start: usize,
    /// How much of `text` the argument scanner has read.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Where the arguments end in `text`, once their last brace is seen.
    arguments_end: Option<usize>,
}

impl Default for ToolStream {
    fn default() -> Self {
        ToolStream {
            mode: Mode::Undecided,
            text: String::new(),
            id: call_id(),
            name: None,
            arguments_start: 0,
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            arguments_end: None,
        }
    }
}

impl ToolStream {
    /// Takes the next text delta; passes on text or call deltas.
    pub fn push(&mut self, delta: &str, out: &mut impl FnMut(Delta)) {
        self.text.push_str(delta);
        if self.mode == Mode::Undecided {
            if self.text.starts_with(CALL_START) {
                self.mode = Mode::Call;
            } else if !CALL_START.starts_with(self.text.as_str()) {
                self.mode = Mode::Text;
                out(Delta::Text(&self.text));
                return;
            }
        }
        match self.mode {
            Mode::Undecided => {}
            Mode::Text => out(Delta::Text(delta)),
            Mode::Call => self.scan_call(out),
        }
    }

    fn scan_call(&mut self, out: &mut impl FnMut(Delta)) {
        if self.name.is_none() {
            let Some(rest) = self.text[CALL_START.len()..].strip_prefix(NAME_START) else { return };
            let Some(end) = rest.find(NAME_END) else { return };
            let name = rest[..end].to_string();
            self.arguments_start = CALL_START.len() + NAME_START.len() + end + NAME_END.len();
            self.scanned = self.arguments_start;
            let first = ToolCallDelta {
                index: 0,
                id: Some(self.id.clone()),
                kind: Some("function"),
                function: FunctionDelta { name: Some(name.clone()), arguments: String::new() },
            };
            self.name = Some(name);
            out(Delta::ToolCall(&first));
        }
        if self.arguments_end.is_some() {
            return;
        }
        let from = self.scanned;
        for (i, c) in self.text[from..].char_indices() {
            let at = from + i + c.len_utf8();
            match (self.in_string, c) {
                (true, _) if self.escaped => self.escaped = false,
                (true, '\\') => self.escaped = true,
                (true, '"') => self.in_string = false,
                (true, _) => {}
                (false, '"') => self.in_string = true,
                (false, '{' | '[') => self.depth += 1,
                (false, '}' | ']') => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.arguments_end = Some(at);
                        self.scanned = at;
                        break;
                    }
                }
                (false, _) => {}
            }
            self.scanned = at;
        }
        if self.scanned > from {
            let piece = ToolCallDelta {
                index: 0,
                id: None,
                kind: None,
                function: FunctionDelta { name: None, arguments: self.text[from..self.scanned].to_string() },
            };
            out(Delta::ToolCall(&piece));
        }
    }

    /// Ends the stream: text still held back (an answer that was a prefix of
    /// `<tool_call>`) goes out as text.
    pub fn finish(&mut self, out: &mut impl FnMut(Delta)) {
        if self.mode == Mode::Undecided && !self.text.is_empty() {
            self.mode = Mode::Text;
            out(Delta::Text(&self.text));
        }
    }

    /// The call, when the answer was a complete one (its arguments parse as JSON).
    pub fn call(&self) -> Option<ToolCall> {
        let (name, end) = (self.name.as_ref()?, self.arguments_end?);
        let arguments = &self.text[self.arguments_start..end];
        serde_json::from_str::<Value>(arguments).ok()?;
        let function = FunctionCall { name: name.clone(), arguments: arguments.to_string() };
        Some(ToolCall { id: self.id.clone(), kind: "function".into(), function })
    }
}

/// `call_` and 24 hex digits, unique enough within a conversation.
fn call_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("call_{:016x}{:08x}", x ^ (x >> 31), (nanos >> 16) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(pieces: &[&str]) -> (ToolStream, String, Vec<ToolCallDelta>) {
        let mut s = ToolStream::default();
        let (mut text, mut calls) = (String::new(), Vec::new());
        let mut out = |d: Delta| match d {
            Delta::Text(t) => text.push_str(t),
            Delta::ToolCall(c) => calls.push(c.clone()),
        };
        for piece in pieces {
            s.push(piece, &mut out);
        }
        s.finish(&mut out);
        (s, text, calls)
    }

    #[test]
    fn a_streamed_call_is_the_returned_call() {
        let answer = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa}ris\", \"days\": [1, 2]}}\n</tool_call>";
        let pieces: Vec<String> = answer.chars().map(String::from).collect();
        let (s, text, deltas) = stream(&pieces.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(text, "");
        let call = s.call().expect("a call");
        assert_eq!(call.function.name, "get_weather");
        assert_eq!(call.function.arguments, "{\"city\": \"Pa}ris\", \"days\": [1, 2]}");
        assert_eq!(deltas[0].function.name.as_deref(), Some("get_weather"));
        assert_eq!(deltas[0].id.as_deref(), Some(call.id.as_str()));
        let streamed: String = deltas.iter().map(|d| d.function.arguments.as_str()).collect();
        assert_eq!(streamed, call.function.arguments);
    }

    #[test]
    fn text_and_prefixes_of_the_tag_stay_text() {
        let (s, text, deltas) = stream(&["<tool", "box> is a word"]);
        assert_eq!(text, "<toolbox> is a word");
        assert!(deltas.is_empty() && s.call().is_none());
        let (_, text, _) = stream(&["<tool"]);
        assert_eq!(text, "<tool");
    }

    #[test]
    fn a_truncated_call_is_no_call() {
        let (s, _, _) = stream(&["<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": "]);
        assert!(s.call().is_none());
    }

    #[test]
    fn history_renders_calls_and_results() {
        let tools: Vec<Tool> =
            serde_json::from_value(serde_json::json!([{ "type": "function", "function": { "name": "f" } }])).unwrap();
        let plan = ToolPlan::new(&tools, None).unwrap();
        let mut assistant = Message::new("assistant", "");
        let function = FunctionCall { name: "f".into(), arguments: "{\"x\": 1}".into() };
        assistant.tool_calls = vec![ToolCall { id: "call_1".into(), kind: "function".into(), function }];
        let mut result = Message::new("tool", "42");
        result.tool_call_id = Some("call_1".into());
        let messages =
            [Message::new("system", "Be brief."), Message::new("user", "hi"), assistant, result.clone(), result];
        let out = render_messages(&messages, plan.as_ref()).unwrap();
        assert!(
            out[0].content.starts_with("Be brief.\n\n# Tools")
                && out[0].content.contains("{\"type\":\"function\",\"function\":{\"name\":\"f\"")
        );
        assert_eq!(out[2].content, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>");
        assert_eq!(out[3].role, "user");
        assert_eq!(out[3].content, "<tool_response>\n42\n</tool_response>\n<tool_response>\n42\n</tool_response>");
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn bad_tool_requests_are_input_errors() {
        let tools: Vec<Tool> = serde_json::from_value(serde_json::json!([{ "function": { "name": "a b" } }])).unwrap();
        assert!(ToolPlan::new(&tools, None).err().unwrap().to_string().contains("\"a b\""));
        let tools: Vec<Tool> = serde_json::from_value(serde_json::json!([{ "function": { "name": "f" } }])).unwrap();
        let named = ToolChoice::Function { function: NamedFunction { name: "g".into() } };
        assert!(ToolPlan::new(&tools, Some(&named)).err().unwrap().to_string().contains("\"g\""));
        let mode = ToolChoice::Mode("sometimes".into());
        assert!(ToolPlan::new(&tools, Some(&mode)).err().unwrap().to_string().contains("sometimes"));
        assert!(ToolPlan::new(&tools, Some(&ToolChoice::Mode("none".into()))).unwrap().is_none());
    }
}
