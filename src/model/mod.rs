//! Model architectures. One file per family; `forward()` reads like the
//! reference modeling code.

mod decoder;
mod encoder;

pub use decoder::{Decoder, Logits};
pub use encoder::Encoder;
