//! The CPU backend: the op vocabulary of the WGSL kernels (`src/gpu`) in
//! Rust, for devices without WebGPU and for the CLI without a GPU
//! (`--backend cpu`). Buffers are words in memory ([`Tensor`]); weight
//! matrices keep the package's kernel layout ([`Matrix`]: no repacking, the
//! model is held once); a forward pass is recorded once as a list of [`Op`]s
//! with their tensors and shapes, and replayed for every token of the same
//! shape, as on the GPU.
//!
//! The hot paths are the quantized matrix products (`matrix.rs`: activations
//! quantized to 8 bits once per input, integer dot products, f32
//! accumulation — llama.cpp's q8 path) and attention (`attention.rs`), split
//! over rayon's threads (natively one per core; in wasm one, or a Web Worker
//! pool where the page is cross-origin isolated).

mod attention;
mod elementwise;
mod matrix;
mod simd;
// Used by the threaded wasm build only (and its unit test natively).
#[cfg_attr(not(all(target_arch = "wasm32", feature = "threads")), allow(dead_code))]
mod team;

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Error, Result};
use crate::gpu::{AttentionShape, GeluKind, KvAppendShape, OutputSlice, RopeShape};
use crate::quant::{self, GpuLayout, WeightFormat};

pub use matrix::Matrix;

/// The CPU device: its threads and instruction set.
#[derive(Debug)]
pub struct Cpu {
    pub threads: usize,
    /// The instruction set the matrix products were built for ("avx2", "simd128", ...).
    pub simd: &'static str,
    /// The engine's own pool (natively): a forward pass runs inside it, so
    /// the ops' parallel loops start on a worker instead of waking the pool
    /// from outside and sleeping until it is done (two context switches per
    /// op). None where threads cannot be spawned (wasm without a worker
    /// pool): rayon then runs everything on the calling thread.
    pool: Option<rayon::ThreadPool>,
}

impl Cpu {
    /// A CPU backend with `threads` threads (None: one per core).
    #[cfg(not(all(target_arch = "wasm32", feature = "threads")))]
    pub fn new(threads: Option<usize>) -> Cpu {
        let mut builder = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("phi-web cpu {i}"));
        if let Some(n) = threads {
            builder = builder.num_threads(n.max(1));
        }
        let pool = builder.build().ok();
        let threads = pool.as_ref().map_or(1, rayon::ThreadPool::current_num_threads);
        Cpu { threads, simd: simd::name(), pool }
    }

    /// The threaded wasm build: the pool is rayon's global one, on the Web
    /// Workers that `initThreadPool` started (pkg/core.js calls it once,
    /// before any engine, with the `threads` the first engine asked for).
    #[cfg(all(target_arch = "wasm32", feature = "threads"))]
    pub fn new(_threads: Option<usize>) -> Cpu {
        Cpu { threads: rayon::current_num_threads(), simd: simd::name(), pool: None }
    }

    /// A zeroed buffer of `size` bytes (rounded up to whole words).
    pub fn storage(&self, size: u64) -> Result<Tensor> {
        let words = usize::try_from(size.div_ceil(4)).map_err(|_| too_large(size))?;
        let mut data = Vec::new();
        data.try_reserve_exact(words).map_err(|_| too_large(size))?;
        data.resize(words, 0u32);
        Ok(Tensor(Arc::new(RwLock::new(data))))
    }

    /// A buffer holding `bytes` (zero-padded to whole words).
    pub fn storage_with(&self, bytes: &[u8]) -> Result<Tensor> {
        let tensor = self.storage(bytes.len() as u64)?;
        tensor.write(0, bytes)?;
        Ok(tensor)
    }

    /// Runs recorded ops in order (in the pool when there is one).
    pub fn run(&self, ops: &[Op]) -> Result<()> {
        match &self.pool {
            Some(pool) => pool.install(|| ops.iter().try_for_each(Op::run)),
            // The engine's thread waits (Atomics.wait: it is a Worker) while
            // one of the pool's Workers runs the forward pass, so the ops'
            // parallel loops start inside the pool, as natively.
            // Its other Workers help as a spinning team for the pass (team.rs).
            #[cfg(all(target_arch = "wasm32", feature = "threads"))]
            None => {
                let team = team::Team::new();
                rayon::scope(|s| {
                    for _ in 1..self.threads {
                        s.spawn(|_| team.help());
                    }
                    team.lead(|| ops.iter().try_for_each(Op::run))
                })
            }
            #[cfg(not(all(target_arch = "wasm32", feature = "threads")))]
            None => ops.iter().try_for_each(Op::run),
        }
    }
}

