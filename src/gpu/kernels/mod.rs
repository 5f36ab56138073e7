//! One typed function per WGSL kernel, grouped by family ([`matrix`],
//! [`norm`], [`attention`], [`elementwise`], [`moe`]). Each mirrors its shader's
//! `Params` struct (the Rust struct is named after the shader), checks shapes
//! against buffer sizes (a wrong shape is an error, not an out-of-bounds
//! read), and returns a replayable [`Dispatch`].
//!
//! Pipelines are compiled lazily, keyed by shader and variant (weight format,
//! bias, KV format, specialisation): a model compiles exactly what its
//! command lists use, the first time it records them (at load, see
//! `Decoder::load_from`). A shader's source is `common.wgsl`, then the
//! variant's readers (`weights_{format}.wgsl`, `bias_{none,f32}.wgsl`,
//! `kv_{format}.wgsl`), then the shader's own preludes, then tuning constants,
//! then the op; shaders/README.md writes the rules down.

mod attention;
mod elementwise;
mod matrix;
mod moe;
mod norm;

use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::Pod;

pub use matrix::Bias;
pub use moe::{ExpertInput, ExpertStack, Routing, ROUTE_BYTES};

use super::shapes::KvFormat;
use super::tuning::Tuning;
use super::{Dispatch, Gpu, KernelTuning};
use crate::error::{ensure_shape, Error, Result};
use crate::quant::WeightFormat;

/// Longest sequence encoder_attention takes (encoder_attention.wgsl: MAX_KEYS).
pub const ENCODER_MAX_KEYS: usize = 1024;

const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const REDUCE: &str = include_str!("../../../shaders/reduce.wgsl");
const MATRIX: &str = include_str!("../../../shaders/matrix.wgsl");
const EMBEDDING_PARAMS: &str = include_str!("../../../shaders/embedding_params.wgsl");
const MOE: &str = include_str!("../../../shaders/moe.wgsl");
const KV_APPEND_PARAMS: &str = include_str!("../../../shaders/kv_append_params.wgsl");

/// Tuning knobs a shader takes besides its workgroup size (src/gpu/tuning.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Knobs {
    None,
    Matvec,
    MatvecSubgroup,
    MatmulRegisters,
    Attention,
}

/// A WGSL kernel: its file, the preludes it is concatenated after, and its
/// workgroup size — the one source of truth, passed to the shader as
/// `override WG` and used for its grid.
#[derive(Debug)]
pub(super) struct Shader {
    name: &'static str,
    source: &'static str,
    preludes: &'static [&'static str],
    /// Matrix kernels: a bias reader (bias_f32 or bias_none) goes first.
    bias_reader: bool,
    /// matvec*.wgsl: an input reader (input_f32 or input_silu_mul) goes first.
    input_reader: bool,
    knobs: Knobs,
    pub wg: usize,
}

macro_rules! shader {
    ($name:literal, $wg:expr, [$($prelude:expr),*], $knobs:expr) => {
        shader!($name, $wg, [$($prelude),*], $knobs, bias_reader: false, input_reader: false)
    };
    ($name:literal, $wg:expr, [$($prelude:expr),*], $knobs:expr, bias_reader: $bias:expr) => {
        shader!($name, $wg, [$($prelude),*], $knobs, bias_reader: $bias, input_reader: false)
    };
    ($name:literal, $wg:expr, [$($prelude:expr),*], $knobs:expr, bias_reader: $bias:expr, input_reader: $input:expr) => {
        Shader {
            name: $name,
            source: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
            preludes: &[$($prelude),*],
            bias_reader: $bias,
            input_reader: $input,
            knobs: $knobs,
            wg: $wg,
        }
    };
}

static MATVEC: Shader = shader!("matvec", 64, [MATRIX], Knobs::Matvec, bias_reader: true, input_reader: true);
static MATVEC_SUBGROUP: Shader =
    shader!("matvec_subgroup", 64, [MATRIX], Knobs::MatvecSubgroup, bias_reader: true, input_reader: true);
