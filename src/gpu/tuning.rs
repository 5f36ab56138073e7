//! Tile sizes of the matrix kernels per [`KernelTuning`] class, and the
//! WGSL constants that carry them into the shaders.

use super::KernelTuning;

/// How much work each invocation of the matrix kernels takes. One preset per
/// [`KernelTuning`] class; `phi-web bench-gpu` sweeps the matvec knobs
/// ([`Tuning::matvec_sweep`]) through [`Kernels::with_tuning`](super::Kernels::with_tuning).
///
/// - **Cpu** (lavapipe, WARP): every buffer load in a shader becomes a
///   per-lane gather, so large register tiles that reuse each load win:
///   matvec 3x and prefill matmul 6-10x over one row per invocation
///   (`phi-web bench`).
/// - **Software** (SwiftShader): small tiles and the workgroup-memory matmul;
///   the CPU tiles measured no faster in Chromium (its compiler keeps
///   loop-indexed arrays in per-lane memory, not registers).
/// - **Gpu** (real GPUs): thousands of small workgroups, as the fastest
///   browser engines use: 2 rows per 16 lanes, so Phi-3-mini's smallest
///   matrix (o_proj, 3072 rows) still gives 384 workgroups of 64, and a
///   long row (down_proj, K = 8192) is split over 16 lanes (split-K within
///   the workgroup); q4 blocks are read as one 16-byte load per lane, and
///   consecutive lanes read consecutive blocks of a row. Chosen by
///   reasoning, not yet by measurement: no GPU has run the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// matvec.wgsl and matvec_subgroup.wgsl: invocations per workgroup.
    pub matvec_wg: usize,
    /// matvec*.wgsl: rows per invocation (x read once for all of them).
    pub matvec_rows_per_thread: usize,
    /// matvec.wgsl: invocations sharing one group of rows (divides matvec_wg).
    pub matvec_lanes: usize,
    /// matvec_subgroup.wgsl: rows per workgroup, shared by its subgroups
    /// (a multiple of matvec_rows_per_thread).
    pub matvec_subgroup_rows: usize,
    /// Prefill with matmul_registers.wgsl (else matmul_workgroup.wgsl).
    pub matmul_registers: bool,
    /// matmul_registers.wgsl: the invocation's tile, rows x tokens.
    pub matmul_rows_per_thread: usize,
    pub matmul_tokens_per_thread: usize,
    /// matmul_registers.wgsl: invocations along rows (64 per workgroup in all).
    pub matmul_wg_rows: usize,
}

/// matmul_workgroup.wgsl's tile: WG_ROWS * ROWS_PER_THREAD features x
/// WG_TOKENS * TOKENS_PER_THREAD tokens.
pub(super) const WORKGROUP_TILE: (usize, usize) = (64, 32);

impl Tuning {
    pub const CPU: Tuning = Tuning {
        matvec_wg: 64,
        matvec_rows_per_thread: 16,
        matvec_lanes: 2,
        matvec_subgroup_rows: 64,
        matmul_registers: true,
        matmul_rows_per_thread: 32,
        matmul_tokens_per_thread: 4,
        matmul_wg_rows: 2,
    };
    pub const SOFTWARE: Tuning = Tuning {
        matvec_wg: 64,
        matvec_rows_per_thread: 8,
        matvec_lanes: 4,
        matvec_subgroup_rows: 64,
        matmul_registers: false,
        matmul_rows_per_thread: 4,
        matmul_tokens_per_thread: 4,
        matmul_wg_rows: 16,
    };
    pub const GPU: Tuning = Tuning {
        matvec_wg: 64,
        matvec_rows_per_thread: 2,
        matvec_lanes: 16,
        matvec_subgroup_rows: 4,
        ..Tuning::SOFTWARE
    };

    pub fn of(class: KernelTuning) -> Tuning {
        match class {
            KernelTuning::Cpu => Tuning::CPU,
            KernelTuning::Software => Tuning::SOFTWARE,
            KernelTuning::Gpu => Tuning::GPU,
        }
    }

    /// The matvec knobs `phi-web bench-gpu` measures, around `self`: every
    /// (workgroup, rows per invocation, lanes) of the grid below, lanes
    /// dividing the workgroup; the subgroup variant's rows per workgroup
    /// follow (2 subgroups' worth of rows at 32 lanes).
    pub fn matvec_sweep(&self) -> Vec<Tuning> {
        let mut points = vec![*self];
        for wg in [64, 128, 256] {
            for rows in [1, 2, 4, 8] {
                for lanes in [4, 8, 16, 32, 64] {
                    let t = Tuning {
                        matvec_wg: wg,
                        matvec_rows_per_thread: rows,
                        matvec_lanes: lanes,
                        matvec_subgroup_rows: rows * wg / 32,
                        ..*self
                    };
                    if lanes <= wg && !points.contains(&t) {
                        points.push(t);
                    }
                }
            }
        }
        points
    }

    /// A short name of the matvec knobs, for reports: "wg64 r2 l16 s4".
    pub fn matvec_name(&self) -> String {
        format!(
            "wg{} r{} l{} s{}",
            self.matvec_wg, self.matvec_rows_per_thread, self.matvec_lanes, self.matvec_subgroup_rows
        )
    }

    /// Rows one workgroup covers in matvec.wgsl (and moe_matvec.wgsl at `wg`).
    pub fn matvec_rows_per_wg(&self, wg: usize) -> usize {
        wg / self.matvec_lanes * self.matvec_rows_per_thread
    }

    /// The (features, tokens) tile of a workgroup of `wg` invocations in
    /// matmul_registers.wgsl (and moe_matmul_registers.wgsl).
    pub fn register_tile(&self, wg: usize) -> (usize, usize) {
        (self.matmul_wg_rows * self.matmul_rows_per_thread, wg / self.matmul_wg_rows * self.matmul_tokens_per_thread)
    }

    /// WGSL constants put in front of matvec*.wgsl.
    pub fn matvec_constants(&self) -> String {
        format!("const ROWS_PER_THREAD: u32 = {}u;\n", self.matvec_rows_per_thread)
    }

    /// WGSL constants put in front of matmul_registers.wgsl.
    pub fn matmul_constants(&self) -> String {
        format!(
            "const ROWS_PER_THREAD: u32 = {}u;\nconst TOKENS_PER_THREAD: u32 = {}u;\n",
            self.matmul_rows_per_thread, self.matmul_tokens_per_thread
        )
    }
}
