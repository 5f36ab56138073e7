//! Model architectures: shared blocks (`blocks.rs`) recorded through a
//! `Recorder`, one file per family whose forward pass reads like the
//! reference modeling code (`phi3.rs`: Phi-3/3.5/4 and Llama; `phimoe.rs`:
//! Phi-3.5-MoE and its SlimMoE descendants, on the experts of `moe.rs`
//! and, when they do not all fit, `expert_cache.rs`; `phi3small.rs`:
//! Phi-3-small's dense and block-sparse layers;
//! `bert.rs`: sentence encoders; `clip.rs`: Phi-3-vision's image tower and
//! projector), and the `Decoder` that drives any generating
//! architecture (KV cache, recorded lists, readout).

mod bert;
mod blocks;
mod clip;
mod decoder;
mod expert_cache;
mod moe;
mod phi3;
mod phi3small;
mod phimoe;
mod recorder;

pub use bert::Encoder;
pub use clip::ImageEncoder;
pub use decoder::{Decoder, DecoderMemory, DecoderOptions, ImageRows, Logits};
pub use expert_cache::{ExpertSizes, ExpertStats};

use crate::backend::{Backend, Buf};
use crate::error::{Error, Result};
use crate::formats::package::{ShardSource, TensorEntry};

/// A tensor's manifest entry, or an error naming the missing tensor.
fn entry<'a>(source: &'a impl ShardSource, name: &str) -> Result<&'a TensorEntry> {
    source.tensor(name).ok_or_else(|| Error::Config { message: format!("the package has no tensor {name}") })
}

/// A vector (norm weight, bias) as an f32 storage buffer.
async fn upload_vector(b: &Backend, source: &impl ShardSource, name: &str) -> Result<Buf> {
    let values = source.tensor_f32(entry(source, name)?).await?;
    b.storage_with(name, bytemuck::cast_slice(&values))
}
