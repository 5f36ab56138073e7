//! The seam between the model code and the two backends: WebGPU (`gpu`:
//! WGSL kernels through wgpu) and the CPU (`cpu`: the same ops in Rust with
//! SIMD). Model blocks hold [`Buf`]s and [`Matrix`]es and record [`Op`]s
//! through [`Backend`], whose functions mirror the GPU kernels' one for one;
//! a buffer of one backend handed to the other is an error, never a panic.
//! Recording is cold (passes are replayed), so the enums cost nothing per
//! token.

use std::sync::Arc;

use crate::cpu::{self, Cpu};
use crate::error::{Error, Result};
use crate::gpu::{
    self, AttentionScratch, AttentionShape, Bias, Command, GeluKind, Gpu, KernelTuning, Kernels, KvAppendShape,
    OutputSlice, RopeShape,
};
use crate::quant::{GpuLayout, WeightFormat};

/// Where a model runs.
#[allow(clippy::large_enum_variant)] // one per engine
pub enum Backend {
    Gpu(GpuBackend),
    Cpu(Cpu),
}

/// The GPU with its kernels.
pub struct GpuBackend {
    pub gpu: Gpu,
    pub kernels: Kernels,
}

/// Which backend to use (`--backend`, `createEngine`'s `backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// WebGPU on a hardware adapter, else the CPU (no adapter, a software
    /// rasterizer, or a model larger than the device can hold).
    #[default]
    Auto,
    Gpu,
    Cpu,
}

impl BackendChoice {
    pub fn parse(name: &str) -> Option<BackendChoice> {
        match name {
            "auto" => Some(BackendChoice::Auto),
            "webgpu" | "gpu" => Some(BackendChoice::Gpu),
            "cpu" => Some(BackendChoice::Cpu),
            _ => None,
        }
    }
}

/// A buffer of either backend.
#[derive(Clone, Debug)]
pub enum Buf {
    Gpu(wgpu::Buffer),
    Cpu(cpu::Tensor),
}

impl Buf {
    pub fn size(&self) -> u64 {
        match self {
            Buf::Gpu(b) => b.size(),
            Buf::Cpu(t) => t.size(),
        }
    }

    /// The wgpu buffer (models that run on the GPU only).
    pub fn gpu(&self) -> Result<&wgpu::Buffer> {
        match self {
            Buf::Gpu(b) => Ok(b),
            Buf::Cpu(_) => Err(mixed()),
        }
    }

    fn cpu(&self) -> Result<&cpu::Tensor> {
        match self {
            Buf::Cpu(t) => Ok(t),
            Buf::Gpu(_) => Err(mixed()),
        }
    }
}

fn mixed() -> Error {
    Error::Gpu { context: "backend".into(), message: "a buffer of one backend was given to the other".into() }
}

/// A weight matrix in the kernel layout, on either backend.
#[derive(Clone, Debug)]
pub enum Matrix {
    Gpu(gpu::Matrix),
    Cpu(Arc<cpu::Matrix>),
}

impl Matrix {
    /// Bytes the backend holds for it.
    pub fn bytes(&self) -> u64 {
        match self {
            Matrix::Gpu(m) => m.gpu_bytes(),
            Matrix::Cpu(m) => m.bytes(),
        }
    }

    /// Bytes a matrix-vector product reads.
    pub fn read_bytes(&self) -> u64 {
        match self {
            Matrix::Gpu(m) => m.read_bytes(),
            Matrix::Cpu(m) => m.bytes(),
        }
    }
}

/// One recorded step of either backend.
pub enum Op {
    Gpu(Command),
    Cpu(cpu::Op),
}

impl From<gpu::Dispatch> for Op {
    fn from(d: gpu::Dispatch) -> Op {
        Op::Gpu(Command::Dispatch(d))
    }
}

impl From<cpu::Op> for Op {
    fn from(op: cpu::Op) -> Op {
        Op::Cpu(op)
    }
}

