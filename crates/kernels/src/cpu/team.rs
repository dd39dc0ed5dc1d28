//! `ThreadTeam`: a persistent set of compute threads that run the CPU backend's ops one at a time, each op split
//! into chunks that the threads claim from one atomic counter (llama.cpp's ggml threadpool with its `current_chunk`
//! scheduling of `mul_mat`, in our own code).
//!
//! Why not rayon for the ops: a decode step of the default model is ~300 small parallel ops of 10-100 µs each.
//! Rayon parks idle workers on a futex after a short spin, so every op pays a wake-up (tens of µs on the
//! hypervisors we run on) and the step waits on it; a team whose threads spin on the counter between the ops of
//! one forward pass starts an op in well under a µs. Chunks are claimed dynamically, not split statically per
//! thread, so a thread whose vCPU the hypervisor takes away (30% steal was measured on the 2-vCPU machine) leaves
//! its chunks to the others instead of stalling the op: the caller never waits for a thread that claimed nothing.
//!
//! Guarantees: `for_each_chunk(n, f)` returns after `f(i)` ran exactly once for every `i < n`, on the caller or a
//! worker; a panic in `f` is re-raised on the caller after every claimed chunk finished. A call from inside a
//! chunk (nested parallelism) runs inline on that thread. Workers spin for `SPIN` after an op, then sleep on a
//! condition variable until the next one; `rest` puts them to sleep at once (the backend calls it when a forward
//! pass ends, so the sampler and the rest of the engine get the cores).
//!
//! With no team installed on the calling thread (kernel unit tests, callers outside a forward pass) the kernels'
//! `parallel_for` falls back to rayon, so the kernels never depend on a team existing.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a worker spins for the next op before it sleeps: longer than the gap between two ops of a forward
/// pass (a few µs), far shorter than the gap between engine steps.
const SPIN: Duration = Duration::from_micros(200);

/// Most chunks in one op (the ticket packs the chunk index and count into 32 bits each).
const MAX_CHUNKS: usize = u32::MAX as usize;