static MATMUL_REGISTERS: Shader = shader!("matmul_registers", 64, [MATRIX], Knobs::MatmulRegisters, bias_reader: true);
static MATMUL_WORKGROUP: Shader = shader!("matmul_workgroup", 256, [MATRIX], Knobs::None, bias_reader: true);
static MATMUL_ANY: Shader = shader!("matmul_any", 64, [MATRIX], Knobs::None, bias_reader: true);
static EMBEDDING: Shader = shader!("embedding", 64, [EMBEDDING_PARAMS], Knobs::None);
static EMBEDDING_ANY: Shader = shader!("embedding_any", 64, [EMBEDDING_PARAMS], Knobs::None);
static RMS_NORM: Shader = shader!("rms_norm", 256, [REDUCE], Knobs::None);
static LAYER_NORM: Shader = shader!("layer_norm", 256, [REDUCE], Knobs::None);
static ROPE: Shader = shader!("rope", 64, [], Knobs::None);
const KV_APPEND_F16: Shader = shader!("kv_append_f16", 64, [KV_APPEND_PARAMS], Knobs::None);
const KV_APPEND_Q8: Shader = shader!("kv_append_q8", 64, [KV_APPEND_PARAMS], Knobs::None);
const KV_APPEND_F32: Shader = shader!("kv_append_f32", 64, [KV_APPEND_PARAMS], Knobs::None);
static ATTENTION: Shader = shader!("attention", 64, [], Knobs::Attention);
static ATTENTION_COMBINE: Shader = shader!("attention_combine", 64, [], Knobs::None);
static ENCODER_ATTENTION: Shader = shader!("encoder_attention", 64, [REDUCE], Knobs::None);
static SILU_MUL: Shader = shader!("silu_mul", 256, [], Knobs::None);
static GEGELU: Shader = shader!("gegelu", 256, [], Knobs::None);
static SCALE: Shader = shader!("scale", 256, [], Knobs::None);
static GELU: Shader = shader!("gelu", 256, [], Knobs::None);
static ADD: Shader = shader!("add", 256, [], Knobs::None);
static SPLICE_ROWS: Shader = shader!("splice_rows", 256, [], Knobs::None);
static SOFTMAX: Shader = shader!("softmax", 256, [REDUCE], Knobs::None);
static ARGMAX: Shader = shader!("argmax", 256, [REDUCE], Knobs::None);
static READ_BANDWIDTH: Shader = shader!("read_bandwidth", 256, [], Knobs::None);
static MOE_ROUTE: Shader = shader!("moe_route", 64, [MOE], Knobs::None);
static MOE_GROUP: Shader = shader!("moe_group", 1, [MOE], Knobs::None);
static MOE_MATVEC: Shader = shader!("moe_matvec", 64, [MOE], Knobs::Matvec);
static MOE_MATMUL: Shader = shader!("moe_matmul", 256, [MOE], Knobs::None);
static MOE_MATMUL_REGISTERS: Shader = shader!("moe_matmul_registers", 64, [MOE], Knobs::MatmulRegisters);
static MOE_COMBINE: Shader = shader!("moe_combine", 256, [MOE], Knobs::None);

/// What besides the shader a pipeline depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Variant {
    /// The weights_{format}.wgsl reader (matrix kernels, embedding).
    weights: Option<WeightFormat>,
    /// bias_f32.wgsl instead of bias_none.wgsl (matrix kernels).
    bias: bool,
    /// The kv_{format}.wgsl reader (attention).
    kv: Option<KvFormat>,
    /// attention: query heads per KV head when specialised (1: MHA), else 0.
    group: u32,
    /// The entry point, when not `main` (gelu_erf, gelu_tanh).
    entry: Option<&'static str>,
    /// attention: the block-sparse pattern (`override SPARSE`).
    sparse: bool,
    /// rms_norm: the residual add folded in (`override RESIDUAL`).
    residual: bool,
    /// matvec*: x = silu(gate) * up read from a fused gate_up (input_silu_mul.wgsl).
    silu_input: bool,
}

