//! The op list a forward pass is recorded into. Recording is cold (lists
//! are replayed for every token of the same shape), so blocks record
//! through it freely.

use crate::backend::{Backend, Buf, Commands, Op};
use crate::error::Result;
use crate::gpu::Command;

/// A piece of a recorded forward pass.
pub enum Segment {
    /// Ops run as they are.
    Run(Commands),
    /// The expert matrices of a layer whose experts are cached (`expert_cache.rs`):
    /// the host reads the layer's routes, uploads the experts they miss and
    /// submits these commands once per round of experts that fit the cache.
    Experts { layer: usize, commands: Vec<Command> },
}

pub struct Recorder<'a> {
    pub backend: &'a Backend,
    /// Tokens of this forward call (rows of every activation buffer). The
    /// final norm and head of a generating step narrow it to the last token.
    pub tokens: usize,
    /// The Step buffer: the position of the first token.
    pub step: &'a Buf,
    gpu: Vec<Command>,
    cpu: Vec<crate::cpu::Op>,
    segments: Vec<Segment>,
}

impl<'a> Recorder<'a> {
    pub fn new(backend: &'a Backend, tokens: usize, step: &'a Buf) -> Recorder<'a> {
        Recorder { backend, tokens, step, gpu: Vec::new(), cpu: Vec::new(), segments: Vec::new() }
    }

    pub fn push(&mut self, op: impl Into<Op>) {
        match op.into() {
            Op::Gpu(command) => self.gpu.push(command),
            Op::Cpu(op) => self.cpu.push(op),
        }
    }

    /// Copies `size` bytes between buffers, in order with the other ops.
    pub fn copy(&mut self, src: &Buf, src_offset: u64, dst: &Buf, size: u64) -> Result<()> {
        let op = self.backend.copy(src, src_offset, dst, 0, size)?;
        self.push(op);
        Ok(())
    }

    /// a += b over rows of `width` (the residual connection).
    pub fn add(&mut self, a: &Buf, b: &Buf, width: usize) -> Result<()> {
        let op = self.backend.add(a, b, self.tokens * width)?;
        self.push(op);
        Ok(())
    }

    /// x *= s over rows of `width`.
    pub fn scale(&mut self, x: &Buf, width: usize, s: f32) -> Result<()> {
        let op = self.backend.scale(x, self.tokens * width, s)?;
        self.push(op);
        Ok(())
    }

    /// Copies the last token's row of x [T, width] (f32) into `last` [width].
    pub fn copy_last_row(&mut self, x: &Buf, last: &Buf, width: usize) -> Result<()> {
        let row = (width * 4) as u64;
        self.copy(x, (self.tokens as u64 - 1) * row, last, row)
    }

    /// Records what `f` records as layer `layer`'s cached experts: a
    /// [`Segment::Experts`] between what came before and what follows.
    pub fn experts(&mut self, layer: usize, f: impl FnOnce(&mut Recorder<'a>) -> Result<()>) -> Result<()> {
        self.flush();
        f(self)?;
        let commands = std::mem::take(&mut self.gpu);
        self.segments.push(Segment::Experts { layer, commands });
        Ok(())
    }

    fn flush(&mut self) {
        if !self.gpu.is_empty() {
            self.segments.push(Segment::Run(Commands::Gpu(std::mem::take(&mut self.gpu))));
        }
        if !self.cpu.is_empty() {
            self.segments.push(Segment::Run(Commands::Cpu(std::mem::take(&mut self.cpu))));
        }
    }

    /// The recorded pass, in order.
    pub fn finish(mut self) -> Vec<Segment> {
        self.flush();
        self.segments
    }
}
