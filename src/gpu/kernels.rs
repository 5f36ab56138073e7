//! One typed function per WGSL kernel. Each mirrors its shader's `Params`
//! struct, checks shapes against buffer sizes (a wrong shape is an error, not
//! an out-of-bounds read), and returns a replayable [`Dispatch`].
//!
//! Matrix kernels are built from three pieces concatenated at compile time:
//! `common.wgsl`, a `weights_{format}.wgsl` that dequantizes one 32-column
//! block, and the op (`matvec.wgsl`, `matmul_*.wgsl`, `embedding.wgsl`). The
//! dequantization thus exists once per format and each loop once per op,
//! instead of fifteen near-identical files.

use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use super::shapes::{AttentionScratch, AttentionShape, GeluKind, KvAppendShape, KvFormat, OutputSlice, RopeShape};
use super::tuning::{Tuning, WORKGROUP_TILE};
use super::{Dispatch, Gpu, KernelTuning, Matrix};
use crate::error::{ensure_shape, Error, Result};
use crate::quant::WeightFormat;

/// Invocations per workgroup of the matrix kernels (their WG default).
const MATRIX_WG: usize = 64;
/// Rows per workgroup of matvec_subgroup.wgsl (its subgroups share them).
const MATVEC_SUBGROUP_ROWS_PER_WG: usize = 64;
/// Longest sequence encoder_attention takes (encoder_attention.wgsl: MAX_KEYS).
pub const ENCODER_MAX_KEYS: usize = 512;

const COMMON: &str = include_str!("../../shaders/common.wgsl");

fn weights_source(format: WeightFormat) -> &'static str {
    match format {
        WeightFormat::F32 => include_str!("../../shaders/weights_f32.wgsl"),
        WeightFormat::F16 => include_str!("../../shaders/weights_f16.wgsl"),
        WeightFormat::Q4_0 => include_str!("../../shaders/weights_q4_0.wgsl"),
        WeightFormat::Q4_1 => include_str!("../../shaders/weights_q4_1.wgsl"),
        WeightFormat::Q8_0 => include_str!("../../shaders/weights_q8_0.wgsl"),
    }
}

/// Four u32s: the shape of most kernels' `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params4 {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

fn params4(a: u32, b: u32, c: u32, d: u32) -> Params4 {
    Params4 { a, b, c, d }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    rows: u32,
    cols: u32,
    tokens: u32,
    y_stride: u32,
    y_offset: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    rot_dim: u32,
    row_stride: u32,
    offset: u32,
    attn_factor: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KvAppendParams {
    tokens: u32,
    kv_dim: u32,
    src_stride: u32,
    src_offset: u32,
    slots: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    q_stride: u32,
    window: u32,
    splits: u32,
    scale: f32,
    slots: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EncoderAttentionParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
}

/// Every compute pipeline, compiled once for a device.
pub struct Kernels {
    device: wgpu::Device,
    max_groups: u32,
    class: KernelTuning,
    tuning: Tuning,
    matvec: Vec<wgpu::ComputePipeline>, // indexed like WeightFormat::ALL
    matvec_subgroup: Option<Vec<wgpu::ComputePipeline>>, // when the device has subgroups
    matmul: Vec<wgpu::ComputePipeline>, // indexed like WeightFormat::ALL
    embedding: Vec<wgpu::ComputePipeline>, // indexed like WeightFormat::ALL
    rms_norm: wgpu::ComputePipeline,
    layer_norm: wgpu::ComputePipeline,
    rope: wgpu::ComputePipeline,
    kv_append: [wgpu::ComputePipeline; 2], // indexed like KvFormat::ALL
    /// attention.wgsl by [KvFormat::ALL index][grouped, or specialised for one
    /// query head per KV head], compiled on first use: a model needs one of
    /// the four, and each takes seconds to compile on SwiftShader.
    attention: [[OnceLock<wgpu::ComputePipeline>; 2]; 2],
    attention_combine: wgpu::ComputePipeline,
    silu_mul: wgpu::ComputePipeline,
    gelu_erf: wgpu::ComputePipeline,
    gelu_tanh: wgpu::ComputePipeline,
    add: wgpu::ComputePipeline,
    bias_add: wgpu::ComputePipeline,
    encoder_attention: wgpu::ComputePipeline,
    softmax: wgpu::ComputePipeline,
    argmax: wgpu::ComputePipeline,
}

fn format_index(format: WeightFormat) -> usize {
    WeightFormat::ALL.iter().position(|f| *f == format).unwrap_or(0)
}

fn kv_index(format: KvFormat) -> usize {
    KvFormat::ALL.iter().position(|f| *f == format).unwrap_or(0)
}

/// A compute pipeline from `common.wgsl` + `parts`. Shader errors go to the
/// device's error scope or handler (`Gpu::scoped`, `Gpu::check`).
fn compile(
    device: &wgpu::Device,
    name: &str,
    parts: &[&str],
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    let mut source = String::from(COMMON);
    for part in parts {
        source.push('\n');
        source.push_str(part);
    }
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
        cache: None,
    })
}