impl Backend {
    /// "webgpu" or "cpu" (`stats().backend`).
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Gpu(_) => "webgpu",
            Backend::Cpu(_) => "cpu",
        }
    }

    /// The GPU, for what runs there only (mixtures of experts, their expert
    /// cache); on the CPU backend an error naming `what`.
    pub fn gpu_only(&self, what: &str) -> Result<&GpuBackend> {
        match self {
            Backend::Gpu(g) => Ok(g),
            Backend::Cpu(_) => Err(Error::Unsupported {
                what: format!("{what} on the CPU backend"),
                supported:
                    "Phi-3, Phi-3.5-mini, Phi-4, Phi-3-small, Phi-3.5-vision, Llama and BERT encoders on the CPU; the rest on WebGPU"
                        .into(),
            }),
        }
    }

    /// How the attention kernels split work (the CPU backend's own split is by head).
    pub fn tuning(&self) -> KernelTuning {
        match self {
            Backend::Gpu(g) => g.gpu.tuning,
            Backend::Cpu(_) => KernelTuning::Cpu,
        }
    }

    /// A zeroed f32/u32 buffer of `size` bytes.
    pub fn storage(&self, label: &str, size: u64) -> Result<Buf> {
        match self {
            Backend::Gpu(g) => g.gpu.storage(label, size).map(Buf::Gpu),
            Backend::Cpu(c) => c.storage(size).map(Buf::Cpu),
        }
    }

    pub fn storage_with(&self, label: &str, bytes: &[u8]) -> Result<Buf> {
        match self {
            Backend::Gpu(g) => g.gpu.storage_with(label, bytes).map(Buf::Gpu),
            Backend::Cpu(c) => c.storage_with(bytes).map(Buf::Cpu),
        }
    }

    /// A buffer the host reads results from (on the GPU a mappable copy).
    pub fn readback_buffer(&self, label: &str, size: u64) -> Result<Buf> {
        match self {
            Backend::Gpu(g) => g.gpu.readback_buffer(label, size).map(Buf::Gpu),
            Backend::Cpu(c) => c.storage(size).map(Buf::Cpu),
        }
    }

    /// The Step buffer: the position of the first token of a forward call.
    pub fn step_buffer(&self) -> Result<Buf> {
        match self {
            Backend::Gpu(g) => Ok(Buf::Gpu(g.gpu.step_buffer(0))),
            Backend::Cpu(c) => c.storage(16).map(Buf::Cpu),
        }
    }

    pub fn set_step(&self, step: &Buf, pos: u32) -> Result<()> {
        match self {
            Backend::Gpu(g) => g.gpu.set_step(step.gpu()?, pos),
            Backend::Cpu(_) => step.cpu()?.write(0, &pos.to_le_bytes())?,
        }
        Ok(())
    }

    /// Writes `bytes` at `offset` of `buffer`.
    pub fn write(&self, buffer: &Buf, offset: u64, bytes: &[u8]) -> Result<()> {
        match self {
            Backend::Gpu(g) => g.gpu.queue.write_buffer(buffer.gpu()?, offset, bytes),
            Backend::Cpu(_) => buffer.cpu()?.write(offset, bytes)?,
        }
        Ok(())
    }

    /// `len` f32 values of a storage buffer.
    pub async fn read_f32(&self, what: &str, buffer: &Buf, len: usize) -> Result<Vec<f32>> {
        match self {
            Backend::Gpu(g) => g.gpu.read_f32(what, buffer.gpu()?, len).await,
            Backend::Cpu(_) => Ok(bytemuck::pod_collect_to_vec(&buffer.cpu()?.read_bytes(4 * len)?)),
        }
    }

    /// `len` f32 values of a readback buffer.
    pub async fn read_mapped_f32(&self, what: &str, buffer: &Buf, len: usize) -> Result<Vec<f32>> {
        match self {
            Backend::Gpu(g) => g.gpu.read_mapped_f32(what, buffer.gpu()?, len).await,
            Backend::Cpu(_) => self.read_f32(what, buffer, len).await,
        }
    }

    /// `len` u32 values of a readback buffer.
    pub async fn read_mapped_u32(&self, what: &str, buffer: &Buf, len: usize) -> Result<Vec<u32>> {
        match self {
            Backend::Gpu(g) => g.gpu.read_mapped_u32(what, buffer.gpu()?, len).await,
            Backend::Cpu(_) => Ok(bytemuck::pod_collect_to_vec(&buffer.cpu()?.read_bytes(4 * len)?)),
        }
    }

    /// The device's first fault since the last check (a lost GPU).
    pub fn check(&self) -> Result<()> {
        match self {
            Backend::Gpu(g) => g.gpu.check(),
            Backend::Cpu(_) => Ok(()),
        }
    }

    /// A matrix stored in the kernel layout (as a package stores it); the CPU
    /// keeps `layout`'s bytes as they are.
    pub fn matrix(
        &self,
        label: &str,
        format: WeightFormat,
        rows: usize,
        cols: usize,
        layout: GpuLayout,
    ) -> Result<Matrix> {
        match self {
            Backend::Gpu(g) => gpu::Matrix::upload(&g.gpu, label, format, rows, cols, &layout).map(Matrix::Gpu),
            Backend::Cpu(_) => cpu::matrix(label, format, rows, cols, layout).map(|m| Matrix::Cpu(Arc::new(m))),
        }
    }

    /// Scratch for attention's split partials (GPU flash decoding; none on the CPU).
    pub fn attention_scratch(&self, shape: &AttentionShape) -> Result<Option<AttentionScratch>> {
        match self {
            Backend::Gpu(g) => AttentionScratch::new(&g.gpu, shape).map(Some),
            Backend::Cpu(_) => Ok(None),
        }
    }

    /// After a forward call: in the browser the CPU backend lets the event
    /// loop run (an `interrupt()` arriving meanwhile), as awaiting the GPU does.
    pub async fn yield_now(&self) {
        #[cfg(target_arch = "wasm32")]
        if let Backend::Cpu(_) = self {
            crate::web::yield_to_event_loop().await;
        }
    }

    /// Runs recorded ops of this backend in order (GPU: one command encoder).
    /// Ops this backend recorded, as one command list (in order).
    pub fn commands(&self, ops: Vec<Op>) -> Result<Commands> {
        Ok(match self {
            Backend::Gpu(_) => Commands::Gpu(
                ops.into_iter()
                    .map(|op| if let Op::Gpu(command) = op { Ok(command) } else { Err(mixed()) })
                    .collect::<Result<_>>()?,
            ),
            Backend::Cpu(_) => Commands::Cpu(
                ops.into_iter()
                    .map(|op| if let Op::Cpu(op) = op { Ok(op) } else { Err(mixed()) })
                    .collect::<Result<_>>()?,
            ),
        })
    }

    pub fn run(&self, ops: &Commands) -> Result<()> {
        match (self, ops) {
            (Backend::Gpu(g), Commands::Gpu(commands)) => {
                g.gpu.submit(commands);
                Ok(())
            }
            (Backend::Cpu(c), Commands::Cpu(ops)) => c.run(ops),
            _ => Err(mixed()),
        }
    }
}

