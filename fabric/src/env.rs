//! The environment as a parameter (STYLE.md §3): the wall clock, blocking
//! work and the byte transport, each chosen at run time between the real
//! one and, when the `sim` feature is built in and the caller runs inside a
//! turmoil simulation, a deterministic one (`docs/simulation.md`).
//!
//! Outside a simulation every function here is the plain real thing: the
//! `sim` feature only adds a branch taken when `turmoil::in_simulation()`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whether this code runs inside a deterministic simulation (a turmoil host
/// of `weft-sim`). Always false without the `sim` feature.
pub fn simulated() -> bool {
    #[cfg(feature = "sim")]
    {
        turmoil::in_simulation()
    }
    #[cfg(not(feature = "sim"))]
    {
        false
    }
}

/// Milliseconds since the Unix epoch: the wall clock, or the simulation's
/// logical clock (which only moves when the simulation steps), so leases
/// and timestamps replay identically from a seed.
pub fn unix_now_ms() -> u64 {
    #[cfg(feature = "sim")]
    if let Some(d) = turmoil::since_epoch() {
        return d.as_millis() as u64;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs blocking work (file I/O, `fdatasync`, LMDB commits) off the async
/// threads: on tokio's blocking pool normally, inline in a simulation, where
/// a thread finishing at a wall-clock moment would make the schedule depend
/// on the machine rather than on the seed.
pub async fn blocking<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if simulated() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await
}

/// Whether the caller may block its thread with
/// `tokio::task::block_in_place`, which first hands the worker's other
/// tasks to another thread: on a worker of a multi-thread runtime, outside
/// a simulation (which runs every host on one thread, in a fixed order).
/// A call blocked that way costs no wake-up, where [`blocking`] costs two.
pub fn can_block_in_place() -> bool {
    !simulated()
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// A random number for a component's own choices (gossip peers, back-off
/// jitter): from the OS normally; in a simulation from one generator seeded
/// by the simulation ([`reseed`]), so the run depends only on its seed (the
/// simulation runs every host on one thread, in a fixed order).
pub fn random_u64() -> u64 {
    #[cfg(feature = "sim")]
    if simulated() {
        return SIM_RNG.with(|s| {
            // SplitMix64.
            let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            s.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        });
    }
    rand::random()
}

/// A random number in [0, 1), from [`random_u64`].
pub fn random_f64() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(feature = "sim")]
thread_local! {
    static SIM_RNG: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Seeds the generator behind [`random_u64`] in a simulation; the
/// simulation calls it once per seed, before any host starts.
#[cfg(feature = "sim")]
pub fn reseed(seed: u64) {
    SIM_RNG.with(|s| s.set(seed));
}

/// The async runtime of a weft process with `[runtime] worker_threads`:
/// 0 is tokio's default (a thread per CPU, or `TOKIO_WORKER_THREADS`); 1
/// is tokio's current-thread runtime, everything on the calling thread,
/// so no wake-up crosses threads (where several weft processes share a few
/// cores this cost ~9 % less CPU per write than one worker of the
/// multi-thread runtime: `docs/benchmarks.md`); more is that many workers.
pub fn runtime_builder(worker_threads: usize) -> tokio::runtime::Builder {
    let mut b = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if worker_threads > 1 {
        b.worker_threads(worker_threads);
    }
    b.enable_all();
    b
}