/// Rejects a binding smaller than the shape says it must be.
fn need(op: &'static str, what: &str, buffer: &wgpu::Buffer, bytes: usize) -> Result<()> {
    ensure_shape(buffer.size() >= bytes as u64, op, || {
        format!("{what} holds {} bytes but the shape needs {bytes}", buffer.size())
    })
}

fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape { op, message: format!("{what} = {v} does not fit in u32") })
}

impl Kernels {
    /// Which kernel variants this device runs ("portable" or "subgroups",
    /// with CPU or GPU tiles).
    pub fn variant(&self) -> String {
        let matvec = if self.matvec_subgroup.is_some() { "subgroups" } else { "portable" };
        format!("{matvec}, {:?} tiles", self.class)
    }

    /// Compiles every kernel for `gpu` (shader errors become [`Error::Shader`])
    /// but attention's, which compile on first use (see `attention`).
    pub async fn new(gpu: &Gpu) -> Result<Kernels> {
        let build_with =
            |name: &str, parts: &[&str], entry: &str, constants: &[(&str, f64)]| -> Result<wgpu::ComputePipeline> {
                Ok(compile(&gpu.device, name, parts, entry, constants))
            };
        let build = |name: &str, parts: &[&str], entry: &str| build_with(name, parts, entry, &[]);
        let tuning = Tuning::of(gpu.tuning);
        let single = |name: &str, source: &str| build(name, &[source], "main");
        gpu.scoped("compiling the kernels", || -> Result<Kernels> {
            let per_format = |op: &str,
                              prefix: &str,
                              source: &str,
                              constants: &[(&str, f64)]|
             -> Result<Vec<wgpu::ComputePipeline>> {
                WeightFormat::ALL
                    .iter()
                    .map(|f| {
                        let parts = [prefix, weights_source(*f), source];
                        build_with(&format!("{op}_{}", f.name()), &parts, "main", constants)
                    })
                    .collect()
            };
            let (matvec_prefix, matmul_prefix) = (tuning.matvec_constants(), tuning.matmul_constants());
            let lanes = [("LANES", tuning.matvec_lanes as f64)];
            let rows_per_wg = [("ROWS_PER_WG", MATVEC_SUBGROUP_ROWS_PER_WG as f64)];
            let wg_rows =
                [("WG_ROWS", tuning.matmul_wg_rows as f64), ("WG_TOKENS", (MATRIX_WG / tuning.matmul_wg_rows) as f64)];
            let gelu = include_str!("../../shaders/gelu.wgsl");
            Ok(Kernels {
                device: gpu.device.clone(),
                max_groups: gpu.limits.max_compute_workgroups_per_dimension,
                class: gpu.tuning,
                tuning,
                matvec: per_format("matvec", &matvec_prefix, include_str!("../../shaders/matvec.wgsl"), &lanes)?,
                matvec_subgroup: match gpu.features.subgroups {
                    true => Some(per_format(
                        "matvec_subgroup",
                        &matvec_prefix,
                        include_str!("../../shaders/matvec_subgroup.wgsl"),
                        &rows_per_wg,
                    )?),
                    false => None,
                },
                matmul: match tuning.matmul_registers {
                    true => per_format(
                        "matmul",
                        &matmul_prefix,
                        include_str!("../../shaders/matmul_registers.wgsl"),
                        &wg_rows,
                    )?,
                    false => per_format("matmul", "", include_str!("../../shaders/matmul_workgroup.wgsl"), &[])?,
                },
                embedding: per_format("embedding", "", include_str!("../../shaders/embedding.wgsl"), &[])?,
                rms_norm: single("rms_norm", include_str!("../../shaders/rms_norm.wgsl"))?,
                layer_norm: single("layer_norm", include_str!("../../shaders/layer_norm.wgsl"))?,
                rope: single("rope", include_str!("../../shaders/rope.wgsl"))?,
                kv_append: [
                    single("kv_append", include_str!("../../shaders/kv_append.wgsl"))?,
                    single("kv_append_q8", include_str!("../../shaders/kv_append_q8.wgsl"))?,
                ],
                attention: Default::default(),
                attention_combine: single("attention_combine", include_str!("../../shaders/attention_combine.wgsl"))?,
                silu_mul: single("silu_mul", include_str!("../../shaders/silu_mul.wgsl"))?,
                gelu_erf: build("gelu_erf", &[gelu], "gelu_erf")?,
                gelu_tanh: build("gelu_tanh", &[gelu], "gelu_tanh")?,
                add: single("add", include_str!("../../shaders/add.wgsl"))?,
                bias_add: single("bias_add", include_str!("../../shaders/bias_add.wgsl"))?,
                encoder_attention: single("encoder_attention", include_str!("../../shaders/encoder_attention.wgsl"))?,
                softmax: single("softmax", include_str!("../../shaders/softmax.wgsl"))?,
                argmax: single("argmax", include_str!("../../shaders/argmax.wgsl"))?,
            })
        })
        .await
        .map_err(|e| match e {
            Error::Gpu { message, .. } => Error::Shader { shader: "phi-web kernels".into(), message },
            other => other,
        })?
    }

