//! The sparse mixture-of-experts block that replaces PhiMoE's MLP:
//! `block_sparse_moe` in `modeling_phimoe.py`. A router scores the experts,
//! sparsemixer picks two per token with their weights, each picked expert
//! runs `w2(silu(w1 x) * w3 x)`, and the weighted outputs are added into the
//! residual. Every expert of a layer lives in one stacked matrix per
//! projection, so the kernels pick experts by id on the GPU: no readback.

use super::blocks::Linear;
use super::entry;
use super::expert_cache::{CacheRouting, ExpertCache, ExpertStats, PROJECTIONS};
use super::recorder::Recorder;
use crate::backend::{Backend, Buf, Op};
use crate::config::Moe;
use crate::error::{Error, Result};
use crate::formats::package::{ShardSource, TensorEntry};
use crate::gpu::{Command, ExpertInput, ExpertStack, Gpu, Matrix, OutputSlice, Routing, ROUTE_BYTES};

/// What runs on the GPU only, for the CPU backend's error.
const WHAT: &str = "a mixture of experts (Phi-3.5-MoE)";

pub struct SparseMoe {
    gate: Linear, // [E, H] router, no bias (kept f32 by the converter)
    w1: Matrix,   // [E * I, H] every expert's gate projection
    w3: Matrix,   // [E * I, H] every expert's up projection
    w2: Matrix,   // [E * H, I] every expert's down projection
    /// When only some experts fit, the stacks hold the cache's slots
    /// ([slots * I, H], ...) and this says which expert each slot holds.
    cache: Option<ExpertCache>,
    experts: usize,
    per_token: usize,
    jitter: f32,
    hidden: usize,
    intermediate: usize,
}

/// The block's activations for up to T tokens (P = T * experts per token pairs).
pub struct MoeScratch {
    router_logits: Buf,            // [T, E]
    routes: wgpu::Buffer,          // [P] Route (expert, weight)
    groups: wgpu::Buffer,          // [E] (first slot in order, pairs)
    order: wgpu::Buffer,           // [P] pair indices, by expert
    gate_up: wgpu::Buffer,         // [P, 2 I] w1 x then w3 x
    act: wgpu::Buffer,             // [P, I]
    out: wgpu::Buffer,             // [P, H]
    routes_readback: wgpu::Buffer, // [P] Route, mappable: a cached layer's routes for the host
}

impl MoeScratch {
    pub fn new(gpu: &Gpu, moe: &Moe, max_tokens: usize, hidden: usize, intermediate: usize) -> Result<MoeScratch> {
        let pairs = max_tokens * moe.experts_per_token;
        let floats = |label: &str, n: usize| gpu.storage(label, 4 * n as u64);
        Ok(MoeScratch {
            router_logits: Buf::Gpu(floats("router logits", max_tokens * moe.experts)?),
            routes: gpu.storage("routes", (pairs * ROUTE_BYTES) as u64)?,
            groups: gpu.storage("expert groups", 8 * moe.experts as u64)?,
            order: gpu.storage("pair order", 4 * pairs as u64)?,
            gate_up: floats("expert gate_up", pairs * 2 * intermediate)?,
            act: floats("expert act", pairs * intermediate)?,
            out: floats("expert out", pairs * hidden)?,
            routes_readback: gpu.readback_buffer("routes readback", (pairs * ROUTE_BYTES) as u64)?,
        })
    }

    fn routing(&self, tokens: usize, per_token: usize) -> Routing<'_> {
        Routing { routes: &self.routes, groups: &self.groups, order: &self.order, tokens, per_token }
    }
}

/// `{prefix}.experts.{e}.{name}.weight` of every expert, checked to share
/// `shape` and format.
fn expert_tensors<'a>(
    source: &'a impl ShardSource,
    prefix: &str,
    name: &str,
    experts: usize,
    shape: [usize; 2],
) -> Result<Vec<&'a TensorEntry>> {
    let first = entry(source, &format!("{prefix}.experts.0.{name}.weight"))?;
    let format = first.weight_format()?;
    (0..experts)
        .map(|e| {
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
            Ok(tensor)
        })
        .collect()
}

/// A stack of `parts` experts of `tensors`' shape and format; when `parts`
/// is all of them, each expert's rows are uploaded in order.
async fn load_stack(
    gpu: &Gpu,
    source: &impl ShardSource,
    label: &str,
    tensors: &[&TensorEntry],
    parts: usize,
) -> Result<Matrix> {
    let (first, [rows, cols]) = (tensors[0], [tensors[0].shape[0], tensors[0].shape[1]]);
    let stack = Matrix::stacked(gpu, label, first.weight_format()?, parts, rows, cols)?;
    if parts == tensors.len() {
        for (e, tensor) in tensors.iter().enumerate() {
            let mut row = e * rows;
            for chunk in &tensor.chunks {
                stack.write_rows(gpu, row, chunk.rows, &source.chunk_layout(chunk).await?)?;
                row += chunk.rows;
            }
        }
    }
    Ok(stack)
}

