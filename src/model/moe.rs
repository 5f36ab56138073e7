//! The sparse mixture-of-experts block that replaces PhiMoE's MLP:
//! `block_sparse_moe` in `modeling_phimoe.py`. A router scores the experts,
//! sparsemixer picks two per token with their weights, each picked expert
//! runs `w2(silu(w1 x) * w3 x)`, and the weighted outputs are added into the
//! residual. Every expert of a layer lives in one stacked matrix per
//! projection, so the kernels pick experts by id on the GPU: no readback.

use super::blocks::Linear;
use super::entry;
use super::recorder::Recorder;
use crate::config::Moe;
use crate::error::{Error, Result};
use crate::formats::package::ShardSource;
use crate::gpu::{ExpertInput, ExpertStack, Gpu, Matrix, OutputSlice, Routing, ROUTE_BYTES};

pub struct SparseMoe {
    gate: Linear, // [E, H] router, no bias (kept f32 by the converter)
    w1: Matrix,   // [E * I, H] every expert's gate projection
    w3: Matrix,   // [E * I, H] every expert's up projection
    w2: Matrix,   // [E * H, I] every expert's down projection
    experts: usize,
    per_token: usize,
    jitter: f32,
    hidden: usize,
    intermediate: usize,
}

/// The block's activations for up to T tokens (P = T * experts per token pairs).
pub struct MoeScratch {
    router_logits: wgpu::Buffer, // [T, E]
    routes: wgpu::Buffer,        // [P] Route (expert, weight)
    groups: wgpu::Buffer,        // [E] (first slot in order, pairs)
    order: wgpu::Buffer,         // [P] pair indices, by expert
    gate_up: wgpu::Buffer,       // [P, 2 I] w1 x then w3 x
    act: wgpu::Buffer,           // [P, I]
    out: wgpu::Buffer,           // [P, H]
}

impl MoeScratch {
    pub fn new(gpu: &Gpu, moe: &Moe, max_tokens: usize, hidden: usize, intermediate: usize) -> Result<MoeScratch> {
        let pairs = max_tokens * moe.experts_per_token;
        let floats = |label: &str, n: usize| gpu.storage(label, 4 * n as u64);
        Ok(MoeScratch {
            router_logits: floats("router logits", max_tokens * moe.experts)?,
            routes: gpu.storage("routes", (pairs * ROUTE_BYTES) as u64)?,
            groups: gpu.storage("expert groups", 8 * moe.experts as u64)?,
            order: gpu.storage("pair order", 4 * pairs as u64)?,
            gate_up: floats("expert gate_up", pairs * 2 * intermediate)?,
            act: floats("expert act", pairs * intermediate)?,
            out: floats("expert out", pairs * hidden)?,
        })
    }
}

/// Uploads `{prefix}.experts.{e}.{name}.weight` of every expert into one stack.
async fn load_stack(
    gpu: &Gpu,
    source: &impl ShardSource,
    prefix: &str,
    name: &str,
    experts: usize,
    shape: [usize; 2],
) -> Result<Matrix> {
    let first = entry(source, &format!("{prefix}.experts.0.{name}.weight"))?;
    let format = first.weight_format()?;
    let stack = Matrix::stacked(gpu, &format!("{prefix}.experts.{name}"), format, experts, shape[0], shape[1])?;
    for e in 0..experts {
        let tensor = entry(source, &format!("{prefix}.experts.{e}.{name}.weight"))?;
        if tensor.shape != shape || tensor.weight_format()? != format {
            return Err(Error::Config {
                message: format!(
                    "{}: {} {:?}; expert 0 is {} {shape:?} (a layer's experts must share shape and format)",
                    tensor.name,
                    tensor.format,
                    tensor.shape,
                    format.name()
                ),
            });
        }
        let mut row = e * shape[0];
        for chunk in &tensor.chunks {
            stack.write_rows(gpu, row, chunk.rows, &source.chunk_layout(chunk).await?)?;
            row += chunk.rows;
        }
    }
    Ok(stack)
}

impl SparseMoe {
    /// `{prefix}.gate` and `{prefix}.experts.{e}.w1/w2/w3` (prefix:
    /// `model.layers.N.block_sparse_moe`).
    pub async fn load(
        gpu: &Gpu,
        source: &impl ShardSource,
        prefix: &str,
        moe: &Moe,
        hidden: usize,
        intermediate: usize,
    ) -> Result<SparseMoe> {
        let e = moe.experts;
        Ok(SparseMoe {
            gate: Linear::load(gpu, source, &format!("{prefix}.gate"), false).await?,
            w1: load_stack(gpu, source, prefix, "w1", e, [intermediate, hidden]).await?,
            w3: load_stack(gpu, source, prefix, "w3", e, [intermediate, hidden]).await?,
            w2: load_stack(gpu, source, prefix, "w2", e, [hidden, intermediate]).await?,
            experts: e,
            per_token: moe.experts_per_token,
            jitter: moe.router_jitter,
            hidden,
            intermediate,
        })
    }

    /// x [T, H] += Σ_k w_k · expert_k(h), over h [T, H] (the normed residual).
    pub fn forward(&self, r: &mut Recorder, h: &wgpu::Buffer, s: &MoeScratch, x: &wgpu::Buffer) -> Result<()> {
        let (k, tokens, i) = (r.kernels, r.tokens, self.intermediate);
        self.gate.forward(r, h, &s.router_logits)?;
        r.push(k.moe_route(&s.router_logits, &s.routes, tokens, self.experts, self.jitter)?);
        let routing =
            Routing { routes: &s.routes, groups: &s.groups, order: &s.order, tokens, per_token: self.per_token };
        if tokens > 1 {
            r.push(k.moe_group(&routing, self.experts)?);
        }
        let stack = |matrix| ExpertStack { matrix, experts: self.experts };
        let gate_up = |offset| OutputSlice { stride: 2 * i, offset };
        r.push(k.expert_linear(&stack(&self.w1), &routing, ExpertInput::Token, h, &s.gate_up, gate_up(0))?);
        r.push(k.expert_linear(&stack(&self.w3), &routing, ExpertInput::Token, h, &s.gate_up, gate_up(i))?);
        r.push(k.silu_mul(&s.gate_up, &s.act, tokens * self.per_token, i)?);
        let out = OutputSlice::whole(self.hidden);
        r.push(k.expert_linear(&stack(&self.w2), &routing, ExpertInput::Pair, &s.act, &s.out, out)?);
        r.push(k.moe_combine(&routing, &s.out, x, self.hidden)?);
        Ok(())
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.gate.gpu_bytes() + self.w1.gpu_bytes() + self.w3.gpu_bytes() + self.w2.gpu_bytes()
    }

    /// Bytes one token reads: the router and its experts' rows of each stack.
    pub fn active_read_bytes(&self) -> u64 {
        let experts = [&self.w1, &self.w3, &self.w2].iter().map(|m| m.read_bytes()).sum::<u64>();
        self.gate.read_bytes() + experts / self.experts as u64 * self.per_token as u64
    }
}
