//! A forward pass's threads as a team that spins between ops (the threaded
//! wasm build). rayon's idle workers go to sleep within microseconds, and
//! waking a Web Worker (Atomics.notify) takes tens of them: paid once per
//! parallel op, a few hundred times per token, it cost more than a second
//! thread gained. While a forward pass runs, the team's helpers instead spin
//! on one atomic word, and each parallel op hands out its tasks through it.
//!
//! The word is `generation (24 bits) | tasks (20) | next task (20)`: a task
//! is claimed by a compare-and-swap that also checks the generation, so a
//! helper that was slow to see one op can never claim a task of the next.
//! The op's closure is published before its generation and reclaimed only
//! after every claimed task has finished.

use std::cell::Cell;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

const TASK_BITS: u32 = 20;
const TASK_MASK: u64 = (1 << TASK_BITS) - 1;
/// The most tasks one op can hand out through the word.
pub const MAX_TASKS: usize = TASK_MASK as usize;

/// One op's work: `run(task)` for task in 0..tasks.
struct Job<'a> {
    run: &'a (dyn Fn(usize) + Sync),
}

pub struct Team {
    word: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    done: AtomicUsize,
    stop: AtomicBool,
}

thread_local! {
    /// The team this thread leads, while it runs a forward pass's ops.
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

impl Team {
    pub fn new() -> Team {
        Team {
            word: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Runs `body` as the team's leader: [`for_each`] calls inside it on this
    /// thread share their tasks with the helpers; then releases them.
    pub fn lead<R>(&self, body: impl FnOnce() -> R) -> R {
        let previous = LEADING.with(|l| l.replace(self));
        let result = body();
        LEADING.with(|l| l.set(previous));
        self.stop.store(true, Ordering::Release);
        result
    }

    /// A helper's loop: claims tasks of each new op until the leader stops.
    pub fn help(&self) {
        let mut seen = 0;
        while !self.stop.load(Ordering::Acquire) {
            let word = self.word.load(Ordering::Acquire);
            let generation = word >> (2 * TASK_BITS);
            if generation == seen {
                spin_loop();
                continue;
            }
            seen = generation;
            let job = self.job.load(Ordering::Acquire);
            // SAFETY: the job of `generation` (or a later one) lives until all
            // its claimed tasks finish; `work` only runs tasks it claimed
            // under `generation`, which the leader has not finished yet.
            self.work(generation, unsafe { &*job });
        }
    }

    /// Claims and runs tasks of `generation` until none are left.
    fn work(&self, generation: u64, job: &Job<'_>) {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let (tasks, next) = ((word >> TASK_BITS) & TASK_MASK, word & TASK_MASK);
            if word >> (2 * TASK_BITS) != generation || next >= tasks {
                return;
            }
            match self.word.compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    (job.run)(next as usize);
                    self.done.fetch_add(1, Ordering::Release);
                    word = self.word.load(Ordering::Acquire);
                }
                Err(current) => word = current,
            }
        }
    }

    /// The leader's side of one op: publish, work, wait for the helpers' tasks.
    fn run(&self, tasks: usize, run: &(dyn Fn(usize) + Sync)) {
        let job = Job { run };
        self.done.store(0, Ordering::Relaxed);
        // SAFETY (lifetime): helpers dereference the pointer only for tasks of
        // this generation, all finished before this function returns.
        let erased = &job as *const Job<'_> as *mut Job<'static>;
        self.job.store(erased, Ordering::Release);
        let generation = (self.word.load(Ordering::Relaxed) >> (2 * TASK_BITS)) + 1;
        self.word.store((generation << (2 * TASK_BITS)) | ((tasks as u64) << TASK_BITS), Ordering::Release);
        self.work(generation, &job);
        while self.done.load(Ordering::Acquire) < tasks {
            spin_loop();
        }
    }
}

/// `f(i, chunk i)` for the `size`-element chunks of `data`, in parallel: on
/// the team this thread leads, else on rayon.
pub fn for_each_chunk<T: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    use rayon::prelude::*;
    let size = size.max(1);
    let tasks = data.len().div_ceil(size);
    let team = LEADING.with(Cell::get);
    if team.is_null() || tasks > MAX_TASKS {
        data.par_chunks_mut(size).enumerate().for_each(|(i, chunk)| f(i, chunk));
        return;
    }
    let (base, len) = (SendPtr(data.as_mut_ptr()), data.len());
    let base = &base;
    let task = move |i: usize| {
        let start = i * size;
        // SAFETY: each task index is claimed once, and the chunks are disjoint
        // ranges of `data`, which outlives the op.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), size.min(len - start)) };
        f(i, chunk)
    };
    // SAFETY: the pointer was set by `lead` on this thread and the team
    // outlives the body it runs.
    unsafe { &*team }.run(tasks, &task);
}

struct SendPtr<T>(*mut T);
// SAFETY: only used to hand disjoint chunks to the team's threads.
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task of every op runs exactly once, with helpers joining late.
    #[test]
    fn tasks_run_once_per_op() {
        let team = Team::new();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| team.help());
            }
            team.lead(|| {
                for op in 0..2000usize {
                    let size = 1 + op % 5;
                    let mut data = vec![0usize; 1 + op % 97];
                    for_each_chunk(&mut data, size, |i, chunk| chunk.iter_mut().for_each(|v| *v += 1 + i));
                    assert!(data.iter().enumerate().all(|(j, &v)| v == 1 + j / size), "op {op}: {data:?}");
                }
            });
        });
    }
}
