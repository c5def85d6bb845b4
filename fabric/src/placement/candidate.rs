//! What placement knows of one node: its admin state (from the catalogue),
//! and what it gossips (availability, capacity, location, performance).

use crate::gossip::state::{Availability, Capacity, Location, View};
use crate::identity::{NodeId, Role};
use crate::metadata::AdminState;

/// p99 latency at which a node gets the whole latency penalty: a busy
/// spinning disk. Below it the penalty grows linearly.
pub const LATENCY_US_P99_SLOW: u32 = 20_000;
/// Queue depth at which a node gets the whole load penalty.
pub const QUEUE_DEPTH_BUSY: u32 = 64;
/// The performance factor is counted in steps of 1/32 (so that gossip
/// noise in a node's latency rarely changes its weight at all).
pub const PERF_STEPS: u32 = 32;
/// Steps of penalty for latency, and for load, at most: together they take
/// the factor from 1 down to 1/2, never lower, so free capacity dominates.
pub const PERF_PENALTY_STEPS_MAX: u32 = 8;

/// A node's recent performance, as placement uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perf {
    /// The worse of its read and write p99 latencies.
    pub latency_us_p99: u32,
    pub queue_depth: u32,
}

/// One node as placement sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub node: NodeId,
    pub admin: AdminState,
    pub availability: Availability,
    pub capacity: Capacity,
    /// Bytes placement leaves free on this node (headroom for rebuilds and
    /// for thin chunks to grow): a node with no more than this free is full.
    pub reserve_bytes: u64,
    pub location: Location,
    /// `None`: the node published no performance record yet; it gets the
    /// neutral factor.
    pub perf: Option<Perf>,
}

impl Candidate {
    /// Total minus used minus reserved (promised to writes in flight).
    pub fn free_bytes(&self) -> u64 {
        let c = &self.capacity;
        c.bytes_total
            .saturating_sub(c.bytes_used)
            .saturating_sub(c.bytes_reserved)
    }

    /// Free bytes above the reserve: what placement may fill, and the
    /// node's weight.
    pub fn room_bytes(&self) -> u64 {
        self.free_bytes().saturating_sub(self.reserve_bytes)
    }

    /// No room above the reserve.
    pub fn is_full(&self) -> bool {
        self.room_bytes() == 0
    }

    /// The performance factor in steps of `1/PERF_STEPS`: from 32 (idle,
    /// fast) down to 16 (p99 ≥ [`LATENCY_US_P99_SLOW`] and queue depth ≥
    /// [`QUEUE_DEPTH_BUSY`]); 24, the middle, without a record.
    pub fn perf_steps(&self) -> u32 {
        let Some(p) = self.perf else {
            return PERF_STEPS - PERF_PENALTY_STEPS_MAX;
        };
        let penalty = |value: u32, full: u32| {
            // u64: value × 8 cannot overflow.
            (u64::from(value.min(full)) * u64::from(PERF_PENALTY_STEPS_MAX) / u64::from(full))
                as u32
        };
        PERF_STEPS
            - penalty(p.latency_us_p99, LATENCY_US_P99_SLOW)
            - penalty(p.queue_depth, QUEUE_DEPTH_BUSY)
    }

    /// The performance factor in [0.5, 1.0] that multiplies the weight.
    pub fn perf_factor(&self) -> f64 {
        f64::from(self.perf_steps()) / f64::from(PERF_STEPS)
    }
}

