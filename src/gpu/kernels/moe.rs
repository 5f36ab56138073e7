//! Mixture-of-experts kernels (PhiMoE): sparsemixer routing on the GPU, the
//! grouping of a chunk's (token, expert) pairs by expert, the expert matrices
//! over a stack of every expert's weights (a decode step reads only the
//! selected experts' rows; a prefill chunk reads each expert once per tile of
//! its tokens), and the weighted combine into the residual. Nothing is read
//! back: the expert ids stay on the GPU.

use bytemuck::{Pod, Zeroable};

use super::{
    need, u32_of, Kernels, Variant, MOE_COMBINE, MOE_GROUP, MOE_MATMUL, MOE_MATMUL_REGISTERS, MOE_MATVEC, MOE_ROUTE,
};
use crate::config::MAX_EXPERTS;
use crate::error::{ensure_shape, Result};
use crate::gpu::shapes::OutputSlice;
use crate::gpu::tuning::WORKGROUP_TILE;
use crate::gpu::{Dispatch, Matrix};
use crate::quant;

/// Bytes of one moe.wgsl `Route` (expert id, weight).
pub const ROUTE_BYTES: usize = 8;

/// moe_route.wgsl: `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MoeRouteParams {
    tokens: u32,
    experts: u32,
    threshold: f32,
    _pad: u32,
}

/// moe_group.wgsl and moe_combine.wgsl: `Params` (two counts and a width).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MoeCountParams {
    a: u32,
    b: u32,
    c: u32,
    _pad: u32,
}

/// moe.wgsl: `ExpertParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ExpertParams {
    rows: u32,
    cols: u32,
    pairs: u32,
    per_token: u32,
    x_per_pair: u32,
    y_stride: u32,
    y_offset: u32,
    experts: u32,
}

/// Where a chunk's routing lives: the routes of its pairs and, for prefill,
/// the pairs grouped by expert.
#[derive(Clone, Copy)]
pub struct Routing<'a> {
    pub routes: &'a wgpu::Buffer, // [P] Route
    pub groups: &'a wgpu::Buffer, // [E] (first slot in order, pairs)
    pub order: &'a wgpu::Buffer,  // [P] pair indices, by expert
    pub tokens: usize,
    pub per_token: usize,
}

/// A stack of E experts' [rows, cols] matrices, one [E * rows, cols] Matrix.
pub struct ExpertStack<'a> {
    pub matrix: &'a Matrix,
    pub experts: usize,
}

/// Which rows of X a pair reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertInput {
    /// X [T, K]: the token's row (w1, w3).
    Token,
    /// X [P, K]: the pair's own row (w2 over the activations).
    Pair,
}

impl Kernels {
    /// routes [T, 2] = sparsemixer top-2 of the router logits [T, E].
    pub fn moe_route(
        &self,
        logits: &wgpu::Buffer,
        routes: &wgpu::Buffer,
        tokens: usize,
        experts: usize,
        jitter: f32,
    ) -> Result<Dispatch> {
        ensure_shape((2..=MAX_EXPERTS).contains(&experts), "moe_route", || {
            format!("{experts} experts; the routing takes 2 to {MAX_EXPERTS}")
        })?;
        need("moe_route", "logits", logits, tokens * experts * 4)?;
        need("moe_route", "routes", routes, tokens * 2 * ROUTE_BYTES)?;
        let params = MoeRouteParams {
            tokens: u32_of("moe_route", "tokens", tokens)?,
            experts: experts as u32,
            threshold: 2.0 * jitter,
            _pad: 0,
        };
        let groups = self.grid_for(&MOE_ROUTE, tokens);
        Ok(self.dispatch(&MOE_ROUTE, Variant::default(), &params, &[(1, logits), (2, routes)], vec![], groups))
    }

    /// Groups the pairs of `routing` by expert (prefill's moe_matmul reads them).
    pub fn moe_group(&self, routing: &Routing<'_>, experts: usize) -> Result<Dispatch> {
        let pairs = routing.tokens * routing.per_token;
        need("moe_group", "routes", routing.routes, pairs * ROUTE_BYTES)?;
        need("moe_group", "groups", routing.groups, experts * 8)?;
        need("moe_group", "order", routing.order, pairs * 4)?;
        let params = MoeCountParams { a: u32_of("moe_group", "pairs", pairs)?, b: experts as u32, c: 0, _pad: 0 };
        let buffers = [(1, routing.routes), (2, routing.groups), (3, routing.order)];
        Ok(self.dispatch(&MOE_GROUP, Variant::default(), &params, &buffers, vec![], [1, 1, 1]))
    }