impl SparseMoe {
    /// `{prefix}.gate` and `{prefix}.experts.{e}.w1/w2/w3` (prefix:
    /// `model.layers.N.block_sparse_moe`), with `slots` experts on the GPU:
    /// all of them uploaded, or fewer as an empty [`ExpertCache`].
    pub async fn load(
        b: &Backend,
        source: &impl ShardSource,
        prefix: &str,
        moe: &Moe,
        [hidden, intermediate]: [usize; 2],
        slots: usize,
    ) -> Result<SparseMoe> {
        let gpu = &b.gpu_only(WHAT)?.gpu;
        let e = moe.experts;
        let shapes = [[intermediate, hidden], [intermediate, hidden], [hidden, intermediate]];
        let mut tensors = Vec::with_capacity(3);
        for (name, shape) in PROJECTIONS.iter().zip(shapes) {
            tensors.push(expert_tensors(source, prefix, name, e, shape)?);
        }
        let stack = async |i: usize| {
            load_stack(gpu, source, &format!("{prefix}.experts.{}", PROJECTIONS[i]), &tensors[i], slots).await
        };
        let (w1, w3, w2) = (stack(0).await?, stack(1).await?, stack(2).await?);
        let cache = match slots < e {
            true => {
                let per_expert = (0..e).map(|x| [0, 1, 2].map(|i| tensors[i][x].clone())).collect();
                Some(ExpertCache::new(source, per_expert, slots)?)
            }
            false => None,
        };
        Ok(SparseMoe {
            gate: Linear::load(b, source, &format!("{prefix}.gate"), false).await?,
            w1,
            w3,
            w2,
            cache,
            experts: e,
            per_token: moe.experts_per_token,
            jitter: moe.router_jitter,
            hidden,
            intermediate,
        })
    }

    /// x [T, H] += Σ_k w_k · expert_k(h), over h [T, H] (the normed residual).
    /// A cached layer copies its routes out and leaves the expert matrices
    /// to [`SparseMoe::run_cached`] (layer `layer`'s `Segment::Experts`).
    pub fn forward(&self, r: &mut Recorder, layer: usize, h: &Buf, s: &MoeScratch, x: &Buf) -> Result<()> {
        let (k, tokens) = (&r.backend.gpu_only(WHAT)?.kernels, r.tokens);
        self.gate.forward(r, h, &s.router_logits)?;
        r.push(k.moe_route(s.router_logits.gpu()?, &s.routes, tokens, self.experts, self.jitter)?);
        let routing = s.routing(tokens, self.per_token);
        match self.cache {
            None => {
                if tokens > 1 {
                    r.push(k.moe_group(&routing, self.experts)?);
                }
                self.experts(r, h, s, self.experts)?;
            }
            Some(_) => {
                let size = (tokens * self.per_token * ROUTE_BYTES) as u64;
                let (src, dst) = (s.routes.clone(), s.routes_readback.clone());
                r.push(Op::Gpu(Command::Copy { src, src_offset: 0, dst, dst_offset: 0, size }));
                r.experts(layer, |r| self.experts(r, h, s, self.slots()))?;
            }
        }
        r.push(k.moe_combine(&routing, &s.out, x.gpu()?, self.hidden)?);
        Ok(())
    }

    /// out [P, H] = w2(silu(w1 h) * w3 h) for every pair, over stacks of `parts` experts.
    fn experts(&self, r: &mut Recorder, h: &Buf, s: &MoeScratch, parts: usize) -> Result<()> {
        let (k, tokens, i) = (&r.backend.gpu_only(WHAT)?.kernels, r.tokens, self.intermediate);
        let h = h.gpu()?;
        let routing = s.routing(tokens, self.per_token);
        let stack = |matrix| ExpertStack { matrix, experts: parts };
        let gate_up = |offset| OutputSlice { stride: 2 * i, offset };
        r.push(k.expert_linear(&stack(&self.w1), &routing, ExpertInput::Token, h, &s.gate_up, gate_up(0))?);
        r.push(k.expert_linear(&stack(&self.w3), &routing, ExpertInput::Token, h, &s.gate_up, gate_up(i))?);
        r.push(k.silu_mul(&s.gate_up, &s.act, tokens * self.per_token, i)?);
        let out = OutputSlice::whole(self.hidden);
        r.push(k.expert_linear(&stack(&self.w2), &routing, ExpertInput::Pair, &s.act, &s.out, out)?);
        Ok(())
    }

    /// Runs this layer's recorded expert `commands` for `tokens` tokens
    /// through its cache (an error for a layer without one).
    pub async fn run_cached(&self, gpu: &Gpu, s: &MoeScratch, tokens: usize, commands: &[Command]) -> Result<()> {
        let cache = self.cache.as_ref().ok_or_else(|| Error::Gpu {
            context: "expert cache".into(),
            message: "a layer with every expert resident was recorded as cached".into(),
        })?;
        let routing =
            CacheRouting { routes: &s.routes, groups: &s.groups, order: &s.order, routes_readback: &s.routes_readback };
        cache.run(gpu, [&self.w1, &self.w3, &self.w2], &routing, tokens, self.per_token, commands).await
    }

    /// Experts the GPU holds.
    fn slots(&self) -> usize {
        self.w1.rows / self.intermediate
    }

    /// The cache's statistics (None when every expert is resident).
    pub fn cache_stats(&self) -> Option<ExpertStats> {
        self.cache.as_ref().map(ExpertCache::stats)
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.gate.gpu_bytes() + self.w1.gpu_bytes() + self.w3.gpu_bytes() + self.w2.gpu_bytes()
    }

    /// Bytes one token reads: the router and its experts' rows of each stack.
    pub fn active_read_bytes(&self) -> u64 {
        let experts = [&self.w1, &self.w3, &self.w2].iter().map(|m| m.read_bytes()).sum::<u64>();
        self.gate.read_bytes() + experts / self.slots() as u64 * self.per_token as u64
    }
}
