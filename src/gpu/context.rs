//! The GPU context: adapter and device negotiation, buffers, submission and
//! readback. One async code path for native wgpu and the browser's WebGPU;
//! natively the futures are driven by `pollster::block_on`.

use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

/// What the caller may ask of the device. The defaults use every feature the
/// adapter has; switching a feature off forces the portable kernel path (this
/// is how tests exercise the path SwiftShader and many real devices take).
#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub power_preference: wgpu::PowerPreference,
    /// Use `shader-f16` kernels when the adapter has the feature.
    pub allow_f16: bool,
    /// Use subgroup kernels when the adapter has the feature.
    pub allow_subgroups: bool,
    /// Tile sizes of the matrix kernels; `None` picks by adapter.
    pub tuning: Option<KernelTuning>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            power_preference: wgpu::PowerPreference::HighPerformance,
            allow_f16: true,
            allow_subgroups: true,
            tuning: None,
        }
    }
}

/// Which tile sizes the matrix kernels use (tuning.rs: `Tuning`): lavapipe
/// and WARP gather every buffer load lane by lane and want large register
/// tiles; SwiftShader runs small tiles; GPUs want many small workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelTuning {
    /// Software rasterisers that compile register tiles well (lavapipe, WARP).
    Cpu,
    /// Other software rasterisers (SwiftShader).
    Software,
    /// Hardware GPUs.
    Gpu,
}

impl KernelTuning {
    pub fn for_adapter(adapter: &AdapterSummary) -> KernelTuning {
        let name = adapter.name.to_lowercase();
        // A fallback adapter (device type Cpu) keeps the CPU tiles it always had.
        if adapter.device_type == "Cpu" || ["llvmpipe", "lavapipe", "warp"].iter().any(|n| name.contains(n)) {
            KernelTuning::Cpu
        } else if adapter.is_software() {
            KernelTuning::Software
        } else {
            KernelTuning::Gpu
        }
    }
}

/// Optional device features, as negotiated (adapter has it AND options allow it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuFeatures {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
}

/// Who we run on, for logs, bug reports and the demo page.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub driver: String,
    pub device_type: String,
}

impl AdapterSummary {
    /// A software rasterizer (lavapipe/llvmpipe, SwiftShader, WARP): WGSL
    /// emulated on the CPU's cores.
    pub fn is_software(&self) -> bool {
        let name = self.name.to_lowercase();
        self.device_type == "Cpu" || ["llvmpipe", "lavapipe", "swiftshader", "warp"].iter().any(|n| name.contains(n))
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}, {})", self.name, self.backend, self.device_type, self.driver)
    }
}

/// The first asynchronous failure the device reported (loss or an uncaptured
/// validation error); surfaced by [`Gpu::check`] instead of panicking.
type Fault = Arc<Mutex<Option<Error>>>;

/// A device and its queue, plus what we learnt about them.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub features: GpuFeatures,
    pub limits: wgpu::Limits,
    pub tuning: KernelTuning,
    fault: Fault,
    /// Bytes of storage buffers created so far (weights, scratch, KV cache).
    storage_bytes: std::sync::atomic::AtomicU64,
    /// Timestamp queries over submits while a benchmark times them (timer.rs).
    pub(super) timer: Mutex<Option<super::timer::Timer>>,
}