/// Recorded ops of one backend, in order.
pub enum Commands {
    Gpu(Vec<Command>),
    Cpu(Vec<cpu::Op>),
}

/// The ops, one per GPU kernel, with the kernels' arguments.
impl Backend {
    /// y [T, out] = x [T, cols] W^T (+ bias[offset..]).
    pub fn linear(
        &self,
        w: &Matrix,
        bias: Option<(&Buf, usize)>,
        x: &Buf,
        y: &Buf,
        tokens: usize,
        out: OutputSlice,
    ) -> Result<Op> {
        match (self, w) {
            (Backend::Gpu(g), Matrix::Gpu(w)) => {
                let bias = match bias {
                    Some((b, offset)) => Some(Bias { buffer: b.gpu()?, offset }),
                    None => None,
                };
                Ok(g.kernels.linear_with_bias(w, bias, x.gpu()?, y.gpu()?, tokens, out)?.into())
            }
            (Backend::Cpu(c), Matrix::Cpu(w)) => {
                let bias = match bias {
                    Some((b, offset)) => Some((b.cpu()?, offset)),
                    None => None,
                };
                Ok(c.linear(w, bias, x.cpu()?, y.cpu()?, tokens, out)?.into())
            }
            _ => Err(mixed()),
        }
    }

    /// out [T, cols] = the rows ids[t] - first of `table` that it holds.
    pub fn embedding_chunk(&self, table: &Matrix, first: usize, ids: &Buf, out: &Buf, tokens: usize) -> Result<Op> {
        match (self, table) {
            (Backend::Gpu(g), Matrix::Gpu(t)) => {
                Ok(g.kernels.embedding_chunk(t, first, ids.gpu()?, out.gpu()?, tokens)?.into())
            }
            (Backend::Cpu(c), Matrix::Cpu(t)) => Ok(c.embedding(t, first, ids.cpu()?, out.cpu()?, tokens)?.into()),
            _ => Err(mixed()),
        }
    }

