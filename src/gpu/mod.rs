//! The GPU layer: device negotiation ([`Gpu`]), weight matrices in the kernel
//! layout ([`Matrix`]), and one typed function per WGSL kernel ([`Kernels`]),
//! each returning a [`Dispatch`] that can be recorded once and replayed.

mod context;
mod kernels;
mod shapes;
mod timer;
mod tuning;

pub use context::{AdapterSummary, Gpu, GpuFeatures, GpuOptions, KernelTuning};
pub use kernels::{Bias, ExpertInput, ExpertStack, Kernels, Routing, ENCODER_MAX_KEYS, ROUTE_BYTES};
pub use shapes::{AttentionScratch, AttentionShape, GeluKind, KvAppendShape, KvFormat, OutputSlice, RopeShape};
pub use timer::GpuTimes;
pub use tuning::Tuning;

use crate::error::{ensure_shape, Result};
use crate::quant::{self, GpuLayout, WeightFormat};

/// One kernel launch with its bindings: replayable, because per-step values
/// (the position) live in a `Step` buffer rather than in the bind group.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

impl Dispatch {
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// One step of a command list: a kernel launch or a buffer copy.
#[derive(Clone, Debug)]
pub enum Command {
    Dispatch(Dispatch),
    Copy { src: wgpu::Buffer, src_offset: u64, dst: wgpu::Buffer, dst_offset: u64, size: u64 },
}

impl From<Dispatch> for Command {
    fn from(d: Dispatch) -> Command {
        Command::Dispatch(d)
    }
}

impl Gpu {
    /// Records `commands` into ONE command encoder (compute passes between
    /// copies) and submits it; timed when a [`Gpu::start_timer`] timer is on.
    pub fn submit(&self, commands: &[Command]) -> wgpu::SubmissionIndex {
        #[cfg(not(target_arch = "wasm32"))]
        let start = std::time::Instant::now();
        let mut timer = self.timer_slot();
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("phi-web step") });
        let stamps = timer.as_mut().and_then(|t| t.next());
        // Compute passes (runs of dispatches), counted only while timing.
        let passes = match stamps {
            Some(_) => commands
                .iter()
                .enumerate()
                .filter(|&(i, c)| {
                    matches!(c, Command::Dispatch(_)) && (i == 0 || !matches!(commands[i - 1], Command::Dispatch(_)))
                })
                .count(),
            None => 0,
        };
        let mut pass_index = 0;
        let mut i = 0;
        while i < commands.len() {
            match &commands[i] {
                Command::Copy { src, src_offset, dst, dst_offset, size } => {
                    encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    i += 1;
                }
                Command::Dispatch(_) => {
                    let timestamp_writes = stamps.as_ref().and_then(|(first, last)| match pass_index {
                        0 if passes == 1 => Some(wgpu::ComputePassTimestampWrites {
                            end_of_pass_write_index: last.end_of_pass_write_index,
                            ..first.clone()
                        }),
                        0 => Some(first.clone()),
                        n if n + 1 == passes => Some(last.clone()),
                        _ => None,
                    });
                    let mut pass =
                        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
                    while let Some(Command::Dispatch(d)) = commands.get(i) {
                        d.encode(&mut pass);
                        i += 1;
                    }
                    pass_index += 1;
                }
            }
        }
        if let Some(t) = timer.as_mut().filter(|_| passes > 0) {
            // Only a submit that took the timer's slot (next) resolves it.
            t.resolve(&mut encoder);
        }
        let index = self.queue.submit([encoder.finish()]);
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(t) = timer.as_mut() {
            t.add_encode(start.elapsed());
        }
        index
    }
}

/// The WGSL `Step` struct (common.wgsl): state written once per submit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    /// Position of the first token of the batch.
    pub pos: u32,
    pub _pad: [u32; 3],
}

impl Gpu {
    /// A `Step` uniform buffer, updated with [`Gpu::set_step`].
    pub fn step_buffer(&self, pos: u32) -> wgpu::Buffer {
        self.uniform("step", &Step { pos, _pad: [0; 3] })
    }

    pub fn set_step(&self, step: &wgpu::Buffer, pos: u32) {
        self.queue.write_buffer(step, 0, bytemuck::bytes_of(&Step { pos, _pad: [0; 3] }));
    }
}

/// A weight matrix W [rows, cols] on the GPU in the kernel layout: one buffer
/// holding the block payloads at offset 0 and the scales at an aligned offset.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    buffer: wgpu::Buffer,
    data_size: u64,
    scales_offset: u64,
    scales_size: u64,
}

impl Matrix {
    /// Uploads a matrix already in the GPU layout (as stored in a package).
    /// Quantized formats need whole 32-column blocks per row; f32 and f16
    /// take any shape (rows that are not whole blocks run on matmul_any).
    pub fn upload(
        gpu: &Gpu,
        label: &str,
        format: WeightFormat,
        rows: usize,
        cols: usize,
        layout: &GpuLayout,
    ) -> Result<Matrix> {
        let any_shape = matches!(format, WeightFormat::F32 | WeightFormat::F16);
        ensure_shape(rows > 0 && cols > 0, "matrix upload", || format!("{label}: [{rows}, {cols}] is empty"))?;
        ensure_shape(any_shape || cols.is_multiple_of(quant::BLOCK), "matrix upload", || {
            format!(
                "{label}: {} [{rows}, {cols}] needs cols a multiple of {} (f32 and f16 take any shape)",
                format.name(),
                quant::BLOCK
            )
        })?;
        let (data_size, scales_size) = quant::gpu_size(format, rows, cols);
        ensure_shape(layout.data.len() == data_size && layout.scales.len() >= scales_size, "matrix upload", || {
            format!(
                "{label}: {} [{rows}, {cols}] needs {data_size} + {scales_size} bytes, got {} + {}",
                format.name(),
                layout.data.len(),
                layout.scales.len()
            )
        })?;
        let matrix = Matrix::allocate(gpu, label, format, rows, cols)?;
        if data_size as u64 == matrix.data_size {
            gpu.queue.write_buffer(&matrix.buffer, 0, &layout.data);
        } else {
            let mut padded = layout.data.clone();
            padded.resize(matrix.data_size as usize, 0);
            gpu.queue.write_buffer(&matrix.buffer, 0, &padded);
        }
        if scales_size > 0 {
            gpu.queue.write_buffer(&matrix.buffer, matrix.scales_offset, &layout.scales[..scales_size]);
        }
        Ok(matrix)
    }

