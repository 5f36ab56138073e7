//! Matrix kernels: Y = X W^T (+ b) in every weight format (matvec for one
//! token, the tiled matmul for more, matmul_any for rows that are not whole
//! 32-column blocks) and embedding lookups.

use bytemuck::{Pod, Zeroable};

use super::{need, u32_of, Kernels, Shader, Variant};
use super::{EMBEDDING, EMBEDDING_ANY, MATMUL_ANY, MATMUL_REGISTERS, MATMUL_WORKGROUP, MATVEC, MATVEC_SUBGROUP};
use crate::error::{ensure_shape, Result};
use crate::gpu::shapes::OutputSlice;
use crate::gpu::tuning::WORKGROUP_TILE;
use crate::gpu::{Dispatch, Matrix};
use crate::quant;

/// matrix.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatrixParams {
    rows: u32,
    cols: u32,
    tokens: u32,
    y_stride: u32,
    y_offset: u32,
    bias_offset: u32,
    _pad: [u32; 2],
}

impl MatrixParams {
    /// W's shape, `tokens` rows of input, outputs into the slice `out`.
    fn new(op: &'static str, w: &Matrix, tokens: usize, out: OutputSlice, bias_offset: usize) -> Result<MatrixParams> {
        ensure_shape(out.offset + w.rows <= out.stride, op, || {
            format!("{} outputs at offset {} overflow rows of {}", w.rows, out.offset, out.stride)
        })?;
        Ok(MatrixParams {
            rows: u32_of(op, "rows", w.rows)?,
            cols: u32_of(op, "cols", w.cols)?,
            tokens: u32_of(op, "tokens", tokens)?,
            y_stride: u32_of(op, "stride", out.stride)?,
            y_offset: u32_of(op, "offset", out.offset)?,
            bias_offset: u32_of(op, "bias offset", bias_offset)?,
            _pad: [0; 2],
        })
    }
}

/// embedding_params.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmbeddingParams {
    rows: u32,
    cols: u32,
    tokens: u32,
    first_row: u32,
}

/// A bias added in the matrix kernel's epilogue: output feature n of the
/// matrix gets `buffer[offset + n]` (offset: the first row of a row chunk).
#[derive(Clone, Copy, Debug)]
pub struct Bias<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
}

