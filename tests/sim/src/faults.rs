//! The fault injector: crashes and restarts, partitions, stalled and slow
//! links, torn journal tails and flipped bytes in chunk files, drawn from
//! the seed.
//!
//! At most `m` chunkservers are impaired at a time (a stripe tolerates `m`
//! lost chunks): with `3+1` one, with `3+2` a second fault may start while
//! the first is on. A node whose files were damaged (torn tail, flipped
//! bytes) may still hold unrepaired blocks later, so from then on it is the
//! only node faults pick, one fault at a time: the invariants then promise
//! that no acknowledged write is lost, and the checker holds the cluster
//! to it.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checker::Model;
use crate::cluster::{cs_name, node_dir, Shape};

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The host's software is gone (its files stay); restarted at `until`.
    Crash,
    /// Cut off from every other host. Modelled by holding its links'
    /// messages until the partition heals, as TCP's retransmissions would
    /// deliver them: turmoil drops the segments of a partitioned link and
    /// its TCP never retransmits, so a connection open across a turmoil
    /// `partition` stays silently broken for ever, which real TCP does not.
    Partition,
    /// A short stall: messages held (a stopped or congested node).
    Hold,
    /// Its links are slow (up to 200–800 ms a message).
    Slow,
}

struct Active {
    node: usize,
    kind: Kind,
    until: u64,
}

pub struct Faults {
    rng: StdRng,
    root: PathBuf,
    active: Vec<Active>,
    /// Faults at once at most: the profile's `m`.
    max_active: usize,
    /// With `max_active > 1`: no second fault before this step.
    second_at: u64,
    /// The second fault of this spell has started (one per spell: the
    /// cluster then heals before the next spell).
    second_used: bool,
    /// The node whose files were damaged: the only one faults pick now.
    damaged: Option<usize>,
    /// No new fault before this step.
    quiet_until: u64,
    /// When the last fault ended.
    ended_at: u64,
    /// The run's latency bound, restored after a slow spell.
    max_latency_ms: u64,
    chunkservers: usize,
    pub count: u64,
}

fn others(node: usize, chunkservers: usize) -> Vec<String> {
    (1..=chunkservers)
        .filter(|i| *i != node)
        .map(cs_name)
        .chain((1..=crate::cluster::GATEWAYS).map(|g| format!("gw{g}")))
        .collect()
}

impl Faults {
    pub fn new(seed: u64, root: PathBuf, max_latency_ms: u64, shape: Shape) -> Faults {
        Faults {
            rng: StdRng::seed_from_u64(seed ^ 0xfa17_fa17_fa17_fa17),
            root,
            active: Vec::new(),
            max_active: usize::from(shape.m.max(1)),
            second_at: 0,
            second_used: false,
            damaged: None,
            quiet_until: 0,
            ended_at: 0,
            max_latency_ms,
            chunkservers: shape.chunkservers,
            count: 0,
        }
    }

    /// Called after every step of the fault phase.
    /// `healthy_checked`: the step of the latest check that found every
    /// chunk in service.
    pub fn tick(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        step: u64,
        healthy_checked: Option<u64>,
        model: &mut Model,
    ) -> Result<()> {
        let due: Vec<usize> = (0..self.active.len())
            .filter(|i| self.active.get(*i).is_some_and(|a| step >= a.until))
            .collect();
        if !due.is_empty() {
            for i in due.into_iter().rev() {
                let a = self.active.remove(i);
                self.end(sim, a, step, model)?;
            }
            if self.active.is_empty() {
                self.quiet_until = step + self.rng.random_range(100..1_500);
                self.ended_at = step;
            }
            return Ok(());
        }
        let node = if self.active.is_empty() {
            // The next spell of faults waits until the cluster has
            // repaired what the last one did (every chunk back in service).
            if step < self.quiet_until || healthy_checked.is_none_or(|h| h <= self.ended_at) {
                return Ok(());
            }
            self.damaged
                .unwrap_or_else(|| self.rng.random_range(1..=self.chunkservers))
        } else {
            // A second fault on another node while the first is on.
            if self.active.len() >= self.max_active
                || self.second_used
                || self.damaged.is_some()
                || step < self.second_at
            {
                return Ok(());
            }
            self.second_used = true;
            loop {
                let n = self.rng.random_range(1..=self.chunkservers);
                if self.active.iter().all(|a| a.node != n) {
                    break n;
                }
            }
        };
        if self.active.is_empty() && self.max_active > 1 {
            self.second_at = step + self.rng.random_range(0..3_000);
            self.second_used = false;
        }
        let kind = match self.rng.random_range(0..10) {
            0..=3 => Kind::Crash,
            4..=5 => Kind::Partition,
            6..=7 => Kind::Hold,
            _ => Kind::Slow,
        };
        let ms = match kind {
            Kind::Hold => self.rng.random_range(100..1_500),
            _ => self.rng.random_range(300..6_000),
        };
        let name = cs_name(node);
        match kind {
            Kind::Crash => sim.crash(name.as_str()),
            Kind::Partition | Kind::Hold => {
                for o in others(node, self.chunkservers) {
                    sim.hold(name.as_str(), o.as_str());
                }
            }
            Kind::Slow => {
                let lat = Duration::from_millis(self.rng.random_range(200..800));
                for o in others(node, self.chunkservers) {
                    sim.set_link_max_message_latency(name.as_str(), o.as_str(), lat);
                }
            }
        }
        self.count += 1;
        model.event(step, &format!("fault: {kind:?} {name} for {ms} ms"));
        self.active.push(Active {
            node,
            kind,
            until: step + ms,
        });
        Ok(())
    }

