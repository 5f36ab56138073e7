//! phi-web runs Microsoft's Phi models (Phi-3, Phi-3.5, Phi-4) locally on
//! WebGPU: WGSL compute kernels driven by a Rust core that compiles to
//! WebAssembly for the browser and runs natively through wgpu for tests and
//! benchmarks.
//!
//! Layers, bottom up: two backends behind one op vocabulary
//! ([`backend::Backend`]): the GPU context ([`gpu::Gpu`]) with its kernel
//! library ([`gpu::Kernels`], one WGSL file per op and weight format), and
//! the CPU backend ([`cpu`]: the same ops in Rust with SIMD, for devices
//! without WebGPU); quantization
//! ([`quant`]), model packages ([`formats`], [`convert`]), the decoder
//! ([`model::Decoder`]), tokenizer, sampler and the generate loop
//! ([`session`]), constrained decoding and tool calls ([`structured`]), and in wasm the JavaScript bindings (`web`).
//! Non-goals: training, a general tensor runtime, non-Phi-like architectures
//! beyond the Llama family used for testing and BERT encoders for retrieval.

pub mod backend;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod chat_templates;
pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod convert;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod formats;
pub mod gpu;
pub mod image;
pub mod model;
pub mod quant;
pub mod sampler;
pub mod session;
pub mod structured;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
