//! File formats: the two we import (GGUF, safetensors) and the one the
//! runtime loads (the phi-web package).

pub mod gguf;
pub mod gguf_tokenizer;
pub mod kquant;
pub mod package;
pub mod safetensors;