    /// Ends the active faults: after the fault phase.
    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, step: u64, model: &mut Model) -> Result<()> {
        for a in std::mem::take(&mut self.active) {
            self.end(sim, a, step, model)?;
        }
        Ok(())
    }

    fn end(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        a: Active,
        step: u64,
        model: &mut Model,
    ) -> Result<()> {
        let name = cs_name(a.node);
        match a.kind {
            Kind::Crash => {
                // While it is down its disk may be damaged: a write torn by
                // the crash, a bit rotting.
                if self.rng.random_bool(0.5) {
                    let what = self.damage(a.node)?;
                    if !what.is_empty() {
                        model.event(step, &format!("damage {name}: {what}"));
                        self.damaged = Some(a.node);
                    }
                }
                sim.bounce(name.as_str());
                model.event(step, &format!("restart {name}"));
            }
            Kind::Partition | Kind::Hold => {
                for o in others(a.node, self.chunkservers) {
                    sim.release(name.as_str(), o.as_str());
                }
                model.event(step, &format!("release {name}"));
            }
            Kind::Slow => {
                // Back to the run's latency.
                for o in others(a.node, self.chunkservers) {
                    sim.set_link_max_message_latency(
                        name.as_str(),
                        o.as_str(),
                        Duration::from_millis(self.max_latency_ms),
                    );
                }
                model.event(step, &format!("fast again {name}"));
            }
        }
        Ok(())
    }

    /// Damages a stopped node's files: a torn record at the tail of its
    /// journal (a write cut short by the crash) and/or bytes flipped in a
    /// chunk file. Returns what it did.
    fn damage(&mut self, node: usize) -> Result<String> {
        let dir = node_dir(&self.root, node);
        let mut did = Vec::new();
        if self.rng.random_bool(0.5) {
            let segs = sorted_files(&dir.join("journal"), "wj")?;
            if let Some(last) = segs.last() {
                // A frame header promising more bytes than follow.
                let len = self.rng.random_range(1..4096u32);
                let mut torn = len.to_be_bytes().to_vec();
                let n = self.rng.random_range(0..12);
                torn.extend((0..n).map(|_| self.rng.random::<u8>()));
                OpenOptions::new()
                    .append(true)
                    .open(last)
                    .and_then(|mut f| f.write_all(&torn))
                    .with_context(|| format!("tearing {}", last.display()))?;
                did.push(format!("torn journal tail ({} bytes)", torn.len()));
            }
        }
        if self.rng.random_bool(0.6) {
            let chunks = chunk_files(&dir.join("store").join("chunks"))?;
            if !chunks.is_empty() {
                let file = &chunks[self.rng.random_range(0..chunks.len())];
                // Within the part of the chunk the windows write (the first
                // rows of each extent).
                let at = self.rng.random_range(0..256 * 1024u64);
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(file)
                    .with_context(|| format!("opening {}", file.display()))?;
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at)?;
                b[0] ^= 1 << self.rng.random_range(0..8);
                f.write_all_at(&b, at)?;
                let rel = file.strip_prefix(&dir).unwrap_or(file);
                did.push(format!("flipped a bit at {at} of {}", rel.display()));
            }
        }
        Ok(did.join(", "))
    }
}

fn sorted_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == ext) {
                v.push(p);
            }
        }
    }
    v.sort();
    Ok(v)
}

fn chunk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for lun in rd {
            let lun = lun?.path();
            if lun.is_dir() {
                v.extend(sorted_files(&lun, "chunk")?);
            }
        }
    }
    v.sort();
    Ok(v)
}