/// Candidates from the gossiped view: every node that says it is a
/// chunkserver and publishes a capacity record, in node id order, with
/// its admin state from `admin` (the catalogue) and `reserve_bytes` of
/// headroom each. Nodes of any availability are included, so that an
/// error can say how many were dead or suspect; `place` skips them.
/// A node without a location record gets an empty one (its host is then
/// its node id).
pub fn candidates(
    view: &View,
    admin: impl Fn(&NodeId) -> AdminState,
    reserve_bytes: u64,
) -> Vec<Candidate> {
    view.nodes
        .iter()
        .filter(|(_, n)| n.role() == Some(Role::Chunkserver))
        .filter_map(|(id, n)| {
            Some(Candidate {
                node: id.clone(),
                admin: admin(id),
                availability: n.availability,
                capacity: n.capacity()?,
                reserve_bytes,
                location: n.location().unwrap_or_default(),
                perf: n.performance().map(|p| Perf {
                    latency_us_p99: p.read_latency_us_p99.max(p.write_latency_us_p99),
                    queue_depth: p.queue_depth,
                }),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::gossip::state::{keys, Key, NodeState, Performance, Value};

    fn state(role: Role, cap: Option<Capacity>, perf: Option<Performance>) -> NodeState {
        let mut keys = BTreeMap::new();
        let mut put = |k: &str, v: Value| {
            keys.insert(Key::new(k), (1, v));
        };
        put(keys::ROLE, Value::encode_record(&role).unwrap());
        if let Some(c) = cap {
            put(keys::CAPACITY, Value::encode_record(&c).unwrap());
        }
        if let Some(p) = perf {
            put(keys::PERFORMANCE, Value::encode_record(&p).unwrap());
        }
        NodeState {
            generation: 1,
            availability: Availability::Alive,
            keys,
        }
    }

    #[test]
    fn from_view() {
        let cap = Capacity {
            bytes_total: 100,
            bytes_used: 30,
            bytes_reserved: 10,
            chunks: 3,
        };
        let perf = Performance {
            read_latency_us_p99: 5_000,
            write_latency_us_p99: 10_000,
            queue_depth: 32,
            ..Performance::default()
        };
        let mut view = View::default();
        let id = |s: &str| NodeId::new(s).unwrap();
        view.nodes
            .insert(id("cs-1"), state(Role::Chunkserver, Some(cap), Some(perf)));
        view.nodes
            .insert(id("cs-2"), state(Role::Chunkserver, None, None));
        view.nodes
            .insert(id("gw-1"), state(Role::Gateway, Some(cap), None));
        view.nodes
            .insert(id("cs-3"), state(Role::Chunkserver, Some(cap), None));
        let got = candidates(
            &view,
            |n| {
                if n.as_str() == "cs-3" {
                    AdminState::Draining
                } else {
                    AdminState::In
                }
            },
            15,
        );
        let ids: Vec<&str> = got.iter().map(|c| c.node.as_str()).collect();
        assert_eq!(ids, ["cs-1", "cs-3"]);
        let c = &got[0];
        assert_eq!(
            (c.free_bytes(), c.room_bytes(), c.is_full()),
            (60, 45, false)
        );
        assert_eq!(c.location.host, "");
        // Latency 10 ms of 20: 4 steps; queue 32 of 64: 4 steps.
        assert_eq!(c.perf_steps(), 24);
        assert_eq!(got[1].admin, AdminState::Draining);
        assert_eq!(got[1].perf, None);
    }

    /// One row per case: `(p99 µs, queue depth) or None → steps`.
    #[test]
    fn perf_factor_is_bounded() {
        let table: &[(Option<(u32, u32)>, u32)] = &[
            (None, 24),
            (Some((0, 0)), 32),
            (Some((u32::MAX, u32::MAX)), 16),
            (Some((LATENCY_US_P99_SLOW, 0)), 24),
            (Some((0, QUEUE_DEPTH_BUSY / 2)), 28),
            (Some((2_499, 0)), 32),
            (Some((2_500, 0)), 31),
        ];
        for (perf, want) in table {
            let c = Candidate {
                node: NodeId::new("n").unwrap(),
                admin: AdminState::In,
                availability: Availability::Alive,
                capacity: Capacity::default(),
                reserve_bytes: 0,
                location: Location::default(),
                perf: perf.map(|(l, q)| Perf {
                    latency_us_p99: l,
                    queue_depth: q,
                }),
            };
            assert_eq!(c.perf_steps(), *want, "{perf:?}");
            assert!((0.5..=1.0).contains(&c.perf_factor()));
        }
    }
}
