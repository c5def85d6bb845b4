//! One node's versioned state as every node holds it, and the two halves
//! of scuttlebutt reconciliation: choosing what a peer lacks within a byte
//! budget ([`select_delta`]) and applying what arrives ([`NodeRecord::apply`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use rand::RngCore;

use super::message::{encoded_len, Delta, Digest, DigestEntry, Entry, NodeDelta};
use super::state::{Key, Value, KEYS_PER_NODE_MAX};
use crate::identity::NodeId;

/// A key's value at a version; `None` is a tombstone.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub version: u64,
    pub value: Option<Value>,
    /// When this node learned of the tombstone (local ms), for its GC.
    pub deleted_at_ms: u64,
}

/// One incarnation of one node's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeRecord {
    pub generation: u64,
    /// Bumped by the owner every gossip round; drives failure detection.
    pub heartbeat: u64,
    /// Every version up to this is held (or was superseded or collected).
    pub max_version: u64,
    /// Tombstones up to this version were collected here: a peer that
    /// holds less must get the whole state (`reset`).
    pub gc_floor: u64,
    pub kvs: BTreeMap<Key, Versioned>,
}

/// What applying a node delta changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub keys_changed: bool,
    pub heartbeat_advanced: bool,
    /// Entries skipped: the delta started past what we hold, or the node
    /// is at `KEYS_PER_NODE_MAX`.
    pub skipped: bool,
}

impl NodeRecord {
    pub fn new(generation: u64) -> NodeRecord {
        NodeRecord {
            generation,
            ..NodeRecord::default()
        }
    }

    pub fn digest_entry(&self, node: &NodeId) -> DigestEntry {
        DigestEntry {
            node: node.clone(),
            generation: self.generation,
            heartbeat: self.heartbeat,
            max_version: self.max_version,
        }
    }

    /// Applies a delta of the same generation.
    pub fn apply(&mut self, nd: &NodeDelta, now_ms: u64) -> Applied {
        debug_assert_eq!(nd.generation, self.generation);
        let mut out = Applied::default();
        if nd.heartbeat > self.heartbeat {
            self.heartbeat = nd.heartbeat;
            out.heartbeat_advanced = true;
        }
        if !nd.reset && nd.from_version > self.max_version {
            // We hold less than the sender assumed (we collected or
            // restarted): applying would leave a hole. Our next digest
            // tells the truth and gets the right delta.
            out.skipped = !nd.entries.is_empty();
            return out;
        }
        if nd.reset {
            let before = self.kvs.len();
            self.kvs.retain(|_, v| v.version > nd.max_version);
            out.keys_changed |= self.kvs.len() != before;
            self.gc_floor = self.gc_floor.max(nd.gc_floor);
        }
        for e in &nd.entries {
            let full = self.kvs.len() >= KEYS_PER_NODE_MAX;
            match self.kvs.get_mut(&e.key) {
                Some(cur) if cur.version >= e.version => {}
                Some(cur) => {
                    *cur = Versioned {
                        version: e.version,
                        value: e.value.clone(),
                        deleted_at_ms: now_ms,
                    };
                    out.keys_changed = true;
                }
                None if full => out.skipped = true,
                None => {
                    self.kvs.insert(
                        e.key.clone(),
                        Versioned {
                            version: e.version,
                            value: e.value.clone(),
                            deleted_at_ms: now_ms,
                        },
                    );
                    out.keys_changed = true;
                }
            }
        }
        self.max_version = self.max_version.max(nd.max_version);
        out
    }

    /// Removes tombstones older than `tombstone_gc_ms`, raising `gc_floor`.
    pub fn collect_tombstones(&mut self, now_ms: u64, tombstone_gc_ms: u64) {
        let mut floor = self.gc_floor;
        self.kvs.retain(|_, v| {
            let keep =
                v.value.is_some() || now_ms < v.deleted_at_ms.saturating_add(tombstone_gc_ms);
            if !keep {
                floor = floor.max(v.version);
            }
            keep
        });
        self.gc_floor = floor;
    }

    pub fn live_keys(&self) -> usize {
        self.kvs.values().filter(|v| v.value.is_some()).count()
    }
}

/// One node's candidate delta, before the budget is applied.
struct Candidate<'a> {
    node: &'a NodeId,
    rec: &'a NodeRecord,
    from_version: u64,
    reset: bool,
    heartbeat_newer: bool,
    /// Stale entries, ascending by version.
    entries: Vec<(&'a Key, &'a Versioned)>,
    tiebreak: u64,
}

