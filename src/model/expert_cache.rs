//! The expert cache: when a budget (`gpuMemoryBudget`, `--gpu-memory`) or the
//! GPU's binding limit cannot hold every expert, each layer keeps `slots` of
//! its experts on the GPU and the rest stay where the weights came from (the
//! package's files natively, the browser's Cache Storage in wasm).
//!
//! A cached layer's forward pass stops after the router (`Segment::Experts`):
//! the host reads the routes back, uploads the experts they miss into the
//! least recently used slots, and rewrites the routing in slot terms — a
//! decode step's routes with slot ids, a prefill chunk's groups and order
//! over the slots — so the expert kernels run unchanged on a stack of
//! `slots` experts. A chunk that routes to more experts than there are slots
//! runs in rounds; the combine after the last round sees every pair.

use std::cell::RefCell;

use serde::Serialize;

use super::entry;
use crate::error::{Error, Result};
use crate::formats::package::{ChunkReader, ShardSource, TensorEntry};
use crate::gpu::{Command, Gpu, Matrix, ROUTE_BYTES};

/// The projections of an expert, in the order of `SparseMoe`'s stacks.
pub const PROJECTIONS: [&str; 3] = ["w1", "w3", "w2"];

/// What the expert caches did, summed over layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ExpertStats {
    pub experts_per_layer: usize,
    /// Experts each layer holds on the GPU.
    pub resident_per_layer: usize,
    /// One per (layer, forward call, expert a pair routes to).
    pub lookups: u64,
    /// Lookups that found the expert on the GPU.
    pub hits: u64,
    /// Bytes of experts uploaded on misses.
    pub uploaded_bytes: u64,
}

impl ExpertStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &ExpertStats) -> ExpertStats {
        ExpertStats {
            lookups: self.lookups - earlier.lookups,
            hits: self.hits - earlier.hits,
            uploaded_bytes: self.uploaded_bytes - earlier.uploaded_bytes,
            ..*self
        }
    }

    pub fn hit_rate(&self) -> f64 {
        if self.lookups == 0 {
            1.0
        } else {
            self.hits as f64 / self.lookups as f64
        }
    }

    pub fn add(&mut self, other: &ExpertStats) {
        self.lookups += other.lookups;
        self.hits += other.hits;
        self.uploaded_bytes += other.uploaded_bytes;
    }
}

/// Sums the layers' statistics (None when no layer caches).
pub fn total_stats(layers: impl Iterator<Item = Option<ExpertStats>>) -> Option<ExpertStats> {
    layers.flatten().reduce(|mut sum, layer| {
        sum.add(&layer);
        sum
    })
}

/// Bytes of a tensor in GPU layout (payload and scales of every chunk).
fn tensor_bytes(tensor: &TensorEntry) -> u64 {
    tensor.chunks.iter().map(|c| c.payload_bytes + c.scales_bytes).sum()
}

/// A mixture of experts' weights by where they may live, from its manifest.
#[derive(Clone, Copy, Debug)]
pub struct ExpertSizes {
    /// Bytes of everything but the experts (attention, norms, routers, embeddings, head).
    pub resident: u64,
    /// Bytes of one expert: its w1, w3 and w2.
    pub expert: u64,
    /// Payload bytes of one expert's largest projection (its rows of a stack).
    pub widest: u64,
    pub layers: usize,
    pub experts: usize,
    pub per_token: usize,
}

impl ExpertSizes {
    pub fn of(source: &impl ShardSource) -> Result<ExpertSizes> {
        let manifest = source.manifest();
        let config = &manifest.config;
        let moe = config.moe.as_ref().ok_or_else(|| Error::Config { message: "a model without experts".into() })?;
        let (mut expert, mut widest) = (0, 0);
        for name in PROJECTIONS {
            let tensor = entry(source, &format!("model.layers.0.block_sparse_moe.experts.0.{name}.weight"))?;
            expert += tensor_bytes(tensor);
            widest = widest.max(tensor.chunks.iter().map(|c| c.payload_bytes).sum());
        }
        let is_expert = |name: &str| name.contains(".block_sparse_moe.experts.");
        let resident = manifest.tensors.iter().filter(|t| !is_expert(&t.name)).map(tensor_bytes).sum();
        Ok(ExpertSizes {
            resident,
            expert,
            widest,
            layers: config.num_layers,
            experts: moe.experts,
            per_token: moe.experts_per_token,
        })
    }

