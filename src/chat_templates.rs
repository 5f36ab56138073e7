//! The chat templates Microsoft published with each Phi model
//! (`tokenizer_config.json` on the hub), for files that carry none — a GGUF
//! without `tokenizer.chat_template` — and as the reference the template
//! tests render. A model's own template always wins over these.

/// Phi-3-mini (4k and 128k, the July 2024 revisions): system, user and
/// assistant turns, each `<|role|>\n…<|end|>\n`.
pub const PHI3_MINI: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";

/// Phi-3.5-mini and Phi-3.5-MoE: Phi-3-mini's, an empty system prompt skipped.
pub const PHI35: &str = "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";

/// Phi-3-medium (4k and 128k): no system turn; each user turn opens the
/// assistant's.
pub const PHI3_MEDIUM: &str = "{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}";

/// Phi-3-small (8k and 128k): bos (`<|endoftext|>`) first, any role.
pub const PHI3_SMALL: &str = "{{ bos_token }}{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";

/// Phi-3-vision and Phi-3.5-vision: any role; no eos at the end.
pub const PHI3_VISION: &str = "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}{% endif %}";

/// Phi-4 (14B): ChatML with `<|im_sep|>`, no newlines.
pub const PHI4: &str = "{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|><|im_start|>assistant<|im_sep|>'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}";

/// Phi-4-mini: `<|role|>…<|end|>` with no newlines; a system message may
/// carry `tools` (a JSON string) between `<|tool|>` and `<|/tool|>`.
pub const PHI4_MINI: &str = "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}";

/// The published template of the Phi model named `name` (a GGUF's
/// `general.name` or a file name), if it is one.
pub fn published(name: &str) -> Option<&'static str> {
    let name = name.to_lowercase().replace(['_', ' '], "-");
    let has = |part: &str| name.contains(part);
    Some(match () {
        _ if has("phi-4-mini") || has("phi4-mini") => PHI4_MINI,
        _ if has("phi-4") || has("phi4") => PHI4,
        _ if has("vision") && (has("phi-3") || has("phi3")) => PHI3_VISION,
        _ if has("phi-3.5") || has("phi3.5") || has("phi-3-5") => PHI35,
        _ if has("phi-3-small") || has("phi3-small") => PHI3_SMALL,
        _ if has("phi-3-medium") || has("phi3-medium") => PHI3_MEDIUM,
        _ if has("phi-3") || has("phi3") => PHI3_MINI,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pick_their_template() {
        assert_eq!(published("Phi-4-mini-instruct"), Some(PHI4_MINI));
        assert_eq!(published("phi-4"), Some(PHI4));
        assert_eq!(published("Phi-3.5-MoE-instruct"), Some(PHI35));
        assert_eq!(published("Phi 3.5 Mini Instruct"), Some(PHI35));
        assert_eq!(published("Phi-3.5-vision-instruct"), Some(PHI3_VISION));
        assert_eq!(published("Phi-3-mini-4k-instruct-q4.gguf"), Some(PHI3_MINI));
        assert_eq!(published("Phi3-Medium-128K"), Some(PHI3_MEDIUM));
        assert_eq!(published("phi-3-small-8k-instruct"), Some(PHI3_SMALL));
        assert_eq!(published("SmolLM2-135M-Instruct"), None);
    }
}
