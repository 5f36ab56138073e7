//! Shared harness of the GPU kernel tests, native and in the browser: the
//! device, a seeded generator, and a comparison that prints index / got /
//! expected.
#![allow(dead_code)] // each test binary uses part of it

pub mod checks;
#[cfg(not(target_arch = "wasm32"))]
pub mod models;

use phi_web::backend::{Backend, Buf, GpuBackend, Op};
use phi_web::gpu::{Dispatch, Gpu, GpuOptions, Kernels};

/// The GPU backend the tests run on (models load through `backend`).
pub struct Env {
    pub backend: Backend,
}

/// The device every native test of a binary shares, with every feature the
/// adapter has. Fails (never skips) without an adapter; the error names the
/// package to install.
#[cfg(not(target_arch = "wasm32"))]
pub fn env() -> &'static Env {
    static ENV: std::sync::OnceLock<Env> = std::sync::OnceLock::new();
    ENV.get_or_init(|| pollster::block_on(Env::open(GpuOptions::default())))
}

/// A second native device restricted to the portable kernels (no
/// shader-f16, no subgroups): the path SwiftShader and many real devices
/// take, with the GPU tile sizes (the default device here has the CPU ones).
#[cfg(not(target_arch = "wasm32"))]
pub fn portable_env() -> &'static Env {
    static ENV: std::sync::OnceLock<Env> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        pollster::block_on(Env::open(GpuOptions {
            allow_f16: false,
            allow_subgroups: false,
            tuning: Some(phi_web::gpu::KernelTuning::Gpu),
            ..Default::default()
        }))
    })
}

/// The CPU backend the model tests also run on (one per test binary), as an
/// Env for the backend-neutral checks.
#[cfg(not(target_arch = "wasm32"))]
pub fn cpu_env() -> &'static Env {
    static CPU: std::sync::OnceLock<Env> = std::sync::OnceLock::new();
    CPU.get_or_init(|| Env { backend: Backend::Cpu(phi_web::cpu::Cpu::new(None)) })
}

/// The CPU backend in the browser (wasm simd128, the page's one thread).
#[cfg(target_arch = "wasm32")]
pub fn cpu_env() -> &'static Env {
    thread_local! {
        static CPU: &'static Env = Box::leak(Box::new(Env { backend: Backend::Cpu(phi_web::cpu::Cpu::new(None)) }));
    }
    CPU.with(|cpu| *cpu)
}

pub fn cpu() -> &'static Backend {
    &cpu_env().backend
}

impl Env {
    pub async fn open(options: GpuOptions) -> Env {
        let gpu = Gpu::new(&options).await.unwrap_or_else(|e| panic!("{e}"));
        let kernels = Kernels::new(&gpu);
        log(&format!("GPU tests run on {} with {:?}, {} kernels", gpu.adapter, gpu.features, kernels.variant()));
        Env { backend: Backend::Gpu(GpuBackend { gpu, kernels }) }
    }

    pub fn gpu(&self) -> &Gpu {
        match &self.backend {
            Backend::Gpu(g) => &g.gpu,
            Backend::Cpu(_) => unreachable!("Env is built on the GPU"),
        }
    }

    pub fn kernels(&self) -> &Kernels {
        match &self.backend {
            Backend::Gpu(g) => &g.kernels,
            Backend::Cpu(_) => unreachable!("Env is built on the GPU"),
        }
    }

    pub fn upload_f32(&self, label: &str, values: &[f32]) -> wgpu::Buffer {
        self.gpu().storage_with(label, bytemuck::cast_slice(values)).unwrap()
    }

    pub fn upload_u32(&self, label: &str, values: &[u32]) -> wgpu::Buffer {
        self.gpu().storage_with(label, bytemuck::cast_slice(values)).unwrap()
    }

    pub fn zeros(&self, label: &str, floats: usize) -> wgpu::Buffer {
        self.gpu().storage(label, 4 * floats as u64).unwrap()
    }

    /// Submits the dispatches as one pass (natively, also waits).
    pub fn run(&self, dispatches: &[&Dispatch]) {
        self.gpu().run(dispatches);
        self.gpu().wait().unwrap();
    }

    pub async fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Vec<f32> {
        self.gpu().read_f32("test output", buffer, len).await.unwrap()
    }

    pub async fn read_u32(&self, buffer: &wgpu::Buffer, len: usize) -> Vec<u32> {
        self.gpu().read_u32("test output", buffer, len).await.unwrap()
    }

    // The same through the backend (GPU or CPU), for the checks of ops both have.

    pub fn buf_f32(&self, label: &str, values: &[f32]) -> Buf {
        self.backend.storage_with(label, bytemuck::cast_slice(values)).unwrap()
    }

    pub fn buf_zeros(&self, label: &str, floats: usize) -> Buf {
        self.backend.storage(label, 4 * floats as u64).unwrap()
    }

    /// Runs backend ops in order (on the GPU, as one submission, then waits).
    pub fn exec(&self, ops: Vec<Op>) {
        let commands = self.backend.commands(ops).unwrap();
        self.backend.run(&commands).unwrap();
        if let Backend::Gpu(g) = &self.backend {
            g.gpu.wait().unwrap();
        }
    }

    pub async fn read_buf_f32(&self, buffer: &Buf, len: usize) -> Vec<f32> {
        self.backend.read_f32("test output", buffer, len).await.unwrap()
    }

    pub async fn read_buf_u32(&self, buffer: &Buf, len: usize) -> Vec<u32> {
        self.read_buf_f32(buffer, len).await.into_iter().map(f32::to_bits).collect()
    }
}

/// A line for the test log: stderr natively, the console in the browser.
pub fn log(line: &str) {
    #[cfg(target_arch = "wasm32")]
    wasm_bindgen_test::console_log!("{line}");
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{line}");
}

/// xorshift64*: small, seeded, the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Checks |got - expected| <= atol + rtol * scale[i] for every i, where
/// `scale` is the magnitude the error is relative to (e.g. sum |w_k x_k| of
/// a dot product). Prints and returns the largest absolute error.
pub fn assert_close(what: &str, got: &[f32], expected: &[f64], scale: &[f64], atol: f64, rtol: f64) -> f64 {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let mut max_err = 0.0f64;
    for i in 0..got.len() {
        let err = (got[i] as f64 - expected[i]).abs();
        let tol = atol + rtol * scale[i];
        assert!(
            err <= tol && got[i].is_finite(),
            "{what}: index {i}: got {}, expected {}, |error| {err:.3e} > tolerance {tol:.3e}",
            got[i],
            expected[i]
        );
        max_err = max_err.max(err);
    }
    log(&format!("max error | {what} | {max_err:.3e}"));
    max_err
}

/// `assert_close` with the scale being |expected|.
pub fn assert_close_rel(what: &str, got: &[f32], expected: &[f64], atol: f64, rtol: f64) -> f64 {
    let scale: Vec<f64> = expected.iter().map(|v| v.abs()).collect();
    assert_close(what, got, expected, &scale, atol, rtol)
}
