//! Tile sizes of the matrix kernels per [`KernelTuning`] class, and the
//! WGSL constants that carry them into the shaders.

use super::KernelTuning;

/// How much work each invocation of the matrix kernels takes, by
/// [`KernelTuning`]. On lavapipe every buffer load in a shader becomes a
/// per-lane gather, so large register tiles that reuse each load win: matvec
/// 3x and prefill matmul 6-10x over one row per invocation (`phi-web bench`).
/// GPUs get smaller tiles and the classic workgroup-memory matmul; so does
/// SwiftShader, where the CPU tiles measured no faster in Chromium (its
/// compiler keeps loop-indexed arrays in per-lane memory, not registers).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    /// matvec*.wgsl: rows per invocation (x read once for all of them).
    pub matvec_rows_per_thread: usize,
    /// matvec.wgsl: invocations sharing one group of rows.
    pub matvec_lanes: usize,
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
    const GPU: Tuning = Tuning {
        matvec_rows_per_thread: 8,
        matvec_lanes: 4,
        matmul_registers: false,
        matmul_rows_per_thread: 4,
        matmul_tokens_per_thread: 4,
        matmul_wg_rows: 16,
    };
    const CPU: Tuning = Tuning {
        matvec_rows_per_thread: 16,
        matvec_lanes: 2,
        matmul_registers: true,
        matmul_rows_per_thread: 32,
        matmul_tokens_per_thread: 4,
        matmul_wg_rows: 2,
    };

    pub fn of(class: KernelTuning) -> Tuning {
        match class {
            KernelTuning::Cpu => Tuning::CPU,
            KernelTuning::Gpu => Tuning::GPU,
        }
    }

    /// Rows one workgroup of `wg` invocations covers in matvec.wgsl (and moe_matvec.wgsl).
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
