//! GPU time of whole submits, from timestamp queries: while a [`Timer`] is
//! on ([`Gpu::start_timer`]), every [`Gpu::submit`] writes a timestamp at the
//! start of its first compute pass and at the end of its last, and the CPU
//! time spent encoding it is added up. `phi-web bench` and `bench-gpu` use
//! it to split a decode step into GPU time and CPU encode time.

use std::time::Duration;

use super::Gpu;
use crate::error::{Error, Result};

/// wgpu's alignment of a query resolve's destination offset.
const RESOLVE_STRIDE: u64 = wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT;

/// Timestamp queries for up to `capacity` submits.
pub(super) struct Timer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer, // [capacity] pairs of u64 ticks, RESOLVE_STRIDE apart
    capacity: u32,
    submits: u32,
    encode: Duration,
}

/// What a timer measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuTimes {
    /// Sum over the submits of GPU time from first pass start to last pass end.
    pub gpu: Duration,
    /// CPU time in `Gpu::submit` (command encoding and queue submission).
    pub encode: Duration,
}

impl Timer {
    /// The timestamp writes of a submit's compute passes, `(first, last)`;
    /// None once the timer is full.
    pub(super) fn next(
        &mut self,
    ) -> Option<(wgpu::ComputePassTimestampWrites<'_>, wgpu::ComputePassTimestampWrites<'_>)> {
        if self.submits >= self.capacity {
            return None;
        }
        let at = 2 * self.submits;
        let first = wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(at),
            end_of_pass_write_index: None,
        };
        let last = wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: None,
            end_of_pass_write_index: Some(at + 1),
        };
        Some((first, last))
    }

    /// Resolves the submit's two timestamps into their slot.
    pub(super) fn resolve(&mut self, encoder: &mut wgpu::CommandEncoder) {
        let at = 2 * self.submits;
        encoder.resolve_query_set(&self.queries, at..at + 2, &self.resolved, self.submits as u64 * RESOLVE_STRIDE);
        self.submits += 1;
    }

    #[cfg(not(target_arch = "wasm32"))] // no clock in wasm32-unknown-unknown's std
    pub(super) fn add_encode(&mut self, time: Duration) {
        self.encode += time;
    }
}

impl Gpu {
    /// Times the next `capacity` submits (needs the timestamp-query feature).
    pub fn start_timer(&self, capacity: u32) -> Result<()> {
        if !self.features.timestamps {
            return Err(Error::Gpu {
                context: "timer".into(),
                message: format!("{} has no timestamp queries", self.adapter),
            });
        }
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("submit timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * capacity,
        });
        let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("submit timestamps"),
            size: capacity as u64 * RESOLVE_STRIDE,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        *self.timer_slot() = Some(Timer { queries, resolved, capacity, submits: 0, encode: Duration::ZERO });
        Ok(())
    }

    /// Stops the timer and reads what it measured (None if none was on).
    pub async fn stop_timer(&self) -> Result<Option<GpuTimes>> {
        let Some(timer) = self.timer_slot().take() else { return Ok(None) };
        let bytes =
            self.read_bytes("timestamps", &timer.resolved, timer.submits.max(1) as u64 * RESOLVE_STRIDE).await?;
        let period = self.queue.get_timestamp_period() as f64; // ns per tick
        let ticks: &[u64] = bytemuck::cast_slice(&bytes);
        let stride = (RESOLVE_STRIDE / 8) as usize;
        let gpu_ns: f64 = (0..timer.submits as usize)
            .map(|i| ticks[i * stride + 1].saturating_sub(ticks[i * stride]) as f64 * period)
            .sum();
        Ok(Some(GpuTimes { gpu: Duration::from_nanos(gpu_ns as u64), encode: timer.encode }))
    }

    pub(super) fn timer_slot(&self) -> std::sync::MutexGuard<'_, Option<Timer>> {
        self.timer.lock().unwrap_or_else(|e| e.into_inner())
    }
}
