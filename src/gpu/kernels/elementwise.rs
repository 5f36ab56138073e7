//! Element-wise and row-wise kernels: SiLU·mul, gegelu, GELU, the residual
//! add, scaling, softmax and argmax (greedy decoding's pick on the GPU);
//! and the memory-read probe of `phi-web bench-gpu`.

use bytemuck::{Pod, Zeroable};

use super::{
    need, u32_of, Kernels, Variant, ADD, ARGMAX, GEGELU, GELU, READ_BANDWIDTH, SCALE, SILU_MUL, SOFTMAX, SPLICE_ROWS,
};
use crate::error::Result;
use crate::gpu::shapes::GeluKind;
use crate::gpu::Dispatch;

/// silu_mul.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SiluMulParams {
    tokens: u32,
    intermediate: u32,
    _pad: [u32; 2],
}

/// gegelu.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GegeluParams {
    tokens: u32,
    intermediate: u32,
    limit: f32,
    _pad: u32,
}

/// scale.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ScaleParams {
    n: u32,
    s: f32,
    _pad: [u32; 2],
}

/// add.wgsl and gelu.wgsl: `Params` (a count of values).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CountParams {
    n: u32,
    _pad: [u32; 3],
}

/// softmax.wgsl, argmax.wgsl and splice_rows.wgsl: `Params` (rows of cols).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RowsParams {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

impl Kernels {
    /// out [workgroups] = the XOR of the 16-byte words of `data` each
    /// workgroup read (a grid-stride walk over all of them, `workgroups` of
    /// 256 invocations): a read-bandwidth probe whose result can be checked.
    pub fn read_bandwidth(&self, data: &wgpu::Buffer, out: &wgpu::Buffer, workgroups: usize) -> Result<Dispatch> {
        let words = data.size() / 16;
        need("read_bandwidth", "out", out, workgroups * 4)?;
        let params = CountParams { n: u32_of("read_bandwidth", "words", words as usize)?, _pad: [0; 3] };
        let groups = self.grid(workgroups);
        crate::error::ensure_shape(groups[0] as usize * groups[1] as usize == workgroups, "read_bandwidth", || {
            format!("{workgroups} workgroups do not fill a grid of {:?}", groups)
        })?;
        Ok(self.dispatch(&READ_BANDWIDTH, Variant::default(), &params, &[(1, data), (2, out)], vec![], groups))
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
        let params = SiluMulParams {
            tokens: u32_of("silu_mul", "tokens", tokens)?,
            intermediate: u32_of("silu_mul", "intermediate", intermediate)?,
            _pad: [0; 2],
        };
        let groups = self.grid_for(&SILU_MUL, tokens * intermediate);
        Ok(self.dispatch(&SILU_MUL, Variant::default(), &params, &[(1, gate_up), (2, out)], vec![], groups))
    }

    /// out [T, I] = gegelu(gate, linear) with gate_up [T, 2I] (gate first)
    /// and both clamped by `limit` (None: not clamped).
    pub fn gegelu(
        &self,
        gate_up: &wgpu::Buffer,
        out: &wgpu::Buffer,
        tokens: usize,
        intermediate: usize,
        limit: Option<f32>,
    ) -> Result<Dispatch> {
        need("gegelu", "gate_up", gate_up, tokens * intermediate * 8)?;
        need("gegelu", "out", out, tokens * intermediate * 4)?;
        let params = GegeluParams {
            tokens: u32_of("gegelu", "tokens", tokens)?,
            intermediate: u32_of("gegelu", "intermediate", intermediate)?,
            // f32::MAX, not infinity: WGSL may assume no infinities.
            limit: limit.unwrap_or(f32::MAX),
            _pad: 0,
        };
        let groups = self.grid_for(&GEGELU, tokens * intermediate);
        Ok(self.dispatch(&GEGELU, Variant::default(), &params, &[(1, gate_up), (2, out)], vec![], groups))
    }