    pub fn rms_norm(&self, x: &Buf, w: &Buf, y: &Buf, rows: usize, cols: usize, eps: f32) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.rms_norm(x.gpu()?, w.gpu()?, y.gpu()?, rows, cols, eps)?.into()),
            Backend::Cpu(c) => {
                let (x, w, y) = (x.cpu()?.clone(), w.cpu()?.clone(), y.cpu()?.clone());
                Ok(c.elementwise(cpu::Op::RmsNorm { x, w, y, rows, cols, eps })?.into())
            }
        }
    }

    /// x += h, then h = RMSNorm(x) * w (a residual add folded into the next norm).
    pub fn add_rms_norm(&self, x: &Buf, h: &Buf, w: &Buf, rows: usize, cols: usize, eps: f32) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.add_rms_norm(x.gpu()?, h.gpu()?, w.gpu()?, rows, cols, eps)?.into()),
            Backend::Cpu(c) => {
                let (x, h, w) = (x.cpu()?.clone(), h.cpu()?.clone(), w.cpu()?.clone());
                Ok(c.elementwise(cpu::Op::AddRmsNorm { x, h, w, rows, cols, eps })?.into())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(&self, x: &Buf, w: &Buf, b: &Buf, y: &Buf, rows: usize, cols: usize, eps: f32) -> Result<Op> {
        match self {
            Backend::Gpu(g) => {
                Ok(g.kernels.layer_norm(x.gpu()?, w.gpu()?, b.gpu()?, y.gpu()?, rows, cols, eps)?.into())
            }
            Backend::Cpu(c) => {
                let (x, w, b, y) = (x.cpu()?.clone(), w.cpu()?.clone(), b.cpu()?.clone(), y.cpu()?.clone());
                Ok(c.elementwise(cpu::Op::LayerNorm { x, w, b, y, rows, cols, eps })?.into())
            }
        }
    }

    pub fn rope(&self, step: &Buf, inv_freq: &Buf, x: &Buf, shape: &RopeShape) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.rope(step.gpu()?, inv_freq.gpu()?, x.gpu()?, shape)?.into()),
            Backend::Cpu(c) => Ok(c.rope(step.cpu()?, inv_freq.cpu()?, x.cpu()?, shape)?.into()),
        }
    }

    /// A layer's keys and values from a fused [Q | K | V] src into its caches.
    pub fn kv_append(&self, step: &Buf, src: &Buf, k: &Buf, v: &Buf, shape: &KvAppendShape) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.kv_append(step.gpu()?, src.gpu()?, k.gpu()?, v.gpu()?, shape)?.into()),
            Backend::Cpu(c) => Ok(c.kv_append(step.cpu()?, src.cpu()?, k.cpu()?, v.cpu()?, shape)?.into()),
        }
    }

    /// out = attention of the queries in `q` over the caches k and v.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        step: &Buf,
        q: &Buf,
        k: &Buf,
        v: &Buf,
        scratch: Option<&AttentionScratch>,
        out: &Buf,
        shape: &AttentionShape,
    ) -> Result<Vec<Op>> {
        match (self, scratch) {
            (Backend::Gpu(g), Some(scratch)) => {
                let (q, k, v, out) = (q.gpu()?, k.gpu()?, v.gpu()?, out.gpu()?);
                Ok(g.kernels.attention(step.gpu()?, q, k, v, scratch, out, shape)?.into_iter().map(Op::from).collect())
            }
            (Backend::Cpu(c), _) => {
                Ok(vec![c.attention(step.cpu()?, q.cpu()?, k.cpu()?, v.cpu()?, out.cpu()?, shape)?.into()])
            }
            (Backend::Gpu(_), None) => Err(mixed()),
        }
    }

    /// Bidirectional attention within each sequence (encoders).
    pub fn encoder_attention(
        &self,
        qkv: &Buf,
        segments: &Buf,
        out: &Buf,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g
                .kernels
                .encoder_attention(qkv.gpu()?, segments.gpu()?, out.gpu()?, tokens, heads, head_dim)?
                .into()),
            Backend::Cpu(c) => {
                Ok(c.encoder_attention(qkv.cpu()?, segments.cpu()?, out.cpu()?, tokens, heads, head_dim)?.into())
            }
        }
    }

    /// Whether [`Backend::linear_after_silu_mul`] takes `tokens` tokens into
    /// a matrix of `cols` columns: one token, whole 32-column blocks, on a GPU
    /// with the GPU tiles (`Kernels::fuses_silu_into_matvec`).
    pub fn fuses_silu_into_matvec(&self, tokens: usize, cols: usize) -> bool {
        let shape = tokens == 1 && cols.is_multiple_of(crate::quant::BLOCK);
        matches!(self, Backend::Gpu(g) if shape && g.kernels.fuses_silu_into_matvec())
    }

    /// y = W (silu(gate) * up) for one token of gate_up [2 cols] (gate first),
    /// written into the slice `out` of y: silu_mul and the down projection
    /// in one dispatch, where `fuses_silu_into_matvec` says so.
    pub fn linear_after_silu_mul(&self, w: &Matrix, gate_up: &Buf, y: &Buf, out: OutputSlice) -> Result<Op> {
        match (self, w) {
            (Backend::Gpu(g), Matrix::Gpu(w)) if self.fuses_silu_into_matvec(1, w.cols) => {
                Ok(g.kernels.matvec_after_silu_mul(w, gate_up.gpu()?, y.gpu()?, out)?.into())
            }
            _ => Err(Error::Shape {
                op: "linear_after_silu_mul",
                message: format!("the {} backend does not fuse silu_mul into the matvec", self.name()),
            }),
        }
    }

    pub fn silu_mul(&self, gate_up: &Buf, out: &Buf, tokens: usize, intermediate: usize) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.silu_mul(gate_up.gpu()?, out.gpu()?, tokens, intermediate)?.into()),
            Backend::Cpu(c) => {
                let (gate_up, out) = (gate_up.cpu()?.clone(), out.cpu()?.clone());
                Ok(c.elementwise(cpu::Op::SiluMul { gate_up, out, tokens, intermediate })?.into())
            }
        }
    }

    pub fn gegelu(
        &self,
        gate_up: &Buf,
        out: &Buf,
        tokens: usize,
        intermediate: usize,
        limit: Option<f32>,
    ) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.gegelu(gate_up.gpu()?, out.gpu()?, tokens, intermediate, limit)?.into()),
            Backend::Cpu(c) => {
                let (gate_up, out) = (gate_up.cpu()?.clone(), out.cpu()?.clone());
                Ok(c.elementwise(cpu::Op::Gegelu { gate_up, out, tokens, intermediate, limit })?.into())
            }
        }
    }

    pub fn gelu(&self, x: &Buf, n: usize, kind: GeluKind) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.gelu(x.gpu()?, n, kind)?.into()),
            Backend::Cpu(c) => Ok(c.elementwise(cpu::Op::Gelu { x: x.cpu()?.clone(), n, kind })?.into()),
        }
    }

    /// a += b over `n` values.
    pub fn add(&self, a: &Buf, b: &Buf, n: usize) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.add(a.gpu()?, b.gpu()?, n)?.into()),
            Backend::Cpu(c) => Ok(c.elementwise(cpu::Op::Add { a: a.cpu()?.clone(), b: b.cpu()?.clone(), n })?.into()),
        }
    }

    /// x [T, width] row t = rows row t where flags [T] u32 is set (a vision
    /// model's image features over its image positions' token embeddings).
    pub fn splice_rows(&self, flags: &Buf, rows: &Buf, x: &Buf, tokens: usize, width: usize) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.splice_rows(flags.gpu()?, rows.gpu()?, x.gpu()?, tokens, width)?.into()),
            Backend::Cpu(c) => {
                let (flags, rows, x) = (flags.cpu()?.clone(), rows.cpu()?.clone(), x.cpu()?.clone());
                Ok(c.elementwise(cpu::Op::SpliceRows { flags, rows, x, tokens, width })?.into())
            }
        }
    }

    /// x *= s over `n` values.
    pub fn scale(&self, x: &Buf, n: usize, s: f32) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.scale(x.gpu()?, n, s)?.into()),
            Backend::Cpu(c) => Ok(c.elementwise(cpu::Op::Scale { x: x.cpu()?.clone(), n, s })?.into()),
        }
    }

    /// out [rows] u32 = argmax of each row of x [rows, cols].
    pub fn argmax(&self, x: &Buf, out: &Buf, rows: usize, cols: usize) -> Result<Op> {
        match self {
            Backend::Gpu(g) => Ok(g.kernels.argmax(x.gpu()?, out.gpu()?, rows, cols)?.into()),
            Backend::Cpu(_) => {
                crate::error::ensure_shape(
                    x.size() as usize >= rows * cols * 4 && out.size() as usize >= rows * 4,
                    "argmax",
                    || format!("{rows} rows of {cols} from {} bytes into {}", x.size(), out.size()),
                )?;
                Ok(cpu::Op::Argmax { x: x.cpu()?.clone(), out: out.cpu()?.clone(), rows, cols }.into())
            }
        }
    }

    /// Copies `size` bytes, in order with the ops.
    pub fn copy(&self, src: &Buf, src_offset: u64, dst: &Buf, dst_offset: u64, size: u64) -> Result<Op> {
        crate::error::ensure_shape(src_offset + size <= src.size() && dst_offset + size <= dst.size(), "copy", || {
            format!("{size} bytes from {src_offset} of {} to {dst_offset} of {}", src.size(), dst.size())
        })?;
        Ok(match self {
            Backend::Gpu(_) => Op::Gpu(Command::Copy {
                src: src.gpu()?.clone(),
                src_offset,
                dst: dst.gpu()?.clone(),
                dst_offset,
                size,
            }),
            Backend::Cpu(_) => Op::Cpu(cpu::Op::Copy {
                src: src.cpu()?.clone(),
                src_offset,
                dst: dst.cpu()?.clone(),
                dst_offset,
                size,
            }),
        })
    }
}