    /// Workgroups for `groups` along x, spilling into y past the per-dimension
    /// limit (kernels recover the flat index with `flat_workgroup`).
    fn grid(&self, groups: usize) -> [u32; 3] {
        let max = self.max_groups.max(1) as usize;
        let groups = groups.max(1);
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            [max as u32, groups.div_ceil(max) as u32, 1]
        }
    }

    fn dispatch<P: Pod>(
        &self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        extra: Vec<wgpu::BindGroupEntry<'_>>,
        workgroups: [u32; 3],
    ) -> Dispatch {
        use wgpu::util::DeviceExt;
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(
            buffers.iter().map(|(binding, buffer)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: buffer.as_entire_binding(),
            }),
        );
        entries.extend(extra);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch { label, pipeline: pipeline.clone(), bind_group, workgroups }
    }

    /// y [N] = W [N, K] x [K], one token (decode).
    pub fn matvec(&self, w: &Matrix, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Result<Dispatch> {
        self.linear(w, x, y, 1, OutputSlice::whole(w.rows))
    }

    /// Y [T, N] = X [T, K] W [N, K]^T with the tiled matrix kernel.
    pub fn matmul(&self, w: &Matrix, x: &wgpu::Buffer, y: &wgpu::Buffer, tokens: usize) -> Result<Dispatch> {
        self.matmul_into(w, x, y, tokens, OutputSlice::whole(w.rows))
    }

    /// Y = X W^T for `tokens` rows of X [T, K], written into the slice `out`
    /// of each row of y: the matrix×vector kernel for one token (decode),
    /// the tiled matrix×matrix kernel for more (prefill).
    pub fn linear(
        &self,
        w: &Matrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        tokens: usize,
        out: OutputSlice,
    ) -> Result<Dispatch> {
        if tokens != 1 {
            return self.matmul_into(w, x, y, tokens, out);
        }
        need("matvec", "x", x, w.cols * 4)?;
        need("matvec", "y", y, (out.offset + w.rows) * 4)?;
        let params = params4(
            u32_of("matvec", "rows", w.rows)?,
            u32_of("matvec", "cols", w.cols)?,
            u32_of("matvec", "offset", out.offset)?,
            0,
        );
        let (pipelines, rows_per_wg) = match &self.matvec_subgroup {
            Some(subgroup) => (subgroup, MATVEC_SUBGROUP_ROWS_PER_WG),
            None => (&self.matvec, MATRIX_WG / self.tuning.matvec_lanes * self.tuning.matvec_rows_per_thread),
        };
        let groups = self.grid(w.rows.div_ceil(rows_per_wg));
        Ok(self.dispatch(
            "matvec",
            &pipelines[format_index(w.format)],
            &params,
            &[(1, x), (2, y)],
            w.bind_entries(),
            groups,
        ))
    }

    fn matmul_into(
        &self,
        w: &Matrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        tokens: usize,
        out: OutputSlice,
    ) -> Result<Dispatch> {
        let tuning = &self.tuning;
        let (tile_rows, tile_tokens) = match tuning.matmul_registers {
            true => (
                tuning.matmul_wg_rows * tuning.matmul_rows_per_thread,
                MATRIX_WG / tuning.matmul_wg_rows * tuning.matmul_tokens_per_thread,
            ),
            false => WORKGROUP_TILE,
        };
        ensure_shape(out.offset + w.rows <= out.stride, "matmul", || {
            format!("{} outputs at offset {} overflow rows of {}", w.rows, out.offset, out.stride)
        })?;
        need("matmul", "x", x, tokens * w.cols * 4)?;
        need("matmul", "y", y, tokens * out.stride * 4)?;
        let rows_tiles = w.rows.div_ceil(tile_rows);
        let token_tiles = tokens.div_ceil(tile_tokens);
        ensure_shape(
            rows_tiles <= self.max_groups as usize && token_tiles <= self.max_groups as usize,
            "matmul",
            || format!("[{tokens} x {}] is too large for one dispatch", w.rows),
        )?;
        let params = MatmulParams {
            rows: u32_of("matmul", "rows", w.rows)?,
            cols: u32_of("matmul", "cols", w.cols)?,
            tokens: u32_of("matmul", "tokens", tokens)?,
            y_stride: u32_of("matmul", "stride", out.stride)?,
            y_offset: u32_of("matmul", "offset", out.offset)?,
            _pad: [0; 3],
        };
        let groups = [rows_tiles as u32, token_tiles as u32, 1];
        Ok(self.dispatch(
            "matmul",
            &self.matmul[format_index(w.format)],
            &params,
            &[(1, x), (2, y)],
            w.bind_entries(),
            groups,
        ))
    }

    /// out [T, D] = rows ids [T] of the table [vocab, D].
    pub fn embedding(&self, table: &Matrix, ids: &wgpu::Buffer, out: &wgpu::Buffer, tokens: usize) -> Result<Dispatch> {
        self.embedding_chunk(table, 0, ids, out, tokens)
    }

    /// The tokens of `ids` whose ids fall in rows [first_row, first_row +
    /// table.rows) of a chunked table; other tokens' rows are left as they are.
    pub fn embedding_chunk(
        &self,
        table: &Matrix,
        first_row: usize,
        ids: &wgpu::Buffer,
        out: &wgpu::Buffer,
        tokens: usize,
    ) -> Result<Dispatch> {
        need("embedding", "ids", ids, tokens * 4)?;
        need("embedding", "out", out, tokens * table.cols * 4)?;
        let params = params4(
            u32_of("embedding", "rows", table.rows)?,
            u32_of("embedding", "cols", table.cols)?,
            u32_of("embedding", "tokens", tokens)?,
            u32_of("embedding", "first_row", first_row)?,
        );
        let groups = self.grid((tokens * table.cols / 32).div_ceil(64));
        Ok(self.dispatch(
            "embedding",
            &self.embedding[format_index(table.format)],
            &params,
            &[(1, ids), (2, out)],
            table.bind_entries(),
            groups,
        ))
    }

    /// y [rows, cols] = RMSNorm(x) * w.
    pub fn rms_norm(
        &self,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Dispatch> {
        need("rms_norm", "x", x, rows * cols * 4)?;
        need("rms_norm", "w", w, cols * 4)?;
        need("rms_norm", "y", y, rows * cols * 4)?;
        let params = NormParams {
            rows: u32_of("rms_norm", "rows", rows)?,
            cols: u32_of("rms_norm", "cols", cols)?,
            eps,
            _pad: 0,
        };
        Ok(self.dispatch("rms_norm", &self.rms_norm, &params, &[(1, x), (2, w), (3, y)], vec![], self.grid(rows)))
    }

    /// y [rows, cols] = LayerNorm(x) * w + b.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        &self,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        b: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Dispatch> {
        need("layer_norm", "x", x, rows * cols * 4)?;
        need("layer_norm", "w", w, cols * 4)?;
        need("layer_norm", "b", b, cols * 4)?;
        need("layer_norm", "y", y, rows * cols * 4)?;
        let params = NormParams {
            rows: u32_of("layer_norm", "rows", rows)?,
            cols: u32_of("layer_norm", "cols", cols)?,
            eps,
            _pad: 0,
        };
        Ok(self.dispatch(
            "layer_norm",
            &self.layer_norm,
            &params,
            &[(1, x), (2, w), (3, b), (4, y)],
            vec![],
            self.grid(rows),
        ))
    }

    /// RoPE in place on `x`; token t is at position `step.pos + t`.
    pub fn rope(
        &self,
        step: &wgpu::Buffer,
        inv_freq: &wgpu::Buffer,
        x: &wgpu::Buffer,
        s: &RopeShape,
    ) -> Result<Dispatch> {
        ensure_shape(s.rot_dim.is_multiple_of(2) && s.rot_dim <= s.head_dim && s.rot_dim > 0, "rope", || {
            format!("rotary dim {} must be even, positive and <= head_dim {}", s.rot_dim, s.head_dim)
        })?;
        ensure_shape(s.offset + s.heads * s.head_dim <= s.row_stride, "rope", || {
            format!("{} heads of {} at offset {} overflow rows of {}", s.heads, s.head_dim, s.offset, s.row_stride)
        })?;
        need("rope", "inv_freq", inv_freq, s.rot_dim / 2 * 4)?;
        need("rope", "x", x, s.tokens * s.row_stride * 4)?;
        let params = RopeParams {
            tokens: u32_of("rope", "tokens", s.tokens)?,
            heads: u32_of("rope", "heads", s.heads)?,
            head_dim: u32_of("rope", "head_dim", s.head_dim)?,
            rot_dim: u32_of("rope", "rot_dim", s.rot_dim)?,
            row_stride: u32_of("rope", "row_stride", s.row_stride)?,
            offset: u32_of("rope", "offset", s.offset)?,
            attn_factor: s.attn_factor,
            _pad: 0,
        };
        let groups = self.grid((s.tokens * s.heads * s.rot_dim / 2).div_ceil(64));
        Ok(self.dispatch("rope", &self.rope, &params, &[(1, step), (2, inv_freq), (3, x)], vec![], groups))
    }

    /// Writes T tokens of K or V into `cache` [slots, kv_dim] (in `s.format`)
    /// at positions `step.pos`.., each in slot position % slots.
    pub fn kv_append(
        &self,
        step: &wgpu::Buffer,
        src: &wgpu::Buffer,
        cache: &wgpu::Buffer,
        s: &KvAppendShape,
    ) -> Result<Dispatch> {
        ensure_shape(s.format.supports(s.kv_dim), "kv_append", || {
            format!("a {} KV cache cannot hold rows of {} values", s.format.name(), s.kv_dim)
        })?;
        ensure_shape(s.src_offset + s.kv_dim <= s.src_stride, "kv_append", || {
            format!("kv_dim {} at offset {} must fit rows of {}", s.kv_dim, s.src_offset, s.src_stride)
        })?;
        need("kv_append", "src", src, s.tokens * s.src_stride * 4)?;
        ensure_shape(s.tokens <= s.slots, "kv_append", || {
            format!("{} tokens would overwrite each other in a cache of {} slots", s.tokens, s.slots)
        })?;
        need("kv_append", "cache", cache, s.slots * s.format.row_bytes(s.kv_dim))?;
        let params = KvAppendParams {
            tokens: u32_of("kv_append", "tokens", s.tokens)?,
            kv_dim: u32_of("kv_append", "kv_dim", s.kv_dim)?,
            src_stride: u32_of("kv_append", "src_stride", s.src_stride)?,
            src_offset: u32_of("kv_append", "src_offset", s.src_offset)?,
            slots: u32_of("kv_append", "slots", s.slots)?,
            _pad: [0; 3],
        };
        // One thread per f16 pair, or per block of 32 values.
        let threads = match s.format {
            KvFormat::F16 => s.tokens * s.kv_dim / 2,
            KvFormat::Q8 => s.tokens * s.kv_dim / KvFormat::Q8_BLOCK,
        };
        let pipeline = &self.kv_append[kv_index(s.format)];
        Ok(self.dispatch(
            "kv_append",
            pipeline,
            &params,
            &[(1, step), (2, src), (3, cache)],
            vec![],
            self.grid(threads.div_ceil(64)),
        ))
    }

    /// attention.wgsl for a cache format, specialised for multi-head attention
    /// (`mha`) or not; compiled the first time it is asked for.
    fn attention_pipeline(&self, format: KvFormat, mha: bool) -> &wgpu::ComputePipeline {
        self.attention[kv_index(format)][mha as usize].get_or_init(|| {
            let cache_reads = match format {
                KvFormat::F16 => include_str!("../../shaders/kv_f16.wgsl"),
                KvFormat::Q8 => include_str!("../../shaders/kv_q8.wgsl"),
            };
            let group: &[(&str, f64)] = if mha { &[("GROUP", 1.0)] } else { &[] };
            let parts = [cache_reads, include_str!("../../shaders/attention.wgsl")];
            compile(&self.device, &format!("attention_{}", format.name()), &parts, "main", group)
        })
    }

    /// out [T, heads * head_dim] = causal softmax(q k^T * scale) v over the
    /// caches, as two dispatches: the split pass and the combine pass.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        step: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        scratch: &AttentionScratch,
        out: &wgpu::Buffer,
        s: &AttentionShape,
    ) -> Result<[Dispatch; 2]> {
        const WG: usize = 64; // attention.wgsl: threads per workgroup, 4 dims each
        ensure_shape(s.head_dim.is_multiple_of(4) && s.head_dim > 0 && s.head_dim <= 4 * WG, "attention", || {
            format!("head_dim {} must be a multiple of 4 and <= {}", s.head_dim, 4 * WG)
        })?;
        ensure_shape(s.kv_format.supports(s.kv_heads * s.head_dim), "attention", || {
            format!("a {} KV cache cannot hold rows of {} values", s.kv_format.name(), s.kv_heads * s.head_dim)
        })?;
        ensure_shape(s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads), "attention", || {
            format!("{} query heads cannot share {} KV heads", s.heads, s.kv_heads)
        })?;
        // attention.wgsl: MAX_GROUP query heads per KV head, their queries in MAX_Q_QUADS vec4s.
        let group = s.heads / s.kv_heads;
        ensure_shape(group <= 8 && group * s.head_dim <= 1024, "attention", || {
            format!("{group} query heads of {} per KV head (at most 8, and 1024 values)", s.head_dim)
        })?;
        ensure_shape(s.heads * s.head_dim <= s.q_stride, "attention", || {
            format!("{} heads of {} overflow query rows of {}", s.heads, s.head_dim, s.q_stride)
        })?;
        ensure_shape(
            s.splits >= 1 && s.splits as u32 <= self.max_groups && s.tokens as u32 <= self.max_groups,
            "attention",
            || format!("{} splits x {} tokens exceed the dispatch limit", s.splits, s.tokens),
        )?;
        need("attention", "q", q, s.tokens * s.q_stride * 4)?;
        ensure_shape(s.slots > 0, "attention", || "a KV cache of 0 slots".into())?;
        let cache_bytes = s.slots * s.kv_format.row_bytes(s.kv_heads * s.head_dim);
        need("attention", "k_cache", k_cache, cache_bytes)?;
        need("attention", "v_cache", v_cache, cache_bytes)?;
        let slots = s.tokens * s.heads * s.splits;
        need("attention", "scratch partials", &scratch.acc, slots * s.head_dim * 4)?;
        need("attention", "scratch stats", &scratch.ml, slots * 8)?;
        need("attention", "out", out, s.tokens * s.heads * s.head_dim * 4)?;
        let params = AttentionParams {
            tokens: u32_of("attention", "tokens", s.tokens)?,
            heads: u32_of("attention", "heads", s.heads)?,
            kv_heads: u32_of("attention", "kv_heads", s.kv_heads)?,
            head_dim: u32_of("attention", "head_dim", s.head_dim)?,
            q_stride: u32_of("attention", "q_stride", s.q_stride)?,
            window: u32_of("attention", "window", s.window)?,
            splits: u32_of("attention", "splits", s.splits)?,
            scale: s.scale,
            slots: u32_of("attention", "slots", s.slots)?,
            _pad: [0; 3],
        };
        let split_pass = self.dispatch(
            "attention",
            self.attention_pipeline(s.kv_format, group == 1),
            &params,
            &[(1, step), (2, q), (3, k_cache), (4, v_cache), (5, &scratch.acc), (6, &scratch.ml)],
            vec![],
            [s.splits as u32, s.kv_heads as u32, s.tokens as u32],
        );
        let combine_params = params4(params.tokens, params.heads, params.head_dim, params.splits);
        let combine = self.dispatch(
            "attention_combine",
            &self.attention_combine,
            &combine_params,
            &[(1, &scratch.acc), (2, &scratch.ml), (3, out)],
            vec![],
            [s.heads as u32, s.tokens as u32, 1],
        );
        Ok([split_pass, combine])
    }

    /// out [T, I] = silu(gate) * up, with gate_up [T, 2I] (gate first).
    pub fn silu_mul(
        &self,
        gate_up: &wgpu::Buffer,
        out: &wgpu::Buffer,
        tokens: usize,
        intermediate: usize,
    ) -> Result<Dispatch> {
        need("silu_mul", "gate_up", gate_up, tokens * intermediate * 8)?;
        need("silu_mul", "out", out, tokens * intermediate * 4)?;
        let params =
            params4(u32_of("silu_mul", "tokens", tokens)?, u32_of("silu_mul", "intermediate", intermediate)?, 0, 0);
        Ok(self.dispatch(
            "silu_mul",
            &self.silu_mul,
            &params,
            &[(1, gate_up), (2, out)],
            vec![],
            self.grid((tokens * intermediate).div_ceil(256)),
        ))
    }

    /// GELU in place on the first `n` values of `x`.
    pub fn gelu(&self, x: &wgpu::Buffer, n: usize, kind: GeluKind) -> Result<Dispatch> {
        need("gelu", "x", x, n * 4)?;
        let pipeline = match kind {
            GeluKind::Erf => &self.gelu_erf,
            GeluKind::Tanh => &self.gelu_tanh,
        };
        Ok(self.dispatch(
            "gelu",
            pipeline,
            &params4(u32_of("gelu", "n", n)?, 0, 0, 0),
            &[(1, x)],
            vec![],
            self.grid(n.div_ceil(256)),
        ))
    }

    /// a += b over `n` values (the residual connection).
    pub fn add(&self, a: &wgpu::Buffer, b: &wgpu::Buffer, n: usize) -> Result<Dispatch> {
        need("add", "a", a, n * 4)?;
        need("add", "b", b, n * 4)?;
        Ok(self.dispatch(
            "add",
            &self.add,
            &params4(u32_of("add", "n", n)?, 0, 0, 0),
            &[(1, a), (2, b)],
            vec![],
            self.grid(n.div_ceil(256)),
        ))
    }

    /// y[r, offset..offset + cols] += b for each row r of y [rows, stride].
    pub fn bias_add(
        &self,
        y: &wgpu::Buffer,
        b: &wgpu::Buffer,
        rows: usize,
        out: OutputSlice,
        cols: usize,
    ) -> Result<Dispatch> {
        ensure_shape(out.offset + cols <= out.stride, "bias_add", || {
            format!("{cols} values at offset {} overflow rows of {}", out.offset, out.stride)
        })?;
        need("bias_add", "y", y, rows * out.stride * 4)?;
        need("bias_add", "b", b, cols * 4)?;
        let params = params4(
            u32_of("bias_add", "rows", rows)?,
            u32_of("bias_add", "cols", cols)?,
            u32_of("bias_add", "stride", out.stride)?,
            u32_of("bias_add", "offset", out.offset)?,
        );
        Ok(self.dispatch(
            "bias_add",
            &self.bias_add,
            &params,
            &[(1, y), (2, b)],
            vec![],
            self.grid((rows * cols).div_ceil(256)),
        ))
    }

    /// out [T, heads * head_dim] = softmax(q k^T * scale) v within each
    /// token's sequence, for sequences packed back to back in qkv [T, 3 *
    /// heads * head_dim]; segments [T] holds each token's (start, end).
    pub fn encoder_attention(
        &self,
        qkv: &wgpu::Buffer,
        segments: &wgpu::Buffer,
        out: &wgpu::Buffer,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Dispatch> {
        let width = heads * head_dim;
        need("encoder_attention", "qkv", qkv, tokens * 3 * width * 4)?;
        need("encoder_attention", "segments", segments, tokens * 8)?;
        need("encoder_attention", "out", out, tokens * width * 4)?;
        ensure_shape(tokens as u32 <= self.max_groups && heads as u32 <= self.max_groups, "encoder_attention", || {
            format!("{tokens} tokens x {heads} heads exceed the dispatch limit")
        })?;
        let params = EncoderAttentionParams {
            tokens: u32_of("encoder_attention", "tokens", tokens)?,
            heads: u32_of("encoder_attention", "heads", heads)?,
            head_dim: u32_of("encoder_attention", "head_dim", head_dim)?,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        Ok(self.dispatch(
            "encoder_attention",
            &self.encoder_attention,
            &params,
            &[(1, qkv), (2, segments), (3, out)],
            vec![],
            [heads as u32, tokens as u32, 1],
        ))
    }

    /// Softmax in place over each row of x [rows, cols].
    pub fn softmax(&self, x: &wgpu::Buffer, rows: usize, cols: usize) -> Result<Dispatch> {
        need("softmax", "x", x, rows * cols * 4)?;
        let params = params4(u32_of("softmax", "rows", rows)?, u32_of("softmax", "cols", cols)?, 0, 0);
        Ok(self.dispatch("softmax", &self.softmax, &params, &[(1, x)], vec![], self.grid(rows)))
    }

    /// out [rows] (u32) = index of each row's maximum of x [rows, cols].
    pub fn argmax(&self, x: &wgpu::Buffer, out: &wgpu::Buffer, rows: usize, cols: usize) -> Result<Dispatch> {
        need("argmax", "x", x, rows * cols * 4)?;
        need("argmax", "out", out, rows * 4)?;
        let params = params4(u32_of("argmax", "rows", rows)?, u32_of("argmax", "cols", cols)?, 0, 0);
        Ok(self.dispatch("argmax", &self.argmax, &params, &[(1, x), (2, out)], vec![], self.grid(rows)))
    }
}
