//! `weft status`: the cluster's health at a glance, the way `ceph -s`
//! shows it, from the catalogue (`Summary`), the Raft group (`Cluster`)
//! and, for capacity, the gossiped view: capacity is soft state that each
//! chunkserver publishes (`docs/gossip.md`), not something the metadata
//! holds. The CLI reads it as a gossip observer, waiting at most
//! [`GOSSIP_WAIT_MS`]; without it, status says capacity is unknown.

use std::time::Duration;

use clap::Args;
use fabric::gossip::View;
use fabric::metadata::catalogue::AdminState;
use fabric::metadata::rpc::{ClusterInfo, Summary};
use fabric::NodeId;
use serde::Serialize;

use crate::error::CliResult;
use crate::render::{emit, now_ms, LeaseView, OutputArg};
use crate::session::Session;
use crate::units::format_size;
use crate::GlobalArgs;

/// How long `weft status` waits for gossip to bring every live node's
/// capacity (the first exchange brings it all, in tens of ms; a slow or
/// cut-off node must not hold the command up).
pub const GOSSIP_WAIT_MS: u64 = 2_000;
/// A node in service whose used bytes reach this share of its usable
/// capacity (capacity less the reserve) is near full: placement weighs
/// it down, and at 100 % it refuses new chunks.
pub const NEARFULL_PERCENT: u64 = 90;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Serialize, Debug)]
pub struct StatusJson {
    /// `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR`.
    pub health: &'static str,
    pub checks: Vec<Check>,
    pub metadata: MetadataJson,
    pub nodes: NodesJson,
    pub luns: LunsJson,
    pub targets: usize,
    pub extents: ExtentsJson,
    /// `null` when gossip brought no node's capacity.
    pub capacity: Option<CapacityJson>,
}

/// Capacity of the chunkservers (not removed), as they gossip it.
#[derive(Serialize, Debug, PartialEq)]
pub struct CapacityJson {
    /// Nodes whose capacity gossip gave, of `nodes`.
    pub nodes_reporting: usize,
    pub nodes: usize,
    pub total_bytes: u64,
    pub total: String,
    pub used_bytes: u64,
    pub used: String,
    /// `used_bytes` of `total_bytes`, percent, one decimal.
    pub used_percent: f64,
    /// Room for new chunks: on nodes in service, capacity less what is
    /// used and the reserve each node keeps.
    pub free_bytes: u64,
    pub free: String,
    pub reserved_bytes: u64,
    pub chunks: u64,
}

