//! A minimal GGUF writer for synthetic test files (metadata of every kind,
//! tensors of any type id), shared by the test suites that include it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A minimal GGUF writer for synthetic files.
#[derive(Default)]
pub struct GgufBuilder {
    pub kv: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

pub fn gguf_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn array(type_id: u32, items: impl ExactSizeIterator<Item = [u8; 4]>) -> Vec<u8> {
    let mut payload = type_id.to_le_bytes().to_vec();
    payload.extend_from_slice(&(items.len() as u64).to_le_bytes());
    items.for_each(|bytes| payload.extend_from_slice(&bytes));
    payload
}

impl GgufBuilder {
    pub fn string(mut self, key: &str, value: &str) -> Self {
        self.kv.push((key.into(), 8, gguf_string(value)));
        self
    }

    pub fn u32(mut self, key: &str, value: u32) -> Self {
        self.kv.push((key.into(), 4, value.to_le_bytes().to_vec()));
        self
    }

    pub fn f32(mut self, key: &str, value: f32) -> Self {
        self.kv.push((key.into(), 6, value.to_le_bytes().to_vec()));
        self
    }

    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.kv.push((key.into(), 7, vec![value as u8]));
        self
    }

    /// An array of strings (GGUF type 9 of type 8).
    pub fn strings<S: AsRef<str>>(mut self, key: &str, values: &[S]) -> Self {
        let mut payload = 8u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&(values.len() as u64).to_le_bytes());
        values.iter().for_each(|v| payload.extend(gguf_string(v.as_ref())));
        self.kv.push((key.into(), 9, payload));
        self
    }

    /// An array of i32 (type 5), as token types are stored.
    pub fn i32s(mut self, key: &str, values: &[i32]) -> Self {
        self.kv.push((key.into(), 9, array(5, values.iter().map(|v| v.to_le_bytes()))));
        self
    }

    /// An array of f32 (type 6), as SentencePiece scores are stored.
    pub fn f32s(mut self, key: &str, values: &[f32]) -> Self {
        self.kv.push((key.into(), 9, array(6, values.iter().map(|v| v.to_le_bytes()))));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push((name.into(), dims.to_vec(), type_id, data));
        self
    }

    /// A tiny but complete llama model: 1 layer, hidden 32, vocab 8, all F32.
    pub fn tiny_llama(arch: &str) -> Self {
        let f32s = |n: usize| vec![0u8; n * 4];
        let mut b = GgufBuilder::default()
            .string("general.architecture", arch)
            .u32(&format!("{arch}.embedding_length"), 32)
            .u32(&format!("{arch}.feed_forward_length"), 64)
            .u32(&format!("{arch}.block_count"), 1)
            .u32(&format!("{arch}.attention.head_count"), 2)
            .u32(&format!("{arch}.attention.head_count_kv"), 1)
            .u32(&format!("{arch}.context_length"), 128)
            .u32(&format!("{arch}.vocab_size"), 8)
            .f32(&format!("{arch}.rope.freq_base"), 10000.0);
        b = b
            .tensor("token_embd.weight", &[32, 8], 0, f32s(256))
            .tensor("output_norm.weight", &[32], 0, f32s(32))
            .tensor("blk.0.attn_norm.weight", &[32], 0, f32s(32))
            .tensor("blk.0.attn_q.weight", &[32, 32], 0, f32s(1024))
            .tensor("blk.0.attn_k.weight", &[32, 16], 0, f32s(512))
            .tensor("blk.0.attn_v.weight", &[32, 16], 0, f32s(512))
            .tensor("blk.0.attn_output.weight", &[32, 32], 0, f32s(1024))
            .tensor("blk.0.ffn_norm.weight", &[32], 0, f32s(32))
            .tensor("blk.0.ffn_gate.weight", &[32, 64], 0, f32s(2048))
            .tensor("blk.0.ffn_up.weight", &[32, 64], 0, f32s(2048))
            .tensor("blk.0.ffn_down.weight", &[64, 32], 0, f32s(2048));
        b
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (key, type_id, payload) in &self.kv {
            out.extend(gguf_string(key));
            out.extend_from_slice(&type_id.to_le_bytes());
            out.extend_from_slice(payload);
        }
        let mut offset = 0u64;
        for (name, dims, type_id, data) in &self.tensors {
            out.extend(gguf_string(name));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += (data.len() as u64).next_multiple_of(32);
        }
        out.resize(out.len().next_multiple_of(32), 0);
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(32), 0);
        }
        out
    }

    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.build()).unwrap();
        path.to_path_buf()
    }
}
