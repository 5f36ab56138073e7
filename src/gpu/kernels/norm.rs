//! Row normalisations: RMSNorm (Phi-3, Llama), with the residual add folded
//! in or not, and LayerNorm (BERT, the MoE).

use bytemuck::{Pod, Zeroable};

use super::{need, u32_of, Kernels, Variant, LAYER_NORM, RMS_NORM};
use crate::error::Result;
use crate::gpu::Dispatch;

/// rms_norm.wgsl and layer_norm.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

fn norm_params(op: &'static str, rows: usize, cols: usize, eps: f32) -> Result<NormParams> {
    Ok(NormParams { rows: u32_of(op, "rows", rows)?, cols: u32_of(op, "cols", cols)?, eps, _pad: 0 })
}

impl Kernels {
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
        self.rms_norm_variant("rms_norm", x, w, y, rows, cols, eps, false)
    }

    /// x [rows, cols] += h, then h = RMSNorm(x) * w: a block's residual add
    /// folded into the next norm.
    pub fn add_rms_norm(
        &self,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
        w: &wgpu::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Dispatch> {
        self.rms_norm_variant("add_rms_norm", x, w, h, rows, cols, eps, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn rms_norm_variant(
        &self,
        op: &'static str,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
        residual: bool,
    ) -> Result<Dispatch> {
        need(op, "x", x, rows * cols * 4)?;
        need(op, "w", w, cols * 4)?;
        need(op, "y", y, rows * cols * 4)?;
        let params = norm_params(op, rows, cols, eps)?;
        let variant = Variant { residual, ..Default::default() };
        Ok(self.dispatch(&RMS_NORM, variant, &params, &[(1, x), (2, w), (3, y)], vec![], self.grid(rows)))
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
        let params = norm_params("layer_norm", rows, cols, eps)?;
        let buffers = [(1, x), (2, w), (3, b), (4, y)];
        Ok(self.dispatch(&LAYER_NORM, Variant::default(), &params, &buffers, vec![], self.grid(rows)))
    }
}