/// The job being run: a type-erased `&(dyn Fn(usize) + Sync)` borrowed from the caller's stack.
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync`, and it is only dereferenced while the caller that owns it is waiting (below).
unsafe impl Send for JobRef {}

struct Shared {
    /// `(chunks << 32) | next`: the next unclaimed chunk of the current op and the op's chunk count. A chunk is
    /// claimed by a CAS from `next` to `next + 1` while `next < chunks`; the caller resets it for each op only
    /// after every chunk of the previous op finished, so a successful claim always belongs to the live op.
    ticket: AtomicU64,
    /// Chunks of the current op that finished.
    done: AtomicUsize,
    /// The current op's job (a `JobRef` on the caller's stack), published before the op's ticket. An atomic, not
    /// a mutex: every claimed chunk reads it, and 16 threads taking one lock per chunk serialized on it (futex
    /// waits of tens of µs inside ops of a few µs).
    job: AtomicPtr<JobRef>,
    /// Set when a chunk panicked (its payload kept in `panic`).
    panicked: AtomicBool,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Workers asleep (or about to sleep) on `wake`.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    /// Workers stop spinning and sleep (a forward pass ended).
    resting: AtomicBool,
    shutdown: AtomicBool,
}

/// A team of `threads` compute threads: the caller of `for_each_chunk` and `threads - 1` workers.
pub struct ThreadTeam {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
}

thread_local! {
    /// The team the current thread's kernels use (set by `ThreadTeam::install`).
    static CURRENT: Cell<*const ThreadTeam> = const { Cell::new(std::ptr::null()) };
    /// Inside a chunk: nested `parallel_for` calls run inline.
    static IN_CHUNK: Cell<bool> = const { Cell::new(false) };
}

impl ThreadTeam {
    /// Starts `threads - 1` workers (`threads` is clamped to at least 1). Fails only if the OS refuses a thread.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            ticket: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            panicked: AtomicBool::new(false),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            resting: AtomicBool::new(true),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let s = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("pagedllm-team-{i}"))
                    .spawn(move || worker(&s))?,
            );
        }
        Ok(Self {
            shared,
            workers,
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `body` with this team as the calling thread's `parallel_for` target.
    pub fn install<T>(&self, body: impl FnOnce() -> T) -> T {
        struct Restore(*const ThreadTeam);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self as *const _)));
        body()
    }

    /// Puts the workers to sleep until the next op (instead of spinning for `SPIN`).
    pub fn rest(&self) {
        self.shared.resting.store(true, SeqCst);
    }

    /// Runs `f(i)` for every `i < chunks` over the team; see the module doc for the guarantees.
    pub fn for_each_chunk(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if chunks == 0 {
            return;
        }
        if self.threads == 1 || chunks == 1 || IN_CHUNK.with(|c| c.get()) {
            (0..chunks).for_each(f);
            return;
        }
        assert!(chunks <= MAX_CHUNKS, "ThreadTeam: {chunks} chunks in one op");
        let s = &*self.shared;
        // SAFETY (lifetime erasure): `f` outlives this call, and no worker dereferences the pointer after the
        // wait below: a worker reads it only after claiming a chunk, and every claimed chunk finishes first.
        let erased: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = JobRef(erased as *const _);
        s.job.store(&job as *const JobRef as *mut JobRef, Release);
        s.done.store(0, SeqCst);
        s.resting.store(false, SeqCst);
        s.ticket.store((chunks as u64) << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.sleep_lock.lock().unwrap();
            s.wake.notify_all();
        }
        run_chunks(s);
        let mut spins = 0u32;
        while s.done.load(Acquire) < chunks {
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 {
                // A worker holding a chunk may have lost its vCPU; let it run if it shares ours.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        s.job.store(std::ptr::null_mut(), Release);
        if s.panicked.swap(false, SeqCst) {
            if let Some(p) = s.panic.lock().unwrap().take() {
                resume_unwind(p);
            }
        }
    }
}

impl Drop for ThreadTeam {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self.shared.sleep_lock.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Claims and runs chunks of the current op until none is left.
fn run_chunks(s: &Shared) {
    loop {
        let t = s.ticket.load(Acquire);
        let (chunks, next) = ((t >> 32) as usize, (t & 0xFFFF_FFFF) as usize);
        if next >= chunks {
            return;
        }
        if s.ticket.compare_exchange_weak(t, t + 1, AcqRel, Relaxed).is_err() {
            continue;
        }
        // SAFETY: chunk `next` of the live op is ours, so the op's caller is still waiting and its job alive.
        // The claim (AcqRel on `ticket`) orders this load after the caller's store of the op's job.
        let job = s.job.load(Acquire);
        debug_assert!(!job.is_null(), "a claimed chunk has a job");
        let was = IN_CHUNK.with(|c| c.replace(true));
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*(*job).0)(next) }));
        IN_CHUNK.with(|c| c.set(was));
        if let Err(p) = r {
            *s.panic.lock().unwrap() = Some(p);
            s.panicked.store(true, SeqCst);
        }
        s.done.fetch_add(1, Release);
    }
}

fn has_work(s: &Shared) -> bool {
    let t = s.ticket.load(SeqCst);
    (t & 0xFFFF_FFFF) < (t >> 32)
}

fn worker(s: &Shared) {
    while !s.shutdown.load(Relaxed) {
        run_chunks(s);
        // Spin for the next op of this forward pass, unless the team was told to rest.
        let start = Instant::now();
        let mut spins = 0u32;
        while !has_work(s) && !s.resting.load(Relaxed) && !s.shutdown.load(Relaxed) {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 && start.elapsed() > SPIN {
                break;
            }
        }
        if has_work(s) {
            continue;
        }
        s.sleepers.fetch_add(1, SeqCst);
        let mut g = s.sleep_lock.lock().unwrap();
        while !has_work(s) && !s.shutdown.load(SeqCst) {
            g = s.wake.wait(g).unwrap();
        }
        drop(g);
        s.sleepers.fetch_sub(1, SeqCst);
    }
}

/// Runs `f(i)` for every `i < chunks` on the calling thread's installed team, or on rayon without one.
pub fn parallel_for(chunks: usize, f: impl Fn(usize) + Sync) {
    let team = CURRENT.with(|c| c.get());
    if team.is_null() {
        if IN_CHUNK.with(|c| c.get()) {
            (0..chunks).for_each(f);
        } else {
            (0..chunks).into_par_iter().for_each(|i| f(i));
        }
    } else {
        // SAFETY: `install` keeps the team alive (borrowed) for as long as it is the current one.
        unsafe { &*team }.for_each_chunk(chunks, &f);
    }
}

/// `f(i, chunk)` for every `chunk`-element chunk of `x` (the last may be shorter), in parallel as `parallel_for`.
pub fn par_chunks_mut<T: Send>(x: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let (len, p) = (x.len(), SendPtr(x.as_mut_ptr()));
    parallel_for(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        // SAFETY: `parallel_for` runs each `i` once, so chunk `i` is borrowed by one call only; in bounds.
        let c = unsafe { std::slice::from_raw_parts_mut(p.get().add(start), chunk.min(len - start)) };
        f(i, c)
    });
}

/// As `par_chunks_mut` over two arrays chunked in step (`a` by `ca`, `b` by `cb` elements; the chunk count is
/// `a`'s, and `b` must hold at least as many chunks).
pub fn par_chunks_mut2<T: Send, U: Send>(
    a: &mut [T],
    ca: usize,
    b: &mut [U],
    cb: usize,
    f: impl Fn(usize, &mut [T], &mut [U]) + Sync,
) {
    let (ca, cb) = (ca.max(1), cb.max(1));
    let chunks = a.len().div_ceil(ca);
    assert!(
        b.len().div_ceil(cb) >= chunks,
        "par_chunks_mut2: b has fewer chunks than a"
    );
    let (la, lb, pa, pb) = (a.len(), b.len(), SendPtr(a.as_mut_ptr()), SendPtr(b.as_mut_ptr()));
    parallel_for(chunks, |i| {
        let (sa, sb) = (i * ca, (i * cb).min(lb));
        // SAFETY: as `par_chunks_mut`; the two arrays are distinct borrows.
        let (x, y) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.get().add(sa), ca.min(la - sa)),
                std::slice::from_raw_parts_mut(pb.get().add(sb), cb.min(lb - sb)),
            )
        };
        f(i, x, y)
    });
}

struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only to hand disjoint chunks of one borrowed slice to the chunks of one op.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    // A method, so closures capture the Sync wrapper rather than the raw field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// The number of threads `parallel_for` spreads over on this thread.
pub fn current_threads() -> usize {
    let team = CURRENT.with(|c| c.get());
    if team.is_null() {
        rayon::current_num_threads()
    } else {
        // SAFETY: as in `parallel_for`.
        unsafe { &*team }.threads()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_chunk_runs_once_across_many_ops() {
        let team = ThreadTeam::new(3).unwrap();
        for n in [0usize, 1, 2, 7, 64, 1000] {
            for _ in 0..50 {
                let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                team.install(|| {
                    parallel_for(n, |i| {
                        hits[i].fetch_add(1, Relaxed);
                    })
                });
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "n = {n}");
            }
            team.rest();
        }
    }

    #[test]
    fn nested_calls_run_inline_and_panics_reach_the_caller() {
        let team = ThreadTeam::new(2).unwrap();
        let total = AtomicUsize::new(0);
        team.install(|| {
            parallel_for(8, |_| {
                parallel_for(4, |_| {
                    total.fetch_add(1, Relaxed);
                })
            })
        });
        assert_eq!(total.load(Relaxed), 32);
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.install(|| parallel_for(16, |i| assert!(i != 5, "chunk five")))
        }));
        assert!(r.is_err());
        // The team still works after a panic, and sleeping workers wake for the next op.
        team.rest();
        std::thread::sleep(Duration::from_millis(5));
        let n = AtomicUsize::new(0);
        team.install(|| {
            parallel_for(100, |_| {
                n.fetch_add(1, Relaxed);
            })
        });
        assert_eq!(n.load(Relaxed), 100);
    }

    #[test]
    fn chunk_helpers_cover_every_element_once() {
        let team = ThreadTeam::new(2).unwrap();
        let mut a = vec![0u32; 1001];
        let mut b = vec![0u32; 2002];
        team.install(|| {
            par_chunks_mut(&mut a, 10, |i, c| c.iter_mut().for_each(|v| *v += 1 + i as u32));
            par_chunks_mut2(&mut a, 10, &mut b, 20, |_, x, y| {
                x.iter_mut().for_each(|v| *v += 1000);
                y.iter_mut().for_each(|v| *v += 1);
            });
        });
        assert!(a.iter().enumerate().all(|(j, &v)| v == 1001 + (j / 10) as u32));
        assert!(b.iter().all(|&v| v == 1));
    }

    #[test]
    fn without_a_team_rayon_runs_the_chunks() {
        let n = AtomicUsize::new(0);
        parallel_for(10, |_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 10);
        assert_eq!(current_threads(), rayon::current_num_threads());
    }
}