impl Kernels {
    /// y [N] = W [N, K] x [K], one token (decode).
    pub fn matvec(&self, w: &Matrix, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Result<Dispatch> {
        self.linear(w, x, y, 1, OutputSlice::whole(w.rows))
    }

    /// Y [T, N] = X [T, K] W [N, K]^T.
    pub fn matmul(&self, w: &Matrix, x: &wgpu::Buffer, y: &wgpu::Buffer, tokens: usize) -> Result<Dispatch> {
        self.linear(w, x, y, tokens, OutputSlice::whole(w.rows))
    }

    /// Y = X W^T for `tokens` rows of X [T, K], written into the slice `out`
    /// of each row of y.
    pub fn linear(
        &self,
        w: &Matrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        tokens: usize,
        out: OutputSlice,
    ) -> Result<Dispatch> {
        self.linear_with_bias(w, None, x, y, tokens, out)
    }

    /// `linear` plus a bias in the same dispatch: the matrix×vector kernel
    /// for one token (decode), the tiled matrix×matrix kernel for more
    /// (prefill), the any-shape kernel for rows that are not whole blocks.
    pub fn linear_with_bias(
        &self,
        w: &Matrix,
        bias: Option<Bias<'_>>,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        tokens: usize,
        out: OutputSlice,
    ) -> Result<Dispatch> {
        ensure_shape(tokens > 0, "linear", || "0 tokens".into())?;
        let params = MatrixParams::new("linear", w, tokens, out, bias.map_or(0, |b| b.offset))?;
        need("linear", "x", x, tokens * w.cols * 4)?;
        need("linear", "y", y, ((tokens - 1) * out.stride + out.offset + w.rows) * 4)?;
        if let Some(b) = bias {
            need("linear", "bias", b.buffer, (b.offset + w.rows) * 4)?;
        }
        let variant = Variant { weights: Some(w.format), bias: bias.is_some(), ..Default::default() };
        let mut bindings = vec![(1, x), (2, y)];
        if let Some(b) = bias {
            bindings.push((3, b.buffer));
        }
        let (shader, groups) = if !w.cols.is_multiple_of(quant::BLOCK) {
            (&MATMUL_ANY, self.grid_for(&MATMUL_ANY, tokens * w.rows))
        } else if tokens == 1 {
            self.matvec_grid(w)
        } else {
            let (shader, (tile_rows, tile_tokens)) = match self.tuning.matmul_registers {
                true => (&MATMUL_REGISTERS, self.tuning.register_tile(MATMUL_REGISTERS.wg)),
                false => (&MATMUL_WORKGROUP, WORKGROUP_TILE),
            };
            let (row_tiles, token_tiles) = (w.rows.div_ceil(tile_rows), tokens.div_ceil(tile_tokens));
            ensure_shape(
                row_tiles <= self.max_groups as usize && token_tiles <= self.max_groups as usize,
                "matmul",
                || format!("[{tokens} x {}] is too large for one dispatch", w.rows),
            )?;
            (shader, [row_tiles as u32, token_tiles as u32, 1])
        };
        Ok(self.dispatch(shader, variant, &params, &bindings, w.bind_entries(), groups))
    }

    /// y [N] = W [N, K] (silu(gate) * up) for one token, with gate_up [2K]
    /// (gate first): a down projection that reads the MLP's activation from
    /// the gate_up projection directly (input_silu_mul.wgsl), one dispatch
    /// instead of silu_mul then matvec. Written into the slice `out` of y.
    pub fn matvec_after_silu_mul(
        &self,
        w: &Matrix,
        gate_up: &wgpu::Buffer,
        y: &wgpu::Buffer,
        out: OutputSlice,
    ) -> Result<Dispatch> {
        ensure_shape(w.cols.is_multiple_of(quant::BLOCK), "matvec_after_silu_mul", || {
            format!("{} columns are not whole {}-column blocks", w.cols, quant::BLOCK)
        })?;
        let params = MatrixParams::new("matvec_after_silu_mul", w, 1, out, 0)?;
        need("matvec_after_silu_mul", "gate_up", gate_up, 2 * w.cols * 4)?;
        need("matvec_after_silu_mul", "y", y, (out.offset + w.rows) * 4)?;
        let variant = Variant { weights: Some(w.format), silu_input: true, ..Default::default() };
        let (shader, groups) = self.matvec_grid(w);
        Ok(self.dispatch(shader, variant, &params, &[(1, gate_up), (2, y)], w.bind_entries(), groups))
    }

    /// The decode matvec kernel for this device and its grid over w's rows.
    fn matvec_grid(&self, w: &Matrix) -> (&'static Shader, [u32; 3]) {
        let (shader, rows_per_wg) = match self.subgroups {
            true => (&MATVEC_SUBGROUP, self.tuning.matvec_subgroup_rows),
            false => (&MATVEC, self.tuning.matvec_rows_per_wg(self.tuning.matvec_wg)),
        };
        (shader, self.grid(w.rows.div_ceil(rows_per_wg)))
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
        let params = EmbeddingParams {
            rows: u32_of("embedding", "rows", table.rows)?,
            cols: u32_of("embedding", "cols", table.cols)?,
            tokens: u32_of("embedding", "tokens", tokens)?,
            first_row: u32_of("embedding", "first_row", first_row)?,
        };
        let (shader, items) = match table.cols.is_multiple_of(quant::BLOCK) {
            true => (&EMBEDDING, tokens * table.cols / quant::BLOCK),
            false => (&EMBEDDING_ANY, tokens * table.cols),
        };
        let variant = Variant { weights: Some(table.format), ..Default::default() };
        let groups = self.grid_for(shader, items);
        Ok(self.dispatch(shader, variant, &params, &[(1, ids), (2, out)], table.bind_entries(), groups))
    }
}