    /// The GPU memory budget that leaves `slots` experts in each layer's cache.
    pub fn budget_for(&self, slots: usize) -> u64 {
        self.resident + (self.layers * slots) as u64 * self.expert
    }

    /// Experts of each layer the GPU holds: all of them unless `budget`
    /// (bytes of weights) or the largest buffer a kernel may bind says fewer.
    pub fn slots(&self, gpu: &Gpu, budget: Option<u64>) -> Result<usize> {
        let by_budget = match budget {
            None => self.experts,
            Some(budget) if budget < self.budget_for(self.per_token) => {
                return Err(Error::GpuMemoryBudget {
                    budget,
                    resident: self.resident,
                    expert: self.expert,
                    per_token: self.per_token as u64,
                    layers: self.layers as u64,
                })
            }
            Some(budget) => {
                (((budget - self.resident) / (self.layers as u64 * self.expert.max(1))) as usize).min(self.experts)
            }
        };
        let binding = gpu.limits.max_storage_buffer_binding_size;
        let by_binding = (binding / self.widest.max(1)) as usize;
        if by_binding < self.per_token {
            return Err(Error::GpuLimit {
                what: format!("{} experts' rows of one projection", self.per_token),
                needed: self.per_token as u64 * self.widest,
                limit: binding,
                limit_name: "maxStorageBufferBindingSize",
            });
        }
        Ok(by_budget.min(by_binding))
    }
}

/// Who holds which slot, and what it cost.
struct CacheState {
    slot_of: Vec<Option<usize>>,   // [E] the slot holding expert e
    expert_in: Vec<Option<usize>>, // [slots] the expert slot s holds
    last_used: Vec<u64>,           // [slots] the round that last used slot s
    round: u64,
    stats: ExpertStats,
}

/// One layer's cache: `slots` experts of its stacks, and where to read the others.
pub struct ExpertCache {
    /// Each expert's w1, w3 and w2 tensors, whose chunks a miss reads again.
    tensors: Vec<[TensorEntry; 3]>,
    reader: std::rc::Rc<dyn ChunkReader>,
    slots: usize,
    state: RefCell<CacheState>,
}

/// The buffers a cached layer's routing lives in (`MoeScratch`'s).
pub struct CacheRouting<'a> {
    pub routes: &'a wgpu::Buffer,          // [P] Route; decode's are rewritten with slot ids
    pub groups: &'a wgpu::Buffer,          // [slots] (first slot in order, pairs), written by the host
    pub order: &'a wgpu::Buffer,           // [P] pair indices by slot, written by the host
    pub routes_readback: &'a wgpu::Buffer, // [P] Route, mappable: what the router chose
}

impl ExpertCache {
    /// An empty cache of `slots` experts; `tensors[e]` are expert e's w1, w3
    /// and w2 (already checked to share shapes and formats).
    pub fn new(source: &impl ShardSource, tensors: Vec<[TensorEntry; 3]>, slots: usize) -> Result<ExpertCache> {
        let reader = source.reader().ok_or_else(|| Error::Unsupported {
            what: "an expert cache over a source that cannot be read again".into(),
            supported: "packages on disk and the browser's shard cache".into(),
        })?;
        let experts = tensors.len();
        let state = CacheState {
            slot_of: vec![None; experts],
            expert_in: vec![None; slots],
            last_used: vec![0; slots],
            round: 0,
            stats: ExpertStats { experts_per_layer: experts, resident_per_layer: slots, ..Default::default() },
        };
        Ok(ExpertCache { tensors, reader, slots, state: RefCell::new(state) })
    }

    pub fn stats(&self) -> ExpertStats {
        self.state.borrow().stats
    }