    /// Y [P, out] = each pair's expert of `stack` times its row of X, written
    /// into the slice `out` of each pair's row: the matrix×vector kernel for
    /// one token, the grouped tiled kernel for more (after `moe_group`), in
    /// the workgroup-memory or the register tiling as the adapter's tuning says.
    pub fn expert_linear(
        &self,
        stack: &ExpertStack<'_>,
        routing: &Routing<'_>,
        input: ExpertInput,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        out: OutputSlice,
    ) -> Result<Dispatch> {
        let (w, experts) = (stack.matrix, stack.experts);
        ensure_shape(experts > 0 && w.rows.is_multiple_of(experts), "expert_linear", || {
            format!("{} rows do not split into {experts} experts", w.rows)
        })?;
        let rows = w.rows / experts;
        ensure_shape(w.cols.is_multiple_of(quant::BLOCK), "expert_linear", || {
            format!("experts need widths that are whole {}-column blocks; got {}", quant::BLOCK, w.cols)
        })?;
        ensure_shape(out.offset + rows <= out.stride, "expert_linear", || {
            format!("{rows} outputs at offset {} overflow rows of {}", out.offset, out.stride)
        })?;
        let (tokens, per_token) = (routing.tokens, routing.per_token);
        let pairs = tokens * per_token;
        ensure_shape(pairs > 0, "expert_linear", || "0 pairs".into())?;
        let x_rows = if input == ExpertInput::Pair { pairs } else { tokens };
        need("expert_linear", "x", x, x_rows * w.cols * 4)?;
        need("expert_linear", "y", y, ((pairs - 1) * out.stride + out.offset + rows) * 4)?;
        need("expert_linear", "routes", routing.routes, pairs * ROUTE_BYTES)?;
        let params = ExpertParams {
            rows: rows as u32,
            cols: u32_of("expert_linear", "cols", w.cols)?,
            pairs: u32_of("expert_linear", "pairs", pairs)?,
            per_token: per_token as u32,
            x_per_pair: (input == ExpertInput::Pair) as u32,
            y_stride: u32_of("expert_linear", "stride", out.stride)?,
            y_offset: u32_of("expert_linear", "offset", out.offset)?,
            experts: experts as u32,
        };
        let variant = Variant { weights: Some(w.format), ..Default::default() };
        if tokens == 1 {
            let groups = [rows.div_ceil(self.tuning.matvec_rows_per_wg(MOE_MATVEC.wg)) as u32, pairs as u32, 1];
            let buffers = [(1, x), (2, y), (3, routing.routes)];
            return Ok(self.dispatch(&MOE_MATVEC, variant, &params, &buffers, w.bind_entries(), groups));
        }
        need("expert_linear", "groups", routing.groups, experts * 8)?;
        need("expert_linear", "order", routing.order, pairs * 4)?;
        // An expert takes each token at most once: its pairs fill at most T slots.
        let (shader, (tile_rows, tile_tokens)) = match self.tuning.matmul_registers {
            true => (&MOE_MATMUL_REGISTERS, self.tuning.register_tile(MOE_MATMUL_REGISTERS.wg)),
            false => (&MOE_MATMUL, WORKGROUP_TILE),
        };
        let (row_tiles, token_tiles) = (rows.div_ceil(tile_rows), tokens.div_ceil(tile_tokens));
        ensure_shape(row_tiles <= self.max_groups as usize, "expert_linear", || {
            format!("{rows} rows are too many for one dispatch")
        })?;
        let groups = [row_tiles as u32, token_tiles as u32, experts as u32];
        let buffers = [(1, x), (2, y), (3, routing.groups), (4, routing.order)];
        Ok(self.dispatch(shader, variant, &params, &buffers, w.bind_entries(), groups))
    }

    /// x [T, H] += the routes' weighted sum of expert_out [P, H].
    pub fn moe_combine(
        &self,
        routing: &Routing<'_>,
        expert_out: &wgpu::Buffer,
        x: &wgpu::Buffer,
        hidden: usize,
    ) -> Result<Dispatch> {
        let (tokens, per_token) = (routing.tokens, routing.per_token);
        need("moe_combine", "routes", routing.routes, tokens * per_token * ROUTE_BYTES)?;
        need("moe_combine", "expert_out", expert_out, tokens * per_token * hidden * 4)?;
        need("moe_combine", "x", x, tokens * hidden * 4)?;
        let params = MoeCountParams {
            a: u32_of("moe_combine", "tokens", tokens)?,
            b: u32_of("moe_combine", "hidden", hidden)?,
            c: per_token as u32,
            _pad: 0,
        };
        let groups = self.grid_for(&MOE_COMBINE, tokens * hidden);
        let buffers = [(1, routing.routes), (2, expert_out), (3, x)];
        Ok(self.dispatch(&MOE_COMBINE, Variant::default(), &params, &buffers, vec![], groups))
    }
}
