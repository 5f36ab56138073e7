//! Model architectures. One file per family; `forward()` reads like the
//! reference modeling code.

mod decoder;

pub use decoder::{Decoder, Logits};