    /// The buffer of a [rows, cols] matrix in `format`, uninitialised: the
    /// payload, then the scales at an aligned offset.
    fn allocate(gpu: &Gpu, label: &str, format: WeightFormat, rows: usize, cols: usize) -> Result<Matrix> {
        let (data_size, scales_size) = quant::gpu_size(format, rows, cols);
        // The readers bind vec4 arrays: an odd-sized f32/f16 matrix gets a
        // zero tail up to 16 bytes.
        let bound_size = data_size.next_multiple_of(16);
        gpu.check_buffer_size(label, bound_size as u64)?;
        gpu.check_buffer_size(label, scales_size as u64)?;
        let align = gpu.limits.min_storage_buffer_offset_alignment as u64;
        let scales_offset = (bound_size as u64).next_multiple_of(align);
        // Payload and scales are bound apart, each within the binding limit
        // (checked above): a 128 MiB q4_0 chunk and its scales share a buffer.
        let buffer = gpu.ranged_storage(label, scales_offset + scales_size as u64)?;
        Ok(Matrix {
            format,
            rows,
            cols,
            buffer,
            data_size: bound_size as u64,
            scales_offset,
            scales_size: scales_size as u64,
        })
    }

    /// Quantizes f32 values [rows, cols] to `format` and uploads them.
    pub fn from_f32(
        gpu: &Gpu,
        label: &str,
        format: WeightFormat,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Matrix> {
        ensure_shape(values.len() == rows * cols, "matrix upload", || {
            format!("{label}: {} values for [{rows}, {cols}]", values.len())
        })?;
        let gguf = quant::quantize(format, values)?;
        Matrix::upload(gpu, label, format, rows, cols, &quant::to_gpu_layout(format, &gguf)?)
    }

    /// A stack of `parts` matrices of [rows, cols] (a layer's experts) as one
    /// [parts * rows, cols] matrix, uninitialised: each part's rows are then
    /// written with [`Matrix::write_rows`] as they stream in.
    pub fn stacked(
        gpu: &Gpu,
        label: &str,
        format: WeightFormat,
        parts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix> {
        ensure_shape(parts > 0 && rows > 0 && cols.is_multiple_of(quant::BLOCK), "matrix stack", || {
            format!("{label}: {parts} x [{rows}, {cols}] needs parts, rows and whole {}-column blocks", quant::BLOCK)
        })?;
        // Whole rows of every part start on 4-byte boundaries (write_buffer's
        // alignment) when the rows per part are even.
        ensure_shape(rows.is_multiple_of(2), "matrix stack", || format!("{label}: {rows} rows per part is odd"))?;
        Matrix::allocate(gpu, label, format, parts * rows, cols)
    }

    /// Writes `count` whole rows in GPU layout at row `first` of a stack.
    pub fn write_rows(&self, gpu: &Gpu, first: usize, count: usize, layout: &GpuLayout) -> Result<()> {
        let (data, scales) = quant::gpu_size(self.format, count, self.cols);
        let (data_at, scales_at) = quant::gpu_size(self.format, first, self.cols);
        ensure_shape(
            first + count <= self.rows
                && layout.data.len() == data
                && layout.scales.len() >= scales
                && first.is_multiple_of(2)
                && count.is_multiple_of(2),
            "matrix stack",
            || {
                format!(
                    "rows {first}..{} of [{}, {}] ({} + {} bytes) do not fit the stack",
                    first + count,
                    self.rows,
                    self.cols,
                    layout.data.len(),
                    layout.scales.len()
                )
            },
        )?;
        gpu.queue.write_buffer(&self.buffer, data_at as u64, &layout.data);
        if scales > 0 {
            gpu.queue.write_buffer(&self.buffer, self.scales_offset + scales_at as u64, &layout.scales[..scales]);
        }
        Ok(())
    }

    /// Bytes this matrix occupies on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.buffer.size()
    }

    /// Bytes a matvec reads from it (payload and scales).
    pub fn read_bytes(&self) -> u64 {
        self.data_size + self.scales_size
    }

    /// Bindings 10 (payload) and 11 (scales) of the weights_{format}.wgsl files.
    fn bind_entries(&self) -> Vec<wgpu::BindGroupEntry<'_>> {
        let range = |offset, size| {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.buffer,
                offset,
                size: wgpu::BufferSize::new(size),
            })
        };
        let mut entries = vec![wgpu::BindGroupEntry { binding: 10, resource: range(0, self.data_size) }];
        if self.scales_size > 0 {
            entries.push(wgpu::BindGroupEntry { binding: 11, resource: range(self.scales_offset, self.scales_size) });
        }
        entries
    }
}
