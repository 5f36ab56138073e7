//! The command list a forward pass is recorded into. Recording is cold
//! (lists are replayed for every token of the same shape), so blocks record
//! through it freely.

use crate::error::Result;
use crate::gpu::{Command, Dispatch, Kernels};

/// A piece of a recorded forward pass.
pub enum Segment {
    /// Commands submitted as they are.
    Gpu(Vec<Command>),
    /// The expert matrices of a layer whose experts are cached (`expert_cache.rs`):
    /// the host reads the layer's routes, uploads the experts they miss and
    /// submits these commands once per round of experts that fit the cache.
    Experts { layer: usize, commands: Vec<Command> },
}

pub struct Recorder<'a> {
    pub kernels: &'a Kernels,
    /// Tokens of this forward call (rows of every activation buffer). The
    /// final norm and head of a generating step narrow it to the last token.
    pub tokens: usize,
    /// The Step uniform: the position of the first token.
    pub step: &'a wgpu::Buffer,
    commands: Vec<Command>,
    segments: Vec<Segment>,
}

impl<'a> Recorder<'a> {
    pub fn new(kernels: &'a Kernels, tokens: usize, step: &'a wgpu::Buffer) -> Recorder<'a> {
        Recorder { kernels, tokens, step, commands: Vec::new(), segments: Vec::new() }
    }

    pub fn push(&mut self, dispatch: Dispatch) {
        self.commands.push(dispatch.into());
    }

    /// Copies `size` bytes between buffers, in order with the dispatches.
    pub fn copy(&mut self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, size: u64) {
        self.commands.push(Command::Copy { src: src.clone(), src_offset, dst: dst.clone(), dst_offset: 0, size });
    }

    /// a += b over rows of `width` (the residual connection).
    pub fn add(&mut self, a: &wgpu::Buffer, b: &wgpu::Buffer, width: usize) -> Result<()> {
        let d = self.kernels.add(a, b, self.tokens * width)?;
        self.push(d);
        Ok(())
    }

    /// x *= s over rows of `width`.
    pub fn scale(&mut self, x: &wgpu::Buffer, width: usize, s: f32) -> Result<()> {
        let d = self.kernels.scale(x, self.tokens * width, s)?;
        self.push(d);
        Ok(())
    }

    /// Copies the last token's row of x [T, width] (f32) into `last` [width].
    pub fn copy_last_row(&mut self, x: &wgpu::Buffer, last: &wgpu::Buffer, width: usize) {
        let row = (width * 4) as u64;
        self.copy(x, (self.tokens as u64 - 1) * row, last, row);
    }

    /// Records what `f` records as layer `layer`'s cached experts: a
    /// [`Segment::Experts`] between what came before and what follows.
    pub fn experts(&mut self, layer: usize, f: impl FnOnce(&mut Recorder<'a>) -> Result<()>) -> Result<()> {
        let before = std::mem::take(&mut self.commands);
        if !before.is_empty() {
            self.segments.push(Segment::Gpu(before));
        }
        f(self)?;
        let commands = std::mem::take(&mut self.commands);
        self.segments.push(Segment::Experts { layer, commands });
        Ok(())
    }

    /// The recorded pass, in order.
    pub fn finish(mut self) -> Vec<Segment> {
        if !self.commands.is_empty() {
            self.segments.push(Segment::Gpu(self.commands));
        }
        self.segments
    }

    /// The recorded commands of a pass without cached experts (the encoder's).
    pub fn finish_commands(self) -> Vec<Command> {
        debug_assert!(self.segments.is_empty(), "a pass with cached experts needs finish()");
        self.commands
    }
}