impl Gpu {
    /// Opens the best adapter with its real limits (the WebGPU defaults, e.g. a
    /// 128 MiB storage binding, are far below what a model needs).
    pub async fn new(options: &GpuOptions) -> Result<Gpu> {
        let backends =
            if cfg!(target_arch = "wasm32") { wgpu::Backends::BROWSER_WEBGPU } else { wgpu::Backends::PRIMARY };
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = backends;
        let instance = wgpu::Instance::new(descriptor);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: options.power_preference,
                ..Default::default()
            })
            .await
            .map_err(|_| Error::NoAdapter { backends: format!("{backends:?}") })?;

        let info = adapter.get_info();
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            driver: if info.driver_info.is_empty() {
                info.driver.clone()
            } else {
                format!("{} {}", info.driver, info.driver_info)
            },
            device_type: format!("{:?}", info.device_type),
        };

        let available = adapter.features();
        let features = GpuFeatures {
            shader_f16: options.allow_f16 && available.contains(wgpu::Features::SHADER_F16),
            subgroups: options.allow_subgroups && available.contains(wgpu::Features::SUBGROUP),
            timestamps: available.contains(wgpu::Features::TIMESTAMP_QUERY),
        };
        let mut required = wgpu::Features::empty();
        required.set(wgpu::Features::SHADER_F16, features.shader_f16);
        required.set(wgpu::Features::SUBGROUP, features.subgroups);
        required.set(wgpu::Features::TIMESTAMP_QUERY, features.timestamps);

        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("phi-web"),
                required_features: required,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::DeviceRequest { adapter: summary.to_string(), message: e.to_string() })?;

        // wgpu's default for an uncaptured error is to panic; record it instead.
        let fault: Fault = Arc::new(Mutex::new(None));
        let on_lost = fault.clone();
        device.set_device_lost_callback(move |reason, message| {
            record(&on_lost, Error::DeviceLost { reason: format!("{reason:?}"), message });
        });
        let on_error = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            record(&on_error, Error::Gpu { context: "uncaptured".into(), message: e.to_string() });
        }));

        let tuning = options.tuning.unwrap_or_else(|| KernelTuning::for_adapter(&summary));
        Ok(Gpu {
            device,
            queue,
            adapter: summary,
            features,
            limits,
            tuning,
            fault,
            storage_bytes: Default::default(),
            timer: Mutex::default(),
        })
    }

    /// The first device loss or uncaptured GPU error since the last check, if
    /// any. A lost device stays lost: every later check reports it again.
    pub fn check(&self) -> Result<()> {
        match self.fault.lock() {
            Ok(mut slot) => match slot.take() {
                Some(Error::DeviceLost { reason, message }) => {
                    *slot = Some(Error::DeviceLost { reason: reason.clone(), message: message.clone() });
                    Err(Error::DeviceLost { reason, message })
                }
                Some(err) => Err(err),
                None => Ok(()),
            },
            Err(_) => Err(Error::Gpu { context: "fault slot".into(), message: "poisoned lock".into() }),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what
    /// they catch into an [`Error::Gpu`] naming `context`.
    pub async fn scoped<T>(&self, context: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let invalid = validation.pop().await;
        let out_of_memory = oom.pop().await;
        match invalid.or(out_of_memory) {
            Some(e) => Err(Error::Gpu { context: context.to_string(), message: e.to_string() }),
            None => Ok(value),
        }
    }

    /// Fails with a readable error if `size` bytes exceed what one buffer or
    /// one storage binding may hold on this device.
    pub fn check_buffer_size(&self, what: &str, size: u64) -> Result<()> {
        self.check_max_buffer_size(what, size)?;
        let binding = self.limits.max_storage_buffer_binding_size;
        if size > binding {
            return Err(Error::GpuLimit {
                what: what.into(),
                needed: size,
                limit: binding,
                limit_name: "maxStorageBufferBindingSize",
            });
        }
        Ok(())
    }

    fn check_max_buffer_size(&self, what: &str, size: u64) -> Result<()> {
        match size > self.limits.max_buffer_size {
            true => Err(Error::GpuLimit {
                what: what.into(),
                needed: size,
                limit: self.limits.max_buffer_size,
                limit_name: "maxBufferSize",
            }),
            false => Ok(()),
        }
    }

    /// A zeroed storage buffer of `size` bytes (rounded up to 4).
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(4).next_multiple_of(4);
        self.check_buffer_size(label, size)?;
        Ok(self.unchecked_storage(label, size))
    }

    /// A zeroed storage buffer of `size` bytes that is only ever bound in
    /// ranges (a matrix: payload, then scales), each of which the caller
    /// has checked against maxStorageBufferBindingSize: the whole may exceed it.
    pub fn ranged_storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(4).next_multiple_of(4);
        self.check_max_buffer_size(label, size)?;
        Ok(self.unchecked_storage(label, size))
    }

    fn unchecked_storage(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.storage_bytes.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `bytes` (padded to a multiple of 4).
    pub fn storage_with(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        self.check_buffer_size(label, bytes.len() as u64)?;
        let mut padded;
        let contents = if bytes.len().is_multiple_of(4) && !bytes.is_empty() {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(bytes.len().max(4).next_multiple_of(4), 0);
            &padded
        };
        self.storage_bytes.fetch_add(contents.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        }))
    }

    /// GPU memory in storage (and readback) buffers created through this
    /// context so far.
    pub fn storage_bytes(&self) -> u64 {
        self.storage_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A uniform buffer holding one `Pod` value (kernel parameters).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Records `dispatches` into one compute pass of one encoder and submits it.
    pub fn run(&self, dispatches: &[&super::Dispatch]) -> wgpu::SubmissionIndex {
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("phi-web run") });
        {
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            for d in dispatches {
                d.encode(&mut pass);
            }
        }
        self.queue.submit([encoder.finish()])
    }

    /// Blocks (natively) until the queue is idle; a no-op in the browser,
    /// where the event loop drives the GPU.
    pub fn wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu { context: "waiting for the queue".into(), message: e.to_string() })?;
        self.check()
    }

    /// A buffer the GPU copies results into and the CPU maps ([`Gpu::read_mapped_f32`]).
    pub fn readback_buffer(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(4).next_multiple_of(4);
        self.check_buffer_size(label, size)?;
        self.storage_bytes.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// Reads `len` f32 values from a readback buffer that submitted work
    /// has copied into (no staging buffer, no extra submit).
    pub async fn read_mapped_f32(&self, what: &str, staging: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let bytes = self.map_and_copy(what, staging, 4 * len as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// `read_mapped_f32` for u32 values (a token id picked on the GPU).
    pub async fn read_mapped_u32(&self, what: &str, staging: &wgpu::Buffer, len: usize) -> Result<Vec<u32>> {
        let bytes = self.map_and_copy(what, staging, 4 * len as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Maps the first `size` bytes of `staging`, copies them out and unmaps.
    async fn map_and_copy(&self, what: &str, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let (sender, receiver) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, ..size, move |r| {
            let _ = sender.send(r);
        });
        self.wait()?;
        let mapped = receiver
            .await
            .map_err(|_| Error::Readback { what: what.into(), message: "the map callback was dropped".into() })?;
        if let Err(e) = mapped {
            // A lost device fails every mapping; say so rather than "map failed".
            self.check()?;
            return Err(Error::Readback { what: what.into(), message: e.to_string() });
        }
        let bytes = staging
            .get_mapped_range(..size)
            .map_err(|e| Error::Readback { what: what.into(), message: e.to_string() })?
            .to_vec();
        staging.unmap();
        self.check()?;
        Ok(bytes)
    }

    /// Copies `size` bytes from the start of `buffer` back to the CPU.
    pub async fn read_bytes(&self, what: &str, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let size = size.next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        self.map_and_copy(what, &staging, size).await
    }

    /// Reads `len` f32 values from the start of `buffer`.
    pub async fn read_f32(&self, what: &str, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(what, buffer, 4 * len as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[..4 * len]))
    }

    /// Reads `len` u32 values from the start of `buffer`.
    pub async fn read_u32(&self, what: &str, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<u32>> {
        let bytes = self.read_bytes(what, buffer, 4 * len as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[..4 * len]))
    }
}

fn record(fault: &Fault, err: Error) {
    if let Ok(mut slot) = fault.lock() {
        slot.get_or_insert(err);
    }
}
