//! `weft status`: the cluster's health at a glance, the way `ceph -s`
//! shows it, from the catalogue (`Summary`) and the Raft group
//! (`Cluster`). Capacity is gossiped soft state, which the CLI does not
//! read yet, so it is not shown.

use clap::Args;
use fabric::metadata::catalogue::AdminState;
use fabric::metadata::rpc::{ClusterInfo, Summary};
use serde::Serialize;

use crate::error::CliResult;
use crate::render::{emit, now_ms, LeaseView, OutputArg};
use crate::session::Session;
use crate::units::format_size;
use crate::GlobalArgs;

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
    let j = status(&s, &c, now_ms());
    emit(a.out, &j, || text(&j));
    Ok(())
}

/// The status of a catalogue and Raft group at `now_ms` (CLI clock).
pub fn status(s: &Summary, c: &ClusterInfo, now_ms: u64) -> StatusJson {
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
            let j = status(s, &c, now);
            assert_eq!(j.health, health, "{what}");
            let got: Vec<&str> = j.checks.iter().map(|c| c.code).collect();
            assert_eq!(got, codes, "{what}");
        }
        let j = status(&lapsed, &three(), now);
        assert!(
            j.checks[0].message.contains("b (lease expired 12 s ago)"),
            "{}",
            j.checks[0].message
        );
        assert_eq!(j.nodes.lease_expired, 1);
        assert_eq!(
            status(&degraded, &three(), now).extents.degraded_by_lun[0].name,
            "id 7"
        );
    }
}
