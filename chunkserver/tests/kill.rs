//! SIGKILL at random moments during a stream of writes, hundreds of times:
//! after every restart each acknowledged write reads back exactly, a write
//! in flight at the kill reads back as its old or new contents (or as a
//! checksum error, never as other bytes), and at the end everything
//! acknowledged is there.
//!
//! `WEFT_KILL_ROUNDS` sets the number of kills (default 200);
//! `WEFT_KILL_SEED` replays a run (the seed is printed).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use fabric::identity::Role;
use fabric::rpc::RpcError;
use fabric::wire::chunk::{chunk_error, ChunkRef, Durability};
use rand::{Rng, SeedableRng};

const BLOCK: u64 = 4096;
const CHUNK_BLOCKS: u64 = 64;
const WRITERS: usize = 3;
const BLOCKS_PER_WRITE_MAX: u64 = 4;
const KILL_ROUNDS_DEFAULT: usize = 200;
const WRITE_MS_MIN: u64 = 5;
const WRITE_MS_MAX: u64 = 50;
const EPOCH: u64 = 1;

/// What one writer's chunk must hold: per block, the tag of the last
/// acknowledged write (0: never written, zeros), and the tags of writes
/// that were in flight when the server died.
struct Model {
    chunk: ChunkRef,
    acked: Vec<u64>,
    pending: Vec<Vec<u64>>,
}

fn contents(tag: u64, block: u64) -> Vec<u8> {
    if tag == 0 {
        vec![0; BLOCK as usize]
    } else {
        block_pattern(tag, block)
    }
}

#[derive(Default)]
struct Counters {
    acked_writes: AtomicU64,
    inflight_new: AtomicU64,
    inflight_old: AtomicU64,
    inflight_checksum: AtomicU64,
}