    /// x *= s over the first `n` values.
    pub fn scale(&self, x: &wgpu::Buffer, n: usize, s: f32) -> Result<Dispatch> {
        need("scale", "x", x, n * 4)?;
        let params = ScaleParams { n: u32_of("scale", "n", n)?, s, _pad: [0; 2] };
        Ok(self.dispatch(&SCALE, Variant::default(), &params, &[(1, x)], vec![], self.grid_for(&SCALE, n)))
    }

    /// GELU in place on the first `n` values of `x`.
    pub fn gelu(&self, x: &wgpu::Buffer, n: usize, kind: GeluKind) -> Result<Dispatch> {
        need("gelu", "x", x, n * 4)?;
        let entry = match kind {
            GeluKind::Erf => "gelu_erf",
            GeluKind::Tanh => "gelu_tanh",
            GeluKind::Quick => "gelu_quick",
        };
        let params = CountParams { n: u32_of("gelu", "n", n)?, _pad: [0; 3] };
        let variant = Variant { entry: Some(entry), ..Default::default() };
        Ok(self.dispatch(&GELU, variant, &params, &[(1, x)], vec![], self.grid_for(&GELU, n)))
    }

    /// a += b over `n` values (the residual connection).
    pub fn add(&self, a: &wgpu::Buffer, b: &wgpu::Buffer, n: usize) -> Result<Dispatch> {
        need("add", "a", a, n * 4)?;
        need("add", "b", b, n * 4)?;
        let params = CountParams { n: u32_of("add", "n", n)?, _pad: [0; 3] };
        Ok(self.dispatch(&ADD, Variant::default(), &params, &[(1, a), (2, b)], vec![], self.grid_for(&ADD, n)))
    }

    /// x [T, width] row t = rows row t where flags[t] != 0 (image rows over token embeddings).
    pub fn splice_rows(
        &self,
        flags: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        x: &wgpu::Buffer,
        tokens: usize,
        width: usize,
    ) -> Result<Dispatch> {
        need("splice_rows", "flags", flags, tokens * 4)?;
        need("splice_rows", "rows", rows, tokens * width * 4)?;
        need("splice_rows", "x", x, tokens * width * 4)?;
        let params = RowsParams {
            rows: u32_of("splice_rows", "tokens", tokens)?,
            cols: u32_of("splice_rows", "width", width)?,
            _pad: [0; 2],
        };
        let grid = self.grid_for(&SPLICE_ROWS, tokens * width);
        Ok(self.dispatch(&SPLICE_ROWS, Variant::default(), &params, &[(1, flags), (2, rows), (3, x)], vec![], grid))
    }

    /// Softmax in place over each row of x [rows, cols].
    pub fn softmax(&self, x: &wgpu::Buffer, rows: usize, cols: usize) -> Result<Dispatch> {
        need("softmax", "x", x, rows * cols * 4)?;
        let params =
            RowsParams { rows: u32_of("softmax", "rows", rows)?, cols: u32_of("softmax", "cols", cols)?, _pad: [0; 2] };
        Ok(self.dispatch(&SOFTMAX, Variant::default(), &params, &[(1, x)], vec![], self.grid(rows)))
    }

    /// out [rows] (u32) = index of each row's maximum of x [rows, cols] (the
    /// first on ties).
    pub fn argmax(&self, x: &wgpu::Buffer, out: &wgpu::Buffer, rows: usize, cols: usize) -> Result<Dispatch> {
        need("argmax", "x", x, rows * cols * 4)?;
        need("argmax", "out", out, rows * 4)?;
        let params =
            RowsParams { rows: u32_of("argmax", "rows", rows)?, cols: u32_of("argmax", "cols", cols)?, _pad: [0; 2] };
        Ok(self.dispatch(&ARGMAX, Variant::default(), &params, &[(1, x), (2, out)], vec![], self.grid(rows)))
    }
}