fn too_large(size: u64) -> Error {
    Error::Gpu { context: "CPU backend".into(), message: format!("cannot allocate {size} bytes") }
}

/// A buffer in memory: 32-bit words, read as f32, u32, f16 pairs or bytes
/// exactly as the WGSL kernels read the same buffer. Shared with the pool's
/// threads (a forward pass runs there); an op that would read and write one
/// buffer at once gets an error from the lock, never a data race.
#[derive(Clone, Debug)]
pub struct Tensor(Arc<RwLock<Vec<u32>>>);

/// A tensor's words read as f32.
struct F32<'a>(RwLockReadGuard<'a, Vec<u32>>);

impl Deref for F32<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        bytemuck::cast_slice(self.0.as_slice())
    }
}

/// A tensor's words written as f32.
struct F32Mut<'a>(RwLockWriteGuard<'a, Vec<u32>>);

impl Deref for F32Mut<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        bytemuck::cast_slice(self.0.as_slice())
    }
}

impl DerefMut for F32Mut<'_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(self.0.as_mut_slice())
    }
}

impl Tensor {
    pub fn size(&self) -> u64 {
        self.words().map_or(0, |w| 4 * w.len() as u64)
    }

    fn words(&self) -> Result<RwLockReadGuard<'_, Vec<u32>>> {
        self.0.try_read().map_err(|_| aliased())
    }

    fn words_mut(&self) -> Result<RwLockWriteGuard<'_, Vec<u32>>> {
        self.0.try_write().map_err(|_| aliased())
    }

    fn f32(&self) -> Result<F32<'_>> {
        self.words().map(F32)
    }

    fn f32_mut(&self) -> Result<F32Mut<'_>> {
        self.words_mut().map(F32Mut)
    }

    /// The position of the first token, from a Step buffer.
    fn step(&self) -> Result<usize> {
        Ok(self.words()?.first().copied().unwrap_or(0) as usize)
    }

    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let mut words = self.words_mut()?;
        let all: &mut [u8] = bytemuck::cast_slice_mut(words.as_mut_slice());
        let start = offset as usize;
        let end = start.checked_add(bytes.len()).filter(|&end| end <= all.len()).ok_or_else(|| Error::Shape {
            op: "write",
            message: format!("{} bytes at {offset} overflow a buffer of {}", bytes.len(), all.len()),
        })?;
        all[start..end].copy_from_slice(bytes);
        Ok(())
    }

    pub fn read_bytes(&self, size: usize) -> Result<Vec<u8>> {
        let words = self.words()?;
        let all: &[u8] = bytemuck::cast_slice(words.as_slice());
        all.get(..size)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Shape { op: "read", message: format!("{size} bytes from a buffer of {}", all.len()) })
    }

    fn same(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn aliased() -> Error {
    Error::Gpu { context: "CPU backend".into(), message: "an op reads and writes the same buffer".into() }
}

/// Checks that `tensor` holds `floats` f32 values (a wrong shape is an error,
/// not an out-of-bounds access).
fn check_len(op: &'static str, what: &str, tensor: &Tensor, floats: usize) -> Result<()> {
    let have = tensor.size() as usize / 4;
    crate::error::ensure_shape(have >= floats, op, || format!("{what} holds {have} values, needs {floats}"))
}

/// One recorded op: the tensors it reads and writes and its shape, like a
/// GPU dispatch with its bind group.
#[derive(Clone, Debug)]
pub enum Op {
    /// y[t, out] = x[t] W^T (+ bias[first..]).
    Linear {
        w: Arc<Matrix>,
        bias: Option<(Tensor, usize)>,
        x: Tensor,
        y: Tensor,
        tokens: usize,
        out: OutputSlice,
    },
    /// out[t] = row ids[t] - first of the table, for ids inside it.
    Embedding {
        table: Arc<Matrix>,
        first: usize,
        ids: Tensor,
        out: Tensor,
        tokens: usize,
    },
    RmsNorm {
        x: Tensor,
        w: Tensor,
        y: Tensor,
        rows: usize,
        cols: usize,
        eps: f32,
    },
    /// x += h, then h = RMSNorm(x).
    AddRmsNorm {
        x: Tensor,
        h: Tensor,
        w: Tensor,
        rows: usize,
        cols: usize,
        eps: f32,
    },
    LayerNorm {
        x: Tensor,
        w: Tensor,
        b: Tensor,
        y: Tensor,
        rows: usize,
        cols: usize,
        eps: f32,
    },
    Rope {
        step: Tensor,
        inv_freq: Tensor,
        x: Tensor,
        shape: RopeShape,
    },
    /// A layer's keys and values (kv_append_*.wgsl).
    KvAppend {
        step: Tensor,
        src: Tensor,
        k: Tensor,
        v: Tensor,
        shape: KvAppendShape,
    },
    Attention {
        step: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Tensor,
        shape: AttentionShape,
    },
    /// Bidirectional attention within each sequence's [start, end) (encoders).
    EncoderAttention {
        qkv: Tensor,
        segments: Tensor,
        out: Tensor,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    },
    SiluMul {
        gate_up: Tensor,
        out: Tensor,
        tokens: usize,
        intermediate: usize,
    },
    Gegelu {
        gate_up: Tensor,
        out: Tensor,
        tokens: usize,
        intermediate: usize,
        limit: Option<f32>,
    },
    Gelu {
        x: Tensor,
        n: usize,
        kind: GeluKind,
    },
    Add {
        a: Tensor,
        b: Tensor,
        n: usize,
    },
    SpliceRows {
        flags: Tensor,
        rows: Tensor,
        x: Tensor,
        tokens: usize,
        width: usize,
    },
    Scale {
        x: Tensor,
        n: usize,
        s: f32,
    },
    Argmax {
        x: Tensor,
        out: Tensor,
        rows: usize,
        cols: usize,
    },
    Copy {
        src: Tensor,
        src_offset: u64,
        dst: Tensor,
        dst_offset: u64,
        size: u64,
    },
}

impl Op {
    fn run(&self) -> Result<()> {
        match self {
            Op::Linear { w, bias, x, y, tokens, out } => {
                let bias = match bias {
                    Some((b, first)) => Some((b.f32()?, *first)),
                    None => None,
                };
                let bias = bias.as_ref().map(|(b, first)| &b[*first..]);
                w.linear(&x.f32()?, &mut y.f32_mut()?, *tokens, *out, bias)
            }
            Op::Embedding { table, first, ids, out, tokens } => {
                table.embedding(&ids.words()?[..*tokens], *first, &mut out.f32_mut()?)
            }
            Op::RmsNorm { x, w, y, rows, cols, eps } => {
                elementwise::rms_norm(&x.f32()?, &w.f32()?, &mut y.f32_mut()?, *rows, *cols, *eps);
                Ok(())
            }
            Op::AddRmsNorm { x, h, w, rows, cols, eps } => {
                elementwise::add_rms_norm(&mut x.f32_mut()?, &mut h.f32_mut()?, &w.f32()?, *rows, *cols, *eps);
                Ok(())
            }
            Op::LayerNorm { x, w, b, y, rows, cols, eps } => {
                elementwise::layer_norm(&x.f32()?, &w.f32()?, &b.f32()?, &mut y.f32_mut()?, *rows, *cols, *eps);
                Ok(())
            }
            Op::Rope { step, inv_freq, x, shape } => {
                attention::rope(step.step()?, &inv_freq.f32()?, &mut x.f32_mut()?, shape);
                Ok(())
            }
            Op::KvAppend { step, src, k, v, shape } => {
                let (pos, src) = (step.step()?, src.f32()?);
                attention::kv_append(pos, &src, &mut k.words_mut()?, shape);
                let v_shape = KvAppendShape { src_offset: shape.src_offset + shape.kv_dim, ..*shape };
                attention::kv_append(pos, &src, &mut v.words_mut()?, &v_shape);
                Ok(())
            }
            Op::Attention { step, q, k, v, out, shape } => {
                let (k, v) = (k.words()?, v.words()?);
                attention::attention(step.step()?, &q.f32()?, &k, &v, &mut out.f32_mut()?, shape)
            }
            Op::EncoderAttention { qkv, segments, out, tokens, heads, head_dim } => {
                let segments = segments.words()?;
                attention::encoder_attention(&qkv.f32()?, &segments, &mut out.f32_mut()?, *tokens, *heads, *head_dim);
                Ok(())
            }
            Op::SiluMul { gate_up, out, tokens, intermediate } => {
                elementwise::silu_mul(&gate_up.f32()?, &mut out.f32_mut()?, *tokens, *intermediate);
                Ok(())
            }
            Op::Gegelu { gate_up, out, tokens, intermediate, limit } => {
                elementwise::gegelu(&gate_up.f32()?, &mut out.f32_mut()?, *tokens, *intermediate, *limit);
                Ok(())
            }
            Op::Gelu { x, n, kind } => {
                elementwise::gelu(&mut x.f32_mut()?[..*n], *kind);
                Ok(())
            }
            Op::SpliceRows { flags, rows, x, tokens, width } => {
                let (flags, rows, mut x) = (flags.words()?, rows.f32()?, x.f32_mut()?);
                for t in (0..*tokens).filter(|&t| flags[t] != 0) {
                    x[t * width..(t + 1) * width].copy_from_slice(&rows[t * width..(t + 1) * width]);
                }
                Ok(())
            }
            Op::Add { a, b, n } => {
                if a.same(b) {
                    a.f32_mut()?[..*n].iter_mut().for_each(|v| *v += *v);
                } else {
                    let b = b.f32()?;
                    a.f32_mut()?[..*n].iter_mut().zip(&b[..*n]).for_each(|(a, b)| *a += b);
                }
                Ok(())
            }
            Op::Scale { x, n, s } => {
                x.f32_mut()?[..*n].iter_mut().for_each(|v| *v *= s);
                Ok(())
            }
            Op::Argmax { x, out, rows, cols } => {
                let x = x.f32()?;
                let mut out = out.words_mut()?;
                for (r, row) in x.chunks(*cols).take(*rows).enumerate() {
                    out[r] = elementwise::argmax(row) as u32;
                }
                Ok(())
            }
            Op::Copy { src, src_offset, dst, dst_offset, size } => {
                let bytes = src.read_bytes((src_offset + size) as usize)?;
                dst.write(*dst_offset, &bytes[*src_offset as usize..])
            }
        }
    }
}

/// The ops, shape-checked as the GPU kernels check theirs.
impl Cpu {
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        w: &Arc<Matrix>,
        bias: Option<(&Tensor, usize)>,
        x: &Tensor,
        y: &Tensor,
        tokens: usize,
        out: OutputSlice,
    ) -> Result<Op> {
        check_len("linear", "x", x, tokens * w.cols)?;
        check_len("linear", "y", y, (tokens - 1) * out.stride + out.offset + w.rows)?;
        if let Some((b, first)) = bias {
            check_len("linear", "bias", b, first + w.rows)?;
        }
        let bias = bias.map(|(b, first)| (b.clone(), first));
        Ok(Op::Linear { w: w.clone(), bias, x: x.clone(), y: y.clone(), tokens, out })
    }

    pub fn embedding(
        &self,
        table: &Arc<Matrix>,
        first: usize,
        ids: &Tensor,
        out: &Tensor,
        tokens: usize,
    ) -> Result<Op> {
        check_len("embedding", "out", out, tokens * table.cols)?;
        check_len("embedding", "ids", ids, tokens)?;
        Ok(Op::Embedding { table: table.clone(), first, ids: ids.clone(), out: out.clone(), tokens })
    }

    pub fn rope(&self, step: &Tensor, inv_freq: &Tensor, x: &Tensor, shape: &RopeShape) -> Result<Op> {
        check_len("rope", "x", x, shape.tokens * shape.row_stride)?;
        check_len("rope", "inv_freq", inv_freq, shape.rot_dim / 2)?;
        Ok(Op::Rope { step: step.clone(), inv_freq: inv_freq.clone(), x: x.clone(), shape: *shape })
    }

    pub fn kv_append(&self, step: &Tensor, src: &Tensor, k: &Tensor, v: &Tensor, shape: &KvAppendShape) -> Result<Op> {
        check_len("kv_append", "src", src, shape.tokens * shape.src_stride)?;
        crate::error::ensure_shape(shape.src_offset + 2 * shape.kv_dim <= shape.src_stride, "kv_append", || {
            format!("K and V of {} values at {} must fit rows of {}", shape.kv_dim, shape.src_offset, shape.src_stride)
        })?;
        let row = shape.format.row_bytes(shape.kv_dim);
        for cache in [k, v] {
            crate::error::ensure_shape(cache.size() as usize >= shape.slots * row, "kv_append", || {
                format!("the cache holds {} bytes, needs {}", cache.size(), shape.slots * row)
            })?;
        }
        Ok(Op::KvAppend { step: step.clone(), src: src.clone(), k: k.clone(), v: v.clone(), shape: *shape })
    }

    pub fn attention(
        &self,
        step: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        shape: &AttentionShape,
    ) -> Result<Op> {
        check_len("attention", "q", q, shape.tokens * shape.q_stride)?;
        check_len("attention", "out", out, shape.tokens * shape.heads * shape.head_dim)?;
        let cache = shape.slots * shape.kv_format.row_bytes(shape.kv_heads * shape.head_dim);
        crate::error::ensure_shape(
            k.size() as usize >= cache
                && v.size() as usize >= cache
                && shape.heads.is_multiple_of(shape.kv_heads.max(1)),
            "attention",
            || {
                format!(
                    "caches of {} and {} bytes for {cache}, {} heads over {}",
                    k.size(),
                    v.size(),
                    shape.heads,
                    shape.kv_heads
                )
            },
        )?;
        let (k, v) = (k.clone(), v.clone());
        Ok(Op::Attention { step: step.clone(), q: q.clone(), k, v, out: out.clone(), shape: *shape })
    }

    pub fn encoder_attention(
        &self,
        qkv: &Tensor,
        segments: &Tensor,
        out: &Tensor,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Op> {
        check_len("encoder_attention", "qkv", qkv, tokens * 3 * heads * head_dim)?;
        check_len("encoder_attention", "segments", segments, 2 * tokens)?;
        check_len("encoder_attention", "out", out, tokens * heads * head_dim)?;
        let (qkv, segments, out) = (qkv.clone(), segments.clone(), out.clone());
        Ok(Op::EncoderAttention { qkv, segments, out, tokens, heads, head_dim })
    }

    /// Checks an elementwise op's sizes.
    pub fn elementwise(&self, op: Op) -> Result<Op> {
        let (what, tensor, n) = match &op {
            Op::SiluMul { gate_up, out, tokens, intermediate }
            | Op::Gegelu { gate_up, out, tokens, intermediate, .. } => {
                check_len("activation", "gate_up", gate_up, 2 * tokens * intermediate)?;
                ("out", out, tokens * intermediate)
            }
            Op::Gelu { x, n, .. } | Op::Scale { x, n, .. } => ("x", x, *n),
            Op::Add { a, b, n } => {
                check_len("add", "b", b, *n)?;
                ("a", a, *n)
            }
            Op::SpliceRows { flags, rows, x, tokens, width } => {
                check_len("splice_rows", "flags", flags, *tokens)?;
                check_len("splice_rows", "rows", rows, tokens * width)?;
                ("x", x, tokens * width)
            }
            Op::AddRmsNorm { x, h, w, rows, cols, .. } => {
                check_len("norm", "x", x, rows * cols)?;
                check_len("norm", "w", w, *cols)?;
                ("h", h, rows * cols)
            }
            Op::RmsNorm { x, w, y, rows, cols, .. } | Op::LayerNorm { x, w, y, rows, cols, .. } => {
                check_len("norm", "x", x, rows * cols)?;
                check_len("norm", "w", w, *cols)?;
                if let Op::LayerNorm { b, .. } = &op {
                    check_len("norm", "b", b, *cols)?;
                }
                ("y", y, rows * cols)
            }
            _ => return Ok(op),
        };
        check_len("elementwise", what, tensor, n)?;
        Ok(op)
    }
}

/// Uploads a matrix stored in the kernel layout (as in a package).
pub fn matrix(label: &str, format: WeightFormat, rows: usize, cols: usize, layout: GpuLayout) -> Result<Matrix> {
    let (data_size, scales_size) = quant::gpu_size(format, rows, cols);
    crate::error::ensure_shape(layout.data.len() == data_size && layout.scales.len() >= scales_size, "matrix", || {
        format!(
            "{label}: {} [{rows}, {cols}] needs {data_size} + {scales_size} bytes, got {} + {}",
            format.name(),
            layout.data.len(),
            layout.scales.len()
        )
    })?;
    Matrix::new(format, rows, cols, layout)
}
