//! Every published Phi chat template rendered for a system prompt and a
//! two-turn conversation, against the prompt each model card shows.
#![cfg(not(target_arch = "wasm32"))]

use phi_web::chat_templates::*;
use phi_web::tokenizer::{render_chat_template, Message};

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You are terse."),
        Message::new("user", "Hi!"),
        Message::new("assistant", "Hello."),
        Message::new("user", "What is 2+2?"),
    ]
}

fn render(template: &str, bos: &str, eos: &str) -> String {
    render_chat_template(template, &conversation(), bos, eos).unwrap()
}

#[test]
fn phi3_mini_and_phi35() {
    let expected = "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n\
                    <|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n";
    assert_eq!(render(PHI3_MINI, "<s>", "<|endoftext|>"), expected);
    assert_eq!(render(PHI35, "<s>", "<|endoftext|>"), expected);
    // Phi-3.5 skips an empty system prompt; Phi-3-mini keeps it.
    let empty = [Message::new("system", ""), Message::new("user", "Hi!")];
    assert_eq!(render_chat_template(PHI35, &empty, "<s>", "").unwrap(), "<|user|>\nHi!<|end|>\n<|assistant|>\n");
    assert!(render_chat_template(PHI3_MINI, &empty, "<s>", "").unwrap().starts_with("<|system|>\n<|end|>\n"));
}

#[test]
fn phi3_medium_drops_the_system_prompt() {
    assert_eq!(
        render(PHI3_MEDIUM, "<s>", "<|endoftext|>"),
        "<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
    );
}

#[test]
fn phi3_small_starts_with_bos() {
    assert_eq!(
        render(PHI3_SMALL, "<|endoftext|>", "<|endoftext|>"),
        "<|endoftext|><|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n\
         <|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
    );
}

#[test]
fn phi3_vision() {
    assert_eq!(
        render(PHI3_VISION, "<s>", "<|endoftext|>"),
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n\
         <|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
    );
}

#[test]
fn phi4_is_chatml_with_im_sep() {
    assert_eq!(
        render(PHI4, "<|endoftext|>", "<|im_end|>"),
        "<|im_start|>system<|im_sep|>You are terse.<|im_end|><|im_start|>user<|im_sep|>Hi!<|im_end|>\
         <|im_start|>assistant<|im_sep|>Hello.<|im_end|><|im_start|>user<|im_sep|>What is 2+2?<|im_end|>\
         <|im_start|>assistant<|im_sep|>"
    );
}

#[test]
fn phi4_mini_has_no_newlines() {
    assert_eq!(
        render(PHI4_MINI, "<|endoftext|>", "<|endoftext|>"),
        "<|system|>You are terse.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|><|user|>What is 2+2?<|end|><|assistant|>"
    );
}