/// Checks every block of the model's chunk against it, resolving writes
/// that were in flight; a torn block (checksum error) is punched, as
/// repair would rewrite it.
async fn verify(t: &Tester, m: &mut Model, counters: &Counters, round: usize, seed: u64) {
    let whole = t
        .read(m.chunk, EPOCH, 0, (CHUNK_BLOCKS * BLOCK) as u32)
        .await;
    for b in 0..CHUNK_BLOCKS {
        let bi = b as usize;
        let got = match &whole {
            Ok(data) => Ok(data.slice((bi * BLOCK as usize)..((bi + 1) * BLOCK as usize))),
            Err(_) => t.read(m.chunk, EPOCH, b * BLOCK, BLOCK as u32).await,
        };
        let ctx = || format!("seed {seed} round {round} chunk {} block {b}", m.chunk);
        match got {
            Ok(data) if data[..] == contents(m.acked[bi], b)[..] => {
                if !m.pending[bi].is_empty() {
                    counters.inflight_old.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(data) => {
                let Some(&tag) = m.pending[bi]
                    .iter()
                    .find(|&&tag| data[..] == contents(tag, b)[..])
                else {
                    panic!(
                        "{}: wrong data (acked tag {}, in flight {:?})",
                        ctx(),
                        m.acked[bi],
                        m.pending[bi]
                    );
                };
                m.acked[bi] = tag;
                counters.inflight_new.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if app_code(&e) == Some(chunk_error::CHECKSUM) && !m.pending[bi].is_empty() => {
                t.punch(m.chunk, EPOCH, b * BLOCK, BLOCK)
                    .await
                    .unwrap_or_else(|e| panic!("{}: punch: {e}", ctx()));
                m.acked[bi] = 0;
                counters.inflight_checksum.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!(
                "{}: {e} (acked tag {}, in flight {:?})",
                ctx(),
                m.acked[bi],
                m.pending[bi]
            ),
        }
        m.pending[bi].clear();
    }
}

/// Writes to its own chunk, one write at a time, until the server dies or
/// `stop` is set; keeps the model.
async fn writer(
    t: Tester,
    mut m: Model,
    id: u64,
    stop: Arc<AtomicBool>,
    next_tag: Arc<AtomicU64>,
    counters: Arc<Counters>,
    mut rng: rand::rngs::StdRng,
) -> Model {
    while !stop.load(Ordering::Relaxed) {
        let n = rng.random_range(1..=BLOCKS_PER_WRITE_MAX);
        let first = rng.random_range(0..=CHUNK_BLOCKS - n);
        let tag = (id << 48) | next_tag.fetch_add(1, Ordering::Relaxed);
        let mut data = Vec::with_capacity((n * BLOCK) as usize);
        let mut expect_delta = Vec::with_capacity((n * BLOCK) as usize);
        for b in first..first + n {
            let new = contents(tag, b);
            let old = contents(m.acked[b as usize], b);
            expect_delta.extend(old.iter().zip(&new).map(|(o, n)| o ^ n));
            data.extend(new);
            m.pending[b as usize].push(tag);
        }
        let durability = if rng.random_bool(0.3) {
            Durability::Stable
        } else {
            Durability::Buffered
        };
        match t
            .write(m.chunk, EPOCH, first * BLOCK, Bytes::from(data), durability)
            .await
        {
            Ok(delta) => {
                assert!(
                    delta[..] == expect_delta[..],
                    "old ⊕ new wrong for chunk {} blocks {first}+{n}",
                    m.chunk
                );
                for b in first..first + n {
                    m.acked[b as usize] = tag;
                    m.pending[b as usize].clear();
                }
                counters.acked_writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e @ RpcError::Application { .. }) => {
                panic!("chunk {}: write refused: {e}", m.chunk)
            }
            // The server died under us: the write may or may not be there.
            Err(_) => break,
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_never_loses_an_acknowledged_write() {
    let rounds: usize = std::env::var("WEFT_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILL_ROUNDS_DEFAULT);
    let seed: u64 = std::env::var("WEFT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed}, {rounds} kills");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut node = Node::new(Settings::default());
    let t = node.client(Role::Chunkserver, "tester");
    node.start_ready(&t).await;
    let mut models: Vec<Model> = (0..WRITERS)
        .map(|w| Model {
            chunk: chunk(7, w as u64, 0),
            acked: vec![0; CHUNK_BLOCKS as usize],
            pending: vec![Vec::new(); CHUNK_BLOCKS as usize],
        })
        .collect();
    for m in &models {
        t.create(m.chunk, CHUNK_BLOCKS * BLOCK, EPOCH)
            .await
            .unwrap();
    }
    let next_tag = Arc::new(AtomicU64::new(1));
    let counters = Arc::new(Counters::default());
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (w, m) in models.drain(..).enumerate() {
            tasks.push(tokio::spawn(writer(
                t.clone(),
                m,
                w as u64,
                stop.clone(),
                next_tag.clone(),
                counters.clone(),
                rand::rngs::StdRng::seed_from_u64(rng.random()),
            )));
        }
        tokio::time::sleep(Duration::from_millis(
            rng.random_range(WRITE_MS_MIN..=WRITE_MS_MAX),
        ))
        .await;
        node.kill();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            models.push(task.await.unwrap());
        }
        node.start_ready(&t).await;
        for m in &mut models {
            verify(&t, m, &counters, round, seed).await;
        }
    }
    // A clean stop and start: still all there, nothing in flight.
    node.terminate();
    node.start_ready(&t).await;
    for m in &mut models {
        verify(&t, m, &counters, rounds, seed).await;
    }
    node.terminate();
    let c = &counters;
    eprintln!(
        "{rounds} kills in {:.1} s: {} writes acknowledged; writes in flight at a kill: \
         {} found new, {} found old, {} torn (checksum error)",
        started.elapsed().as_secs_f64(),
        c.acked_writes.load(Ordering::Relaxed),
        c.inflight_new.load(Ordering::Relaxed),
        c.inflight_old.load(Ordering::Relaxed),
        c.inflight_checksum.load(Ordering::Relaxed),
    );
    assert!(c.acked_writes.load(Ordering::Relaxed) > rounds as u64);
}
