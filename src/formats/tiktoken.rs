//! tiktoken vocabularies as Hugging Face `tokenizer.json`: the ranks of a
//! `.tiktoken` file (one "base64-token rank" per line, as Phi-3-small ships
//! `cl100k_base.tiktoken`) or of npm js-tiktoken's `dist/ranks/*.js`, turned
//! into a byte-level BPE that the `tokenizers` crate runs with tiktoken's ids.
//!
//! tiktoken merges the adjacent pair whose concatenation has the lowest rank,
//! after looking the whole pre-token up first. The BPE below has one merge
//! for every split of a token into two tokens, ordered by the token's rank
//! (then by its pieces' ranks) — the lowest-rank pair wins as in tiktoken —
//! and `ignore_merges` for the whole-piece lookup (transformers'
//! TikTokenConverter builds the same).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// cl100k_base's pre-tokenization (tiktoken's `_pat_str`).
pub const CL100K_PATTERN: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// o200k_base's pre-tokenization (js-tiktoken's `pat_str`: tiktoken's, with
/// the contractions' cases spelled out instead of `(?i:…)`).
pub const O200K_PATTERN: &str = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+('s|'S|'t|'T|'re|'rE|'Re|'RE|'ve|'vE|'Ve|'VE|'m|'M|'ll|'lL|'Ll|'LL|'d|'D)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*('s|'S|'t|'T|'re|'rE|'Re|'RE|'ve|'vE|'Ve|'VE|'m|'M|'ll|'lL|'Ll|'LL|'d|'D)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// Phi-4's special tokens on top of cl100k (its tokenizer.json): cl100k's
/// own, ChatML's `<|im_start|>`, `<|im_end|>`, `<|im_sep|>`, and dummies up
/// to the padded 100352 ids.
pub fn phi4_special_tokens() -> Vec<(String, u32)> {
    let named = [
        ("<|endoftext|>", 100257),
        ("<|fim_prefix|>", 100258),
        ("<|fim_middle|>", 100259),
        ("<|fim_suffix|>", 100260),
        ("<|im_start|>", 100264),
        ("<|im_end|>", 100265),
        ("<|im_sep|>", 100266),
        ("<|endofprompt|>", 100276),
    ];
    let mut dummy = 0..;
    (100256..100352)
        .map(|id| match named.iter().find(|(_, n)| *n == id) {
            Some((token, _)) => (token.to_string(), id),
            None => (format!("<|dummy_{}|>", dummy.next().unwrap_or_default()), id),
        })
        .collect()
}

/// Phi-4-mini's special tokens on top of o200k (its tokenizer.json); the
/// embedding is padded to 200064 rows, the ids between are never produced.
pub fn phi4mini_special_tokens() -> Vec<(String, u32)> {
    [
        ("<|endoftext|>", 199999),
        ("<|endofprompt|>", 200018),
        ("<|assistant|>", 200019),
        ("<|end|>", 200020),
        ("<|user|>", 200021),
        ("<|system|>", 200022),
        ("<|tool|>", 200023),
        ("<|/tool|>", 200024),
        ("<|tool_call|>", 200025),
        ("<|/tool_call|>", 200026),
        ("<|tool_response|>", 200027),
        ("<|tag|>", 200028),
    ]
    .iter()
    .map(|(t, id)| (t.to_string(), *id))
    .collect()
}

/// Phi-3-small's special tokens on top of cl100k (tokenization_phi3_small.py):
/// cl100k's own, the chat tokens, and dummies up to the padded 100352 ids.
pub fn phi3small_special_tokens() -> Vec<(String, u32)> {
    let mut tokens: Vec<(String, u32)> = [
        ("<|dummy_id_2|>", 100256),
        ("<|endoftext|>", 100257),
        ("<|fim_prefix|>", 100258),
        ("<|fim_middle|>", 100259),
        ("<|fim_suffix|>", 100260),
        ("<|system|>", 100261),
        ("<|user|>", 100262),
        ("<|assistant|>", 100263),
        ("<|dummy_id_0|>", 100264),
        ("<|dummy_id_1|>", 100265),
        ("<|end|>", 100266),
        ("<|endofprompt|>", 100276),
    ]
    .iter()
    .map(|(t, id)| (t.to_string(), *id))
    .collect();
    tokens.extend((3..=11).map(|i| (format!("<|dummy_id_{i}|>"), 100264 + i)));
    tokens.extend((1..100352 - 100276).map(|offset| (format!("<|dummy_id_{}|>", 11 + offset), 100276 + offset)));
    tokens.sort_by_key(|(_, id)| *id);
    tokens
}

/// Token bytes by rank from a `.tiktoken` file's text.
pub fn parse_tiktoken(text: &str, file: &str) -> Result<Vec<(Vec<u8>, u32)>> {
    let bad = |line: usize, m: &str| Error::format(file, format!("line {line}: {m}"));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let (token, rank) = line.trim().split_once(' ').ok_or_else(|| bad(i + 1, "not \"<base64> <rank>\""))?;
            let rank = rank.parse().map_err(|_| bad(i + 1, "the rank is not an integer"))?;
            Ok((base64(token).ok_or_else(|| bad(i + 1, "the token is not base64"))?, rank))
        })
        .collect()
}