/// Something an operator should look at.
#[derive(Serialize, Debug)]
pub struct Check {
    /// `warn` or `error`.
    pub severity: &'static str,
    /// Stable name for scripts, e.g. `EXTENTS_DEGRADED`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize, Debug)]
pub struct MetadataJson {
    pub leader: Option<String>,
    pub term: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// Raft index the answering replica has applied.
    pub last_applied: u64,
    /// Raft index of the last change to the catalogue.
    pub revision: u64,
}

#[derive(Serialize, Debug, Default)]
pub struct NodesJson {
    /// Nodes not removed.
    pub total: usize,
    #[serde(rename = "in")]
    pub in_service: usize,
    pub draining: usize,
    pub out: usize,
    pub removed: usize,
    /// Of the nodes not removed: holding a valid lease (serving).
    pub lease_valid: usize,
    pub lease_expired: usize,
    pub no_lease: usize,
}

#[derive(Serialize, Debug)]
pub struct LunsJson {
    pub count: usize,
    pub provisioned_bytes: u64,
    pub provisioned: String,
}

#[derive(Serialize, Debug)]
pub struct ExtentsJson {
    pub allocated: u64,
    /// Extents with a chunk missing or being rebuilt.
    pub degraded: u64,
    pub degraded_by_lun: Vec<LunCount>,
}

#[derive(Serialize, Debug)]
pub struct LunCount {
    pub name: String,
    pub extents: u64,
}

pub fn run(global: &GlobalArgs, a: StatusArgs) -> CliResult<()> {
    let session = Session::open(global)?;
    let s = session.summary()?;
    let c = session.cluster()?;
    let now = now_ms();
    // Wait for the nodes that should be gossiping: those with a lease.
    let live: Vec<NodeId> = s
        .nodes
        .iter()
        .filter(|n| n.admin != AdminState::Removed)
        .filter(|n| {
            s.leases
                .iter()
                .any(|l| l.node == n.id && LeaseView::new(l, now).valid)
        })
        .map(|n| n.id.clone())
        .collect();
    let view = session.gossip_view(&live, Duration::from_millis(GOSSIP_WAIT_MS));
    let j = status(&s, &c, view.as_deref(), now);
    emit(a.out, &j, || text(&j));
    Ok(())
}

/// Capacity of the catalogue's chunkservers (not removed) in `view`.
pub fn capacity(s: &Summary, view: &View) -> Option<CapacityJson> {
    let mut c = CapacityJson {
        nodes_reporting: 0,
        nodes: 0,
        total_bytes: 0,
        total: String::new(),
        used_bytes: 0,
        used: String::new(),
        used_percent: 0.0,
        free_bytes: 0,
        free: String::new(),
        reserved_bytes: 0,
        chunks: 0,
    };
    for n in s.nodes.iter().filter(|n| n.admin != AdminState::Removed) {
        c.nodes += 1;
        let Some(cap) = view.get(&n.id).and_then(|st| st.capacity()) else {
            continue;
        };
        c.nodes_reporting += 1;
        c.total_bytes += cap.bytes_total;
        c.used_bytes += cap.bytes_used;
        c.reserved_bytes += cap.bytes_reserved;
        c.chunks += cap.chunks;
        if n.admin == AdminState::In {
            c.free_bytes += cap
                .bytes_total
                .saturating_sub(cap.bytes_used.saturating_add(cap.bytes_reserved));
        }
    }
    if c.nodes_reporting == 0 {
        return None;
    }
    c.total = format_size(c.total_bytes);
    c.used = format_size(c.used_bytes);
    c.free = format_size(c.free_bytes);
    if c.total_bytes > 0 {
        c.used_percent = (c.used_bytes as f64 * 1000.0 / c.total_bytes as f64).round() / 10.0;
    }
    Some(c)
}

/// Nodes in service at or past [`NEARFULL_PERCENT`] of their usable
/// capacity, with their usage (`cs-2 (93 %)`, `cs-3 (full)`).
fn nearfull(s: &Summary, view: &View) -> Vec<String> {
    s.nodes
        .iter()
        .filter(|n| n.admin == AdminState::In)
        .filter_map(|n| {
            let cap = view.get(&n.id)?.capacity()?;
            let usable = cap.bytes_total.saturating_sub(cap.bytes_reserved);
            if usable == 0 || cap.bytes_used >= usable {
                return Some(format!("{} (full)", n.id));
            }
            let percent = cap.bytes_used.saturating_mul(100) / usable;
            (percent >= NEARFULL_PERCENT).then(|| format!("{} ({percent} %)", n.id))
        })
        .collect()
}

/// The status of a catalogue and Raft group at `now_ms` (CLI clock), with
/// capacity from a gossiped `view` if there is one.
pub fn status(s: &Summary, c: &ClusterInfo, view: Option<&View>, now_ms: u64) -> StatusJson {
    let mut checks = Vec::new();
    let mut nodes = NodesJson::default();
    let mut unleased = Vec::new();
    for n in &s.nodes {
        match n.admin {
            AdminState::In => nodes.in_service += 1,
            AdminState::Draining => nodes.draining += 1,
            AdminState::Out => nodes.out += 1,
            AdminState::Removed => {
                nodes.removed += 1;
                continue;
            }
        }
        nodes.total += 1;
        let lease = s
            .leases
            .iter()
            .find(|l| l.node == n.id)
            .map(|l| LeaseView::new(l, now_ms));
        match &lease {
            Some(l) if l.valid => nodes.lease_valid += 1,
            Some(_) => nodes.lease_expired += 1,
            None => nodes.no_lease += 1,
        }
        let serving = matches!(n.admin, AdminState::In | AdminState::Draining);
        if serving && !lease.as_ref().is_some_and(|l| l.valid) {
            unleased.push(format!("{} ({})", n.id, LeaseView::text(lease.as_ref())));
        }
    }
    if c.leader.is_none() {
        checks.push(Check {
            severity: "error",
            code: "NO_METADATA_LEADER",
            message: "the metadata group has no leader: no change can be made".into(),
        });
    }
    if c.voters.len().saturating_sub(1) / 2 == 0 {
        checks.push(Check {
            severity: "warn",
            code: "METADATA_NO_REDUNDANCY",
            message: format!(
                "{} metadata voter(s): losing one stops every change (run 3 or 5)",
                c.voters.len()
            ),
        });
    }
    if nodes.in_service == 0 {
        checks.push(Check {
            severity: "warn",
            code: "NO_NODE_IN_SERVICE",
            message: "no node is in service: no new extent can be placed".into(),
        });
    }
    if !unleased.is_empty() {
        checks.push(Check {
            severity: "warn",
            code: "NODE_LEASE_LAPSED",
            message: format!(
                "{} node(s) in service without a valid lease (down, or cut off from the metadata): {}",
                unleased.len(),
                unleased.join(", ")
            ),
        });
    }
    let name_of = |id: u64| {
        s.luns
            .iter()
            .find(|l| l.id == id)
            .map_or_else(|| format!("id {id}"), |l| l.name.clone())
    };
    let degraded_by_lun: Vec<LunCount> = s
        .degraded
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| LunCount {
            name: name_of(*id),
            extents: *n,
        })
        .collect();
    let degraded: u64 = degraded_by_lun.iter().map(|d| d.extents).sum();
    if degraded > 0 {
        checks.push(Check {
            severity: "warn",
            code: "EXTENTS_DEGRADED",
            message: format!(
                "{degraded} extent(s) degraded, with less redundancy than their profile: {}",
                degraded_by_lun
                    .iter()
                    .map(|d| format!("LUN {} {}", d.name, d.extents))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let full = view.map(|v| nearfull(s, v)).unwrap_or_default();
    if !full.is_empty() {
        checks.push(Check {
            severity: "warn",
            code: "NODE_NEARFULL",
            message: format!(
                "{} node(s) in service near full (used of capacity less reserve): {}; add capacity or nodes",
                full.len(),
                full.join(", ")
            ),
        });
    }
    let health = if checks.iter().any(|c| c.severity == "error") {
        "HEALTH_ERR"
    } else if checks.is_empty() {
        "HEALTH_OK"
    } else {
        "HEALTH_WARN"
    };
    let provisioned: u64 = s.luns.iter().map(|l| l.size_bytes).sum();
    StatusJson {
        health,
        checks,
        metadata: MetadataJson {
            leader: c.leader.as_ref().map(|l| l.to_string()),
            term: c.term,
            voters: sorted(&c.voters),
            learners: sorted(&c.learners),
            last_applied: c.last_applied,
            revision: s.revision,
        },
        nodes,
        luns: LunsJson {
            count: s.luns.len(),
            provisioned_bytes: provisioned,
            provisioned: format_size(provisioned),
        },
        targets: s.targets.len(),
        extents: ExtentsJson {
            allocated: s.extents.iter().map(|(_, n)| n).sum(),
            degraded,
            degraded_by_lun,
        },
        capacity: view.and_then(|v| capacity(s, v)),
    }
}

fn sorted(ids: &[fabric::NodeId]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    v.sort();
    v
}

fn text(j: &StatusJson) -> String {
    let mut t = String::from("  cluster:\n");
    t.push_str(&format!("    health: {}\n", j.health));
    for c in &j.checks {
        t.push_str(&format!("            {}\n", c.message));
    }
    let m = &j.metadata;
    let learners = if m.learners.is_empty() {
        String::new()
    } else {
        format!(", learners {}", m.learners.join(", "))
    };
    t.push_str(&format!(
        "\n  services:\n    metadata: {} voters ({}){learners}, leader {}, term {}, applied index {}\n",
        m.voters.len(),
        m.voters.join(", "),
        m.leader.as_deref().unwrap_or("none"),
        m.term,
        m.last_applied
    ));
    let n = &j.nodes;
    t.push_str(&format!(
        "    nodes:    {} nodes: {} in, {} draining, {} out; {} with a valid lease{}\n",
        n.total,
        n.in_service,
        n.draining,
        n.out,
        n.lease_valid,
        if n.removed > 0 {
            format!(" ({} removed)", n.removed)
        } else {
            String::new()
        }
    ));
    t.push_str(&format!(
        "\n  data:\n    luns:     {} LUNs, {} provisioned; {} targets\n    extents:  {} allocated, {} degraded\n",
        j.luns.count, j.luns.provisioned, j.targets, j.extents.allocated, j.extents.degraded
    ));
    match &j.capacity {
        Some(c) => {
            let partial = if c.nodes_reporting < c.nodes {
                format!(" ({} of {} nodes reporting)", c.nodes_reporting, c.nodes)
            } else {
                String::new()
            };
            t.push_str(&format!(
                "    usage:    {} used of {} ({:.1} %), {} free for new chunks{partial}\n",
                c.used, c.total, c.used_percent, c.free
            ));
        }
        None => t.push_str(
            "    usage:    unknown (no chunkserver's capacity came by gossip within 2 s)\n",
        ),
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::metadata::catalogue::{Lease, NodeEntry};
    use fabric::NodeId;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn node(name: &str, admin: AdminState) -> NodeEntry {
        NodeEntry {
            id: id(name),
            admin,
            added_ms: 0,
        }
    }

    /// Capacity adds up over the nodes gossip reports; free space counts
    /// only nodes in service, less their reserve; a node in service near
    /// full is a warning.
    #[test]
    fn capacity_from_gossip() {
        use fabric::gossip::state::{keys, Capacity, Key, NodeState, Value};
        use fabric::gossip::{Availability, View};
        let gib = 1u64 << 30;
        let cap = |total: u64, used: u64| {
            let c = Capacity {
                bytes_total: total * gib,
                bytes_used: used * gib,
                bytes_reserved: gib,
                chunks: used,
            };
            let mut keys = std::collections::BTreeMap::new();
            keys.insert(
                Key::new(keys::CAPACITY),
                (1, Value::encode_record(&c).unwrap()),
            );
            NodeState {
                generation: 1,
                availability: Availability::Alive,
                keys,
            }
        };
        let view = View {
            nodes: [
                (id("a"), cap(16, 2)),
                (id("b"), cap(11, 9)),
                (id("c"), cap(16, 4)),
                (id("gone"), cap(100, 100)),
            ]
            .into_iter()
            .collect(),
        };
        let s = Summary {
            nodes: vec![
                node("a", AdminState::In),
                node("b", AdminState::In),
                node("c", AdminState::Draining),
                node("d", AdminState::In),
                node("gone", AdminState::Removed),
            ],
            ..Summary::default()
        };
        let c = capacity(&s, &view).unwrap();
        assert_eq!((c.nodes_reporting, c.nodes), (3, 4));
        assert_eq!(c.total_bytes, 43 * gib);
        assert_eq!(c.used_bytes, 15 * gib);
        assert_eq!(
            c.free_bytes,
            (16 - 2 - 1 + 11 - 9 - 1) * gib,
            "draining c adds none"
        );
        assert_eq!((c.used.as_str(), c.free.as_str()), ("15 GiB", "14 GiB"));
        assert_eq!(c.used_percent, 34.9);
        let cluster = ClusterInfo {
            leader: Some(id("a")),
            term: 1,
            voters: vec![id("a"), id("b"), id("c")],
            learners: vec![],
            last_applied: 1,
        };
        let j = status(&s, &cluster, Some(&view), 0);
        let full: Vec<&Check> = j
            .checks
            .iter()
            .filter(|c| c.code == "NODE_NEARFULL")
            .collect();
        assert_eq!(full.len(), 1, "{:?}", j.checks);
        assert!(full[0].message.contains("b (90 %)"), "{}", full[0].message);
        let t = text(&j);
        assert!(
            t.contains("usage:    15 GiB used of 43 GiB (34.9 %), 14 GiB free for new chunks (3 of 4 nodes reporting)"),
            "{t}"
        );
        assert!(capacity(&s, &View::default()).is_none());
        assert!(text(&status(&s, &cluster, None, 0)).contains("usage:    unknown"));
    }

    /// One row per cluster shape: the health and the check codes it gives.
    #[test]
    fn health() {
        let three = || ClusterInfo {
            leader: Some(id("a")),
            term: 2,
            voters: vec![id("a"), id("b"), id("c")],
            learners: vec![],
            last_applied: 9,
        };
        let leases = |names: &[(&str, u64)]| {
            names
                .iter()
                .map(|(n, exp)| Lease {
                    node: id(n),
                    expires_ms: *exp,
                })
                .collect::<Vec<_>>()
        };
        let now = 100_000;
        let healthy = Summary {
            nodes: vec![node("a", AdminState::In), node("b", AdminState::In)],
            leases: leases(&[("a", now + 5_000), ("b", now + 5_000)]),
            ..Summary::default()
        };
        let mut lapsed = healthy.clone();
        lapsed.leases = leases(&[("a", now + 5_000), ("b", now - 12_000)]);
        let mut out_unleased = healthy.clone();
        out_unleased.nodes.push(node("c", AdminState::Out));
        let mut degraded = healthy.clone();
        degraded.degraded = vec![(7, 3)];
        let mut no_leader = three();
        no_leader.leader = None;
        let one_voter = ClusterInfo {
            voters: vec![id("a")],
            ..three()
        };
        let table: Vec<(&str, &Summary, ClusterInfo, &str, Vec<&str>)> = vec![
            ("healthy", &healthy, three(), "HEALTH_OK", vec![]),
            (
                "lapsed",
                &lapsed,
                three(),
                "HEALTH_WARN",
                vec!["NODE_LEASE_LAPSED"],
            ),
            (
                "out needs no lease",
                &out_unleased,
                three(),
                "HEALTH_OK",
                vec![],
            ),
            (
                "degraded",
                &degraded,
                three(),
                "HEALTH_WARN",
                vec!["EXTENTS_DEGRADED"],
            ),
            (
                "no leader",
                &healthy,
                no_leader,
                "HEALTH_ERR",
                vec!["NO_METADATA_LEADER"],
            ),
            (
                "one voter",
                &healthy,
                one_voter,
                "HEALTH_WARN",
                vec!["METADATA_NO_REDUNDANCY"],
            ),
        ];
        for (what, s, c, health, codes) in table {
            let j = status(s, &c, None, now);
            assert_eq!(j.health, health, "{what}");
            let got: Vec<&str> = j.checks.iter().map(|c| c.code).collect();
            assert_eq!(got, codes, "{what}");
        }
        let j = status(&lapsed, &three(), None, now);
        assert!(
            j.checks[0].message.contains("b (lease expired 12 s ago)"),
            "{}",
            j.checks[0].message
        );
        assert_eq!(j.nodes.lease_expired, 1);
        assert_eq!(
            status(&degraded, &three(), None, now)
                .extents
                .degraded_by_lun[0]
                .name,
            "id 7"
        );
    }
}
