//! The one error type of phi-web. Every variant names what it is about (the
//! tensor, the limit, the shape) so that a message reaching JavaScript is
//! something a person can act on.

/// Everything that can go wrong in phi-web.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no GPU adapter found ({backends}); on Debian/Ubuntu install the CPU Vulkan driver: apt-get install mesa-vulkan-drivers libvulkan1; in a browser, WebGPU must be enabled")]
    NoAdapter { backends: String },

    #[error("the GPU device could not be created on {adapter}: {message}")]
    DeviceRequest { adapter: String, message: String },

    #[error("the GPU device was lost ({reason}): {message}; create the engine again (in JavaScript: engine.reload())")]
    DeviceLost { reason: String, message: String },

    #[error("GPU error in {context}: {message}")]
    Gpu { context: String, message: String },

    #[error("{what} needs {needed} bytes but this GPU allows at most {limit} ({limit_name})")]
    GpuLimit { what: String, needed: u64, limit: u64, limit_name: &'static str },

    #[error("shader {shader} failed to compile: {message}")]
    Shader { shader: String, message: String },

    #[error("reading back {what} from the GPU failed: {message}")]
    Readback { what: String, message: String },

    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },

    #[error("{format} data for {what}: {message}")]
    Quant { format: &'static str, what: String, message: String },

    #[error("{path}: {message}")]
    Io { path: String, message: String },

    /// A file that is not what it claims to be: wrong magic, truncated,
    /// malformed JSON, impossible sizes.
    #[error("{file}: {message}")]
    Format { file: String, message: String },

    #[error("unsupported {what}; supported: {supported}")]
    Unsupported { what: String, supported: String },

    /// A GPU memory budget that cannot hold the resident weights plus the
    /// smallest expert cache (each layer's experts-per-token experts).
    #[error("a GPU memory budget of {budget} bytes is too small: the resident weights take {resident} bytes and the smallest expert cache ({per_token} experts of {expert} bytes in each of {layers} layers) {cache} more; allow at least {needed} bytes", cache = layers * per_token * expert, needed = resident + layers * per_token * expert)]
    GpuMemoryBudget { budget: u64, resident: u64, expert: u64, per_token: u64, layers: u64 },

    /// A model the CPU backend cannot hold in wasm32's address space.
    #[error("the CPU backend needs {needed} bytes for this model ({weights} of weights, {kv_cache} of KV cache) but WebAssembly (wasm32) addresses at most {limit}; use WebGPU, a smaller model or quantization, or a shorter contextLength")]
    WasmMemory { needed: u64, weights: u64, kv_cache: u64, limit: u64 },

    /// A model configuration that is missing a key or disagrees with the weights.
    #[error("model config: {message}")]
    Config { message: String },

    /// An image that cannot be decoded or used: a corrupt or unsupported
    /// file, an impossible size.
    #[error("image: {message}")]
    Image { message: String },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> Error {
        Error::Io { path: path.display().to_string(), message: e.to_string() }
    }

    /// The `name` a JavaScript `Error` carries for this error.
    pub fn js_name(&self) -> &'static str {
        match self {
            Error::NoAdapter { .. } => "NoWebGPUError",
            Error::DeviceRequest { .. } | Error::DeviceLost { .. } => "DeviceLostError",
            Error::Gpu { .. } | Error::GpuLimit { .. } | Error::Shader { .. } | Error::Readback { .. } => "GPUError",
            Error::Shape { .. } => "InputError",
            Error::Quant { .. } | Error::Io { .. } | Error::Format { .. } => "ModelFormatError",
            Error::Unsupported { .. } => "UnsupportedError",
            Error::Config { .. } => "ModelConfigError",
            Error::GpuMemoryBudget { .. } => "MemoryBudgetError",
            Error::WasmMemory { .. } => "ModelTooLargeError",
            Error::Image { .. } => "ImageError",
        }
    }

    pub(crate) fn format(file: impl std::fmt::Display, message: impl Into<String>) -> Error {
        Error::Format { file: file.to_string(), message: message.into() }
    }
}

/// phi-web's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shape check helper: `ensure_shape(cond, "matvec", || format!(...))`.
pub(crate) fn ensure_shape(ok: bool, op: &'static str, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Shape { op, message: message() })
    }
}