/// Token bytes by rank from npm js-tiktoken's `dist/ranks/<name>.js` (an ES
/// module whose `bpe_ranks` lines are "<char> <first rank> <base64 token> …").
pub fn parse_js_tiktoken(path: &Path) -> Result<Vec<(Vec<u8>, u32)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: &str| Error::format(path.display(), m.to_string());
    let json = text.trim().strip_prefix("export default").ok_or_else(|| bad("not an ES module of ranks"))?;
    let ranks: Value = serde_json::from_str(json.trim().trim_end_matches(';')).map_err(|e| bad(&e.to_string()))?;
    let lines = ranks["bpe_ranks"].as_str().ok_or_else(|| bad("no bpe_ranks"))?;
    let mut out = Vec::new();
    for line in lines.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.split(' ').skip(1);
        let first: u32 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(|| bad("a line without a rank"))?;
        for (i, token) in fields.enumerate() {
            out.push((base64(token).ok_or_else(|| bad("a token that is not base64"))?, first + i as u32));
        }
    }
    Ok(out)
}

/// The `tokenizer.json` of ranks `ranks`, pre-tokenization `pattern` and
/// special tokens `specials` (matched anywhere in the text, as tiktoken's
/// `allowed_special="all"`).
pub fn tokenizer_json(ranks: &[(Vec<u8>, u32)], pattern: &str, specials: &[(String, u32)]) -> Result<Value> {
    let rank_of: HashMap<&[u8], u32> = ranks.iter().map(|(t, r)| (t.as_slice(), *r)).collect();
    if rank_of.len() != ranks.len() {
        return Err(Error::format("tiktoken ranks", "a token appears twice"));
    }
    let unicode = byte_level_alphabet();
    let text = |bytes: &[u8]| -> String { bytes.iter().map(|&b| unicode[b as usize]).collect() };
    let vocab: serde_json::Map<String, Value> = ranks.iter().map(|(t, r)| (text(t), json!(r))).collect();
    // (token rank, left rank, right rank, left, right) for every split of every token.
    type Merge<'a> = (u32, u32, u32, &'a [u8], &'a [u8]);
    let mut merges: Vec<Merge> = Vec::new();
    for (token, rank) in ranks {
        for i in 1..token.len() {
            let (left, right) = token.split_at(i);
            if let (Some(&l), Some(&r)) = (rank_of.get(left), rank_of.get(right)) {
                merges.push((*rank, l, r, left, right));
            }
        }
    }
    merges.sort_unstable();
    let merges: Vec<Value> = merges.iter().map(|(_, _, _, l, r)| json!([text(l), text(r)])).collect();
    // The HF tokenizer numbers added tokens after the vocabulary, so every id
    // up to the last special needs a token: a gap (o200k has one before and
    // after <|endoftext|>) gets a placeholder no text spells.
    let taken: std::collections::HashSet<u32> =
        ranks.iter().map(|(_, r)| *r).chain(specials.iter().map(|(_, id)| *id)).collect();
    let last = taken.iter().max().copied().unwrap_or(0);
    let mut specials: Vec<(String, u32)> = specials.to_vec();
    specials.extend((0..last).filter(|id| !taken.contains(id)).map(|id| (format!("<|phi_web_unused_{id}|>"), id)));
    specials.sort_by_key(|(_, id)| *id);
    let added: Vec<Value> = specials
        .iter()
        .map(|(content, id)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": merges},
    }))
}

/// GPT-2's byte-to-character map (bytes_to_unicode): printable bytes stand
/// for themselves, the rest for code points from 256 up.
fn byte_level_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = match printable {
            true => b as char,
            false => {
                next += 1;
                char::from_u32(next - 1).unwrap_or('\u{FFFD}')
            }
        };
    }
    map
}

/// Standard base64 (padding optional); None if malformed.
pub fn base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.bytes().take_while(|&c| c != b'=').map(value).collect::<Option<_>>()?;
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64("IQ==").unwrap(), b"!");
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGk").unwrap(), b"hi");
        assert_eq!(base64("YWJj").unwrap(), b"abc");
        assert!(base64("a").is_none() && base64("a*b=").is_none());
    }

    #[test]
    fn the_alphabet_is_gpt2s() {
        let a = byte_level_alphabet();
        assert_eq!((a[b' ' as usize], a[b'\n' as usize], a[b'A' as usize], a[0]), ('Ġ', 'Ċ', 'A', 'Ā'));
    }

    #[test]
    fn phi3small_special_tokens_fill_the_padded_vocabulary() {
        let specials = phi3small_special_tokens();
        let ids: Vec<u32> = specials.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids, (100256..100352).collect::<Vec<_>>());
        assert!(specials.iter().any(|(t, id)| t == "<|end|>" && *id == 100266));
    }

    #[test]
    fn phi4_special_tokens_fill_the_padded_vocabulary() {
        let specials = phi4_special_tokens();
        assert_eq!(specials.iter().map(|(_, id)| *id).collect::<Vec<_>>(), (100256..100352).collect::<Vec<_>>());
        let id = |t: &str| specials.iter().find(|(s, _)| s == t).map(|(_, id)| *id);
        assert_eq!(
            (id("<|im_start|>"), id("<|im_sep|>"), id("<|im_end|>")),
            (Some(100264), Some(100266), Some(100265))
        );
        assert_eq!(id("<|dummy_0|>"), Some(100256));
    }

    #[test]
    fn a_malformed_tiktoken_line_names_its_number() {
        let err = parse_tiktoken("IQ== 0\nnot-a-line\n", "cl100k_base.tiktoken").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
