//! The device layer: real limits, feature negotiation, and GPU failures
//! turned into errors instead of panics.
#![cfg(not(target_arch = "wasm32"))]

use phi_web::gpu::{Gpu, GpuOptions};
use phi_web::Error;

fn open(options: GpuOptions) -> Gpu {
    pollster::block_on(Gpu::new(&options)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn device_gets_the_adapters_real_limits() {
    let gpu = open(GpuOptions::default());
    eprintln!("adapter: {}", gpu.adapter);
    let defaults = wgpu::Limits::default();
    let device = gpu.device.limits();
    assert_eq!(device.max_buffer_size, gpu.limits.max_buffer_size);
    assert_eq!(device.max_storage_buffer_binding_size, gpu.limits.max_storage_buffer_binding_size);
    // Any real adapter exceeds WebGPU's default 256 MiB buffer limit.
    assert!(
        device.max_buffer_size > defaults.max_buffer_size,
        "max_buffer_size {} is only the default",
        device.max_buffer_size
    );
    assert!(!gpu.adapter.name.is_empty() && !gpu.adapter.backend.is_empty());
}

#[test]
fn features_can_be_turned_off_for_the_portable_path() {
    let gpu = open(GpuOptions { allow_f16: false, allow_subgroups: false, ..Default::default() });
    assert!(!gpu.features.shader_f16 && !gpu.features.subgroups);
    assert!(!gpu.device.features().contains(wgpu::Features::SHADER_F16));
    assert!(!gpu.device.features().contains(wgpu::Features::SUBGROUP));
}

#[test]
fn validation_errors_become_errors_not_panics() {
    let gpu = open(GpuOptions::default());
    let bad_buffer = || {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("misaligned"),
            size: 6, // mapped at creation needs a multiple of 4
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: true,
        })
    };
    let scoped = pollster::block_on(gpu.scoped("creating a misaligned buffer", bad_buffer));
    match scoped {
        Err(Error::Gpu { context, .. }) => assert_eq!(context, "creating a misaligned buffer"),
        other => panic!("expected a scoped GPU error, got {:?}", other.map(|_| ())),
    }
    // Outside any scope the error is recorded and reported by the next check.
    let _ = bad_buffer();
    let err = gpu.check().unwrap_err();
    assert!(err.to_string().contains("GPU error in uncaptured"), "{err}");
    assert!(gpu.check().is_ok(), "the fault is reported once");
}

#[test]
fn device_loss_is_reported() {
    let gpu = open(GpuOptions::default());
    gpu.device.destroy();
    let err = gpu.wait().unwrap_err();
    assert!(matches!(err, Error::DeviceLost { .. }), "{err}");
    assert!(err.to_string().contains("create the engine again"), "{err}");
    // A lost device stays lost, and a readback says so rather than "map failed".
    assert!(matches!(gpu.check(), Err(Error::DeviceLost { .. })));
    let buffer = gpu.storage("after loss", 16).unwrap();
    let err = pollster::block_on(gpu.read_f32("after loss", &buffer, 4)).unwrap_err();
    assert!(matches!(err, Error::DeviceLost { .. }), "{err}");
}