    /// Runs a recorded `Segment::Experts`: reads the routes of `tokens` tokens
    /// (`per_token` experts each), and for each round of experts that fit the
    /// cache uploads the misses into `stacks` (w1, w3, w2), writes the
    /// routing in slot terms and submits `commands`.
    // The state's RefMut is held across the uploads' awaits: forward calls
    // are exclusive (the session lock), so nothing else borrows it meanwhile.
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn run(
        &self,
        gpu: &Gpu,
        stacks: [&Matrix; 3],
        routing: &CacheRouting<'_>,
        tokens: usize,
        per_token: usize,
        commands: &[Command],
    ) -> Result<()> {
        let pairs = tokens * per_token;
        let words = gpu.read_mapped_u32("routes", routing.routes_readback, pairs * ROUTE_BYTES / 4).await?;
        let experts = self.tensors.len();
        let pair_expert: Vec<usize> = words.chunks(2).map(|w| w[0] as usize).collect();
        if let Some(bad) = pair_expert.iter().find(|&&e| e >= experts) {
            return Err(Error::Gpu { context: "expert routing".into(), message: format!("expert {bad} of {experts}") });
        }
        let mut state = self
            .state
            .try_borrow_mut()
            .map_err(|_| Error::Gpu { context: "expert cache".into(), message: "two forward calls at once".into() })?;
        // The chunk's experts, those already resident first (the first round uses them).
        let mut needed: Vec<usize> = Vec::new();
        for &e in &pair_expert {
            if !needed.contains(&e) {
                needed.push(e);
            }
        }
        needed.sort_by_key(|&e| state.slot_of[e].is_none());
        for round in needed.chunks(self.slots) {
            state.round += 1;
            let now = state.round;
            for &e in round {
                state.stats.lookups += 1;
                let slot = match state.slot_of[e] {
                    Some(slot) => {
                        state.stats.hits += 1;
                        slot
                    }
                    None => {
                        // The least recently used slot no expert of this round holds.
                        let slot = (0..self.slots)
                            .filter(|&s| state.last_used[s] != now)
                            .min_by_key(|&s| state.last_used[s])
                            .ok_or_else(|| Error::Gpu {
                                context: "expert cache".into(),
                                message: "no free slot (a round larger than the cache)".into(),
                            })?;
                        if let Some(old) = state.expert_in[slot].take() {
                            state.slot_of[old] = None;
                        }
                        state.stats.uploaded_bytes += self.upload(gpu, stacks, e, slot).await?;
                        state.slot_of[e] = Some(slot);
                        state.expert_in[slot] = Some(e);
                        slot
                    }
                };
                state.last_used[slot] = now;
            }
            let slot_of = |e: usize| state.slot_of[e].unwrap_or(0);
            if tokens == 1 {
                // moe_matvec reads the expert id of each pair's route.
                let mut slot_routes = words.clone();
                for (pair, &e) in pair_expert.iter().enumerate() {
                    slot_routes[2 * pair] = slot_of(e) as u32;
                }
                gpu.queue.write_buffer(routing.routes, 0, bytemuck::cast_slice(&slot_routes));
            } else {
                // moe_matmul reads each slot's pairs from groups and order.
                let mut groups = vec![[0u32; 2]; self.slots];
                let mut order = Vec::with_capacity(pairs);
                for &e in round {
                    let slot = slot_of(e);
                    groups[slot] = [order.len() as u32, 0];
                    for (pair, _) in pair_expert.iter().enumerate().filter(|&(_, &pe)| pe == e) {
                        order.push(pair as u32);
                        groups[slot][1] += 1;
                    }
                }
                gpu.queue.write_buffer(routing.groups, 0, bytemuck::cast_slice(&groups));
                gpu.queue.write_buffer(routing.order, 0, bytemuck::cast_slice(&order));
            }
            gpu.submit(commands);
        }
        Ok(())
    }

    /// Writes expert `e`'s rows of each stack into `slot`; returns the bytes.
    async fn upload(&self, gpu: &Gpu, stacks: [&Matrix; 3], e: usize, slot: usize) -> Result<u64> {
        let mut bytes = 0;
        for (stack, tensor) in stacks.iter().zip(&self.tensors[e]) {
            let mut row = slot * tensor.shape[0];
            for chunk in &tensor.chunks {
                stack.write_rows(gpu, row, chunk.rows, &self.reader.read_chunk(chunk).await?)?;
                row += chunk.rows;
                bytes += chunk.payload_bytes + chunk.scales_bytes;
            }
        }
        Ok(bytes)
    }
}