fn weights_reader(format: WeightFormat) -> &'static str {
    match format {
        WeightFormat::F32 => include_str!("../../../shaders/weights_f32.wgsl"),
        WeightFormat::F16 => include_str!("../../../shaders/weights_f16.wgsl"),
        WeightFormat::Q4_0 => include_str!("../../../shaders/weights_q4_0.wgsl"),
        WeightFormat::Q4_1 => include_str!("../../../shaders/weights_q4_1.wgsl"),
        WeightFormat::Q8_0 => include_str!("../../../shaders/weights_q8_0.wgsl"),
    }
}

fn kv_reader(format: KvFormat) -> &'static str {
    match format {
        KvFormat::F16 => include_str!("../../../shaders/kv_f16.wgsl"),
        KvFormat::Q8 => include_str!("../../../shaders/kv_q8.wgsl"),
        KvFormat::F32 => include_str!("../../../shaders/kv_f32.wgsl"),
    }
}

/// The kernels of one device over a lazy pipeline cache.
pub struct Kernels {
    device: wgpu::Device,
    max_groups: u32,
    class: KernelTuning,
    tuning: Tuning,
    subgroups: bool,
    /// Compiled pipelines by (shader name, variant).
    pipelines: Mutex<HashMap<(&'static str, Variant), wgpu::ComputePipeline>>,
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
    /// The kernels for `gpu`; nothing is compiled until a kernel is first
    /// used (shader errors then reach `Gpu::check`).
    pub fn new(gpu: &Gpu) -> Kernels {
        Kernels {
            device: gpu.device.clone(),
            max_groups: gpu.limits.max_compute_workgroups_per_dimension,
            class: gpu.tuning,
            tuning: Tuning::of(gpu.tuning),
            // On lavapipe the subgroup matvec measured 2-3x slower than the
            // portable one with the same tiles (`phi-web bench-gpu`, q4_0 and
            // q4_1); CPU adapters take the portable kernel.
            subgroups: gpu.features.subgroups && gpu.tuning != KernelTuning::Cpu,
            pipelines: Mutex::default(),
        }
    }

    /// The kernels for `gpu` with other tile sizes (the tuning sweep of
    /// `phi-web bench-gpu`, the tests of every variant); `subgroups: false`
    /// takes the portable matvec on a device that has subgroups.
    pub fn with_tuning(gpu: &Gpu, tuning: Tuning, subgroups: bool) -> Result<Kernels> {
        let wg = tuning.matvec_wg;
        let problem = if wg == 0 || wg > gpu.limits.max_compute_invocations_per_workgroup as usize {
            Some(format!(
                "a workgroup of {wg} exceeds the device's {}",
                gpu.limits.max_compute_invocations_per_workgroup
            ))
        } else if tuning.matvec_lanes == 0 || !wg.is_multiple_of(tuning.matvec_lanes) {
            Some(format!("{} lanes do not divide a workgroup of {wg}", tuning.matvec_lanes))
        } else if tuning.matvec_rows_per_thread == 0
            || !tuning.matvec_subgroup_rows.is_multiple_of(tuning.matvec_rows_per_thread)
            || tuning.matvec_subgroup_rows == 0
        {
            Some(format!(
                "{} subgroup rows are not whole groups of {} rows",
                tuning.matvec_subgroup_rows, tuning.matvec_rows_per_thread
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            return Err(Error::Shape { op: "kernel tuning", message });
        }
        Ok(Kernels { tuning, subgroups: subgroups && gpu.features.subgroups, ..Kernels::new(gpu) })
    }

    /// Which kernel variants this device runs ("portable" or "subgroups",
    /// with CPU, software or GPU tiles).
    pub fn variant(&self) -> String {
        let matvec = if self.subgroups { "subgroups" } else { "portable" };
        format!("{matvec}, {:?} tiles", self.class)
    }

    /// Whether a down projection's decode matvec computes silu(gate) * up as
    /// it reads it ([`Kernels::matvec_after_silu_mul`]): on the GPU tiles,
    /// where recomputing the activations per workgroup is cheap beside the
    /// weight reads and saves a dispatch per layer; CPU adapters keep silu_mul.
    pub fn fuses_silu_into_matvec(&self) -> bool {
        self.class == KernelTuning::Gpu
    }

    /// Whether decode matvecs use the subgroup kernel.
    pub fn subgroups(&self) -> bool {
        self.subgroups
    }

    /// The tile sizes in use.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// The workgroup size `shader` is compiled with: the matvec kernels'
    /// comes from the tuning, every other's from its `Shader`.
    fn wg(&self, shader: &Shader) -> usize {
        match std::ptr::eq(shader, &MATVEC) || std::ptr::eq(shader, &MATVEC_SUBGROUP) {
            true => self.tuning.matvec_wg,
            false => shader.wg,
        }
    }

    /// Pipelines compiled so far.
    pub fn compiled(&self) -> usize {
        self.pipelines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The pipeline of `shader` in `variant`, compiled on first use.
    fn pipeline(&self, shader: &'static Shader, variant: Variant) -> wgpu::ComputePipeline {
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        pipelines.entry((shader.name, variant)).or_insert_with(|| self.compile(shader, variant)).clone()
    }

    fn compile(&self, shader: &Shader, variant: Variant) -> wgpu::ComputePipeline {
        // Browsers' WGSL compilers want the extension enabled; naga (natively)
        // rejects the directive it has not implemented and needs none.
        let mut source = match shader.knobs {
            Knobs::MatvecSubgroup if cfg!(target_arch = "wasm32") => format!("enable subgroups;\n{COMMON}"),
            _ => String::from(COMMON),
        };
        let mut label = shader.name.to_string();
        let mut push = |part: &str| {
            source.push('\n');
            source.push_str(part);
        };
        if let Some(format) = variant.weights {
            push(weights_reader(format));
            label += &format!("_{}", format.name());
        }
        if shader.bias_reader {
            push(match variant.bias {
                true => include_str!("../../../shaders/bias_f32.wgsl"),
                false => include_str!("../../../shaders/bias_none.wgsl"),
            });
        }
        if shader.input_reader {
            push(match variant.silu_input {
                true => include_str!("../../../shaders/input_silu_mul.wgsl"),
                false => include_str!("../../../shaders/input_f32.wgsl"),
            });
            if variant.silu_input {
                label += "_silu_mul";
            }
        }
        if let Some(format) = variant.kv {
            push(kv_reader(format));
            label += &format!("_{}", format.name());
        }
        shader.preludes.iter().for_each(|p| push(p));
        let t = &self.tuning;
        let mut constants = vec![("WG", self.wg(shader) as f64)];
        match shader.knobs {
            Knobs::None => {}
            Knobs::Matvec => {
                push(&t.matvec_constants());
                constants.push(("LANES", t.matvec_lanes as f64));
            }
            Knobs::MatvecSubgroup => {
                push(&t.matvec_constants());
                constants.push(("ROWS_PER_WG", t.matvec_subgroup_rows as f64));
            }
            Knobs::MatmulRegisters => {
                push(&t.matmul_constants());
                constants.push(("WG_ROWS", t.matmul_wg_rows as f64));
            }
            Knobs::Attention => {
                if variant.group > 0 {
                    constants.push(("GROUP", variant.group as f64));
                }
                if variant.sparse {
                    constants.push(("SPARSE", 1.0));
                }
            }
        }
        if variant.residual {
            constants.push(("RESIDUAL", 1.0));
        }
        push(shader.source);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some(variant.entry.unwrap_or("main")),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
            cache: None,
        })
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

    /// The grid of `shader` with one invocation per item.
    fn grid_for(&self, shader: &Shader, items: usize) -> [u32; 3] {
        self.grid(items.div_ceil(shader.wg))
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch<P: Pod>(
        &self,
        shader: &'static Shader,
        variant: Variant,
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        extra: Vec<wgpu::BindGroupEntry<'_>>,
        workgroups: [u32; 3],
    ) -> Dispatch {
        use wgpu::util::DeviceExt;
        let pipeline = self.pipeline(shader, variant);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(shader.name),
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
            label: Some(shader.name),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch { label: shader.name, pipeline, bind_group, workgroups }
    }
}
