//! The command list a forward pass is recorded into. Recording is cold
//! (lists are replayed for every token of the same shape), so blocks record
//! through it freely.

use crate::error::Result;
use crate::gpu::{Command, Dispatch, Kernels};

pub struct Recorder<'a> {
    pub kernels: &'a Kernels,
    /// Tokens of this forward call (rows of every activation buffer). The
    /// final norm and head of a generating step narrow it to the last token.
    pub tokens: usize,
    /// The Step uniform: the position of the first token.
    pub step: &'a wgpu::Buffer,
    commands: Vec<Command>,
}

impl<'a> Recorder<'a> {
    pub fn new(kernels: &'a Kernels, tokens: usize, step: &'a wgpu::Buffer) -> Recorder<'a> {
        Recorder { kernels, tokens, step, commands: Vec::new() }
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

    /// Copies the last token's row of x [T, width] (f32) into `last` [width].
    pub fn copy_last_row(&mut self, x: &wgpu::Buffer, last: &wgpu::Buffer, width: usize) {
        let row = (width * 4) as u64;
        self.copy(x, (self.tokens as u64 - 1) * row, last, row);
    }

    pub fn finish(self) -> Vec<Command> {
        self.commands
    }
}