/// What `peer_digest`'s sender lacks of `records`, within `budget_bytes`
/// of encoded delta.
///
/// Scuttlebutt's rules: per node, entries go in ascending version order
/// and a truncated node delta claims only up to its last entry, so any
/// prefix is safe to apply. Nodes with the most outstanding entries go
/// first ("scuttle-depth"), ties in random order so that under a tight
/// budget every node's updates get through in turn. A node the peer does
/// not know (or knows in an older generation) gets its live keys only: a
/// fresh recipient needs no tombstones. A peer that is behind what our
/// tombstone collection removed gets a `reset`: the whole live state,
/// which must fit whole (it always fits in an empty message).
pub fn select_delta<'a>(
    records: impl Iterator<Item = (&'a NodeId, &'a NodeRecord)>,
    peer_digest: &Digest,
    budget_bytes: usize,
    rng: &mut dyn RngCore,
) -> Delta {
    let peer: HashMap<&NodeId, &DigestEntry> =
        peer_digest.entries.iter().map(|e| (&e.node, e)).collect();
    let mut cands = Vec::new();
    for (node, rec) in records {
        let (from_version, reset, heartbeat_newer) = match peer.get(node) {
            None => (0, false, true),
            Some(e) if e.generation < rec.generation => (0, false, true),
            Some(e) if e.generation > rec.generation => continue,
            Some(e) => {
                let hb = rec.heartbeat > e.heartbeat;
                if e.max_version < rec.gc_floor {
                    (0, true, hb)
                } else if e.max_version >= rec.max_version {
                    if !hb {
                        continue;
                    }
                    (rec.max_version, false, true)
                } else {
                    (e.max_version, false, hb)
                }
            }
        };
        let live_only = from_version == 0;
        // Only the heartbeat is new for most nodes in a steady state: skip
        // the scan of their keys.
        let mut entries: Vec<(&Key, &Versioned)> = if from_version >= rec.max_version {
            Vec::new()
        } else {
            rec.kvs
                .iter()
                .filter(|(_, v)| v.version > from_version && (!live_only || v.value.is_some()))
                .collect()
        };
        entries.sort_by_key(|(_, v)| v.version);
        cands.push(Candidate {
            node,
            rec,
            from_version,
            reset,
            heartbeat_newer,
            entries,
            tiebreak: rng.next_u64(),
        });
    }
    cands.sort_by_key(|c| {
        (
            Reverse(c.entries.len() + usize::from(c.heartbeat_newer)),
            c.tiebreak,
        )
    });

    let mut delta = Delta::default();
    // The delta's own overhead: its node count (≤ 1024: 2 bytes).
    let mut used = 2usize;
    for c in cands {
        let mut nd = NodeDelta {
            node: c.node.clone(),
            generation: c.rec.generation,
            heartbeat: c.rec.heartbeat,
            from_version: c.from_version,
            max_version: u64::MAX,
            reset: c.reset,
            gc_floor: c.rec.gc_floor,
            entries: Vec::new(),
        };
        // Sized with the largest max_version so the final value fits.
        let head = encoded_len(&nd);
        if used.saturating_add(head) > budget_bytes {
            continue;
        }
        let mut size = head;
        let mut complete = true;
        for (key, v) in &c.entries {
            let entry = Entry {
                key: (*key).clone(),
                version: v.version,
                value: v.value.clone(),
            };
            let len = encoded_len(&entry);
            if used.saturating_add(size).saturating_add(len) > budget_bytes {
                complete = false;
                break;
            }
            size += len;
            nd.entries.push(entry);
        }
        if !complete && c.reset {
            continue;
        }
        if nd.entries.is_empty() && !c.heartbeat_newer {
            continue;
        }
        nd.max_version = if complete {
            c.rec.max_version
        } else {
            nd.entries.last().map_or(c.from_version, |e| e.version)
        };
        used += size;
        delta.nodes.push(nd);
    }
    delta
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// `"a:g1 h5 [x@2 y@4 z@7-]"`: node a, generation 1, heartbeat 5,
    /// keys with versions (`-` = tombstone); max_version = highest version.
    fn records(spec: &str) -> BTreeMap<NodeId, NodeRecord> {
        let mut out = BTreeMap::new();
        for part in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rest) = part.split_once(':').unwrap();
            let (head, kvs) = rest.split_once('[').unwrap();
            let mut rec = NodeRecord::default();
            for w in head.split_whitespace() {
                let (tag, n) = w.split_at(1);
                let n: u64 = n.parse().unwrap();
                match tag {
                    "g" => rec.generation = n,
                    "h" => rec.heartbeat = n,
                    "f" => rec.gc_floor = n,
                    _ => panic!("bad tag {w}"),
                }
            }
            for kv in kvs.trim_end_matches(']').split_whitespace() {
                let (k, v) = kv.split_once('@').unwrap();
                let dead = v.ends_with('-');
                let version: u64 = v.trim_end_matches('-').parse().unwrap();
                rec.max_version = rec.max_version.max(version);
                rec.kvs.insert(
                    Key::new(k),
                    Versioned {
                        version,
                        value: (!dead).then(|| Value::new(&[b'v'; 20])),
                        deleted_at_ms: 0,
                    },
                );
            }
            out.insert(NodeId::new(name).unwrap(), rec);
        }
        out
    }

    /// `"a:g1 h5 v3"`: peer knows a at generation 1, heartbeat 5, version 3.
    fn digest(spec: &str) -> Digest {
        let mut d = Digest::default();
        for part in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rest) = part.split_once(':').unwrap();
            let mut e = DigestEntry {
                node: NodeId::new(name).unwrap(),
                generation: 0,
                heartbeat: 0,
                max_version: 0,
            };
            for w in rest.split_whitespace() {
                let (tag, n) = w.split_at(1);
                let n: u64 = n.parse().unwrap();
                match tag {
                    "g" => e.generation = n,
                    "h" => e.heartbeat = n,
                    "v" => e.max_version = n,
                    _ => panic!("bad tag {w}"),
                }
            }
            d.entries.push(e);
        }
        d
    }

    /// Renders a delta as `"a:h5 (3..7] R x@4 z@7-"`.
    fn render(d: &Delta) -> String {
        d.nodes
            .iter()
            .map(|n| {
                let mut s = format!(
                    "{}:h{} ({}..{}]{}",
                    n.node,
                    n.heartbeat,
                    n.from_version,
                    n.max_version,
                    if n.reset { " R" } else { "" }
                );
                for e in &n.entries {
                    s += &format!(
                        " {}@{}{}",
                        e.key.as_str(),
                        e.version,
                        if e.value.is_none() { "-" } else { "" }
                    );
                }
                s
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The one helper: our records, the peer's digest, a budget, and the
    /// delta we expect to send.
    fn check(ours: &str, peer: &str, budget: usize, expect: &str) {
        let recs = records(ours);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let d = select_delta(recs.iter(), &digest(peer), budget, &mut rng);
        let got = render(&d);
        assert_eq!(got, expect, "ours {ours:?} peer {peer:?} budget {budget}");
        let len = encoded_len(&d);
        assert!(len <= budget, "delta of {len} bytes over budget {budget}");
        // And the peer, applying it, reaches our versions where complete.
        let mut theirs = records("");
        for n in &d.nodes {
            let rec = theirs
                .entry(n.node.clone())
                .or_insert_with(|| NodeRecord::new(n.generation));
            rec.apply(n, 0);
        }
    }

    #[test]
    fn delta_table() {
        let big = 1 << 20;
        // Peer knows nothing: live keys only, all of them.
        check("a:g1 h5 [x@2 y@4 z@7-]", "", big, "a:h5 (0..7] x@2 y@4");
        // Peer is at version 3: newer entries, tombstones included.
        check(
            "a:g1 h5 [x@2 y@4 z@7-]",
            "a:g1 h5 v3",
            big,
            "a:h5 (3..7] y@4 z@7-",
        );
        // Up to date but an older heartbeat: heartbeat only.
        check("a:g1 h9 [x@2]", "a:g1 h5 v2", big, "a:h9 (2..2]");
        // Fully up to date: nothing.
        check("a:g1 h9 [x@2]", "a:g1 h9 v2", big, "");
        // The peer knows a newer generation: nothing (it will tell us).
        check("a:g1 h9 [x@2]", "a:g2 h1 v1", big, "");
        // We know a newer generation: everything, from zero.
        check("a:g2 h1 [x@1]", "a:g1 h50 v40", big, "a:h1 (0..1] x@1");
        // The peer is behind our collected tombstones: reset.
        check(
            "a:g1 h5 f6 [x@2 y@8]",
            "a:g1 h5 v3",
            big,
            "a:h5 (0..8] R x@2 y@8",
        );
        // Most outstanding entries first (scuttle-depth).
        check(
            "a:g1 h1 [p@1]; b:g1 h1 [p@1 q@2 r@3]",
            "",
            big,
            "b:h1 (0..3] p@1 q@2 r@3; a:h1 (0..1] p@1",
        );
        // A tight budget truncates in version order; the claim stops at
        // the last entry sent.
        check("a:g1 h1 [p@1 q@2 r@3]", "", 75, "a:h1 (0..2] p@1 q@2");
        // A reset that does not fit is not sent in part.
        check("a:g1 h5 f6 [x@2 y@8]", "a:g1 h5 v3", 60, "");
    }

    #[test]
    fn applying_respects_from_version_and_reset() {
        let mut rec = records("a:g1 h1 [x@1]")
            .remove(&NodeId::new("a").unwrap())
            .unwrap();
        let nd = |from, max, reset, entries: &[(&str, u64)]| NodeDelta {
            node: NodeId::new("a").unwrap(),
            generation: 1,
            heartbeat: 2,
            from_version: from,
            max_version: max,
            reset,
            gc_floor: 0,
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: Key::new(k),
                    version: *v,
                    value: Some(Value::new(b"v")),
                })
                .collect(),
        };
        // Starts past what we hold: keys skipped, heartbeat taken.
        let a = rec.apply(&nd(5, 6, false, &[("y", 6)]), 0);
        assert!(a.heartbeat_advanced && a.skipped && !a.keys_changed);
        assert_eq!(rec.max_version, 1);
        // In order: applied.
        let a = rec.apply(&nd(1, 6, false, &[("y", 6)]), 0);
        assert!(a.keys_changed);
        assert_eq!(rec.max_version, 6);
        // A reset drops what it does not list.
        rec.apply(&nd(0, 9, true, &[("z", 9)]), 0);
        assert_eq!(rec.kvs.keys().map(Key::as_str).collect::<Vec<_>>(), ["z"]);
    }
}
