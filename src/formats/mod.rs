//! File formats: the ones we import (GGUF, safetensors, tiktoken
//! vocabularies) and the one the runtime loads (the phi-web package).

pub mod encode;
pub mod gguf;
pub mod gguf_import;
pub mod gguf_tokenizer;
pub mod hf_import;
pub mod kquant;
pub mod package;
pub mod safetensors;
pub mod tiktoken;
