//! Output for people and for scripts: `-o text|json`, aligned tables,
//! times, and the JSON shapes of the catalogue's records (stable names,
//! sizes in bytes beside their human form, secrets never printed).

use std::io::Write;
use std::time::SystemTime;

use fabric::metadata::catalogue::{Lease, NodeEntry};
use fabric::metadata::rpc::{ClusterInfo, Summary};
use fabric::metadata::{Lun, Target};
use serde::Serialize;

use crate::units::{format_ms, format_size};

/// Output format shared by commands that print data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For scripts: one JSON document on stdout.
    Json,
}

/// `-o text|json`, flattened into every command that prints data.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct OutputArg {
    /// Output format: text for people, json for scripts (one document on stdout).
    #[arg(long = "output", short = 'o', value_enum, default_value = "text")]
    pub output: Output,
}

/// Prints `json` as JSON, or what `text` makes, by `out`. A closed stdout
/// (`weft lun list | head -1`) is not an error.
pub fn emit<T: Serialize>(out: OutputArg, json: &T, text: impl FnOnce() -> String) {
    let mut s = match out.output {
        Output::Json => match serde_json::to_string_pretty(json) {
            Ok(s) => s,
            Err(e) => unreachable!("JSON of plain records cannot fail: {e}"),
        },
        Output::Text => text(),
    };
    if !s.ends_with('\n') {
        s.push('\n');
    }
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i < last {
                let pad = widths[i] - c.chars().count() + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-03T09:12:44Z` from Unix seconds.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// `-` for 0 (a record made before its time was recorded).
pub fn rfc3339_ms(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    rfc3339((ms / 1000) as i64)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A LUN mapped in a target.
#[derive(Serialize, Clone, Debug)]
pub struct MapView {
    pub target: String,
    pub lun: u16,
}

#[derive(Serialize, Clone, Debug)]
pub struct LunView {
    pub id: u64,
    pub name: String,
    pub size_bytes: u64,
    pub size: String,
    pub block_size: u32,
    /// `k+m`.
    pub ec: String,
    pub k: u8,
    pub m: u8,
    pub spread: &'static str,
    pub sites: Vec<String>,
    pub regions: Vec<String>,
    /// The NAA designator (VPD page 0x83), 32 hex digits.
    pub naa: String,
    /// The unit serial number (VPD page 0x80).
    pub serial: String,
    /// Logical bytes of one extent.
    pub extent_bytes: u64,
    pub extents_total: u64,
    pub extents_allocated: u64,
    /// Allocated extents with a chunk missing or being rebuilt.
    pub extents_degraded: u64,
    pub mapped: Vec<MapView>,
    pub created: String,
    pub created_ms: u64,
}

impl LunView {
    /// `summary` gives extent counts and maps (none without it).
    pub fn new(l: &Lun, summary: Option<&Summary>) -> LunView {
        let count = |v: &[(u64, u64)]| v.iter().find(|(id, _)| *id == l.id).map_or(0, |(_, n)| *n);
        let (allocated, degraded, mapped) = match summary {
            Some(s) => (
                count(&s.extents),
                count(&s.degraded),
                s.targets
                    .iter()
                    .flat_map(|t| {
                        t.luns
                            .iter()
                            .filter(|(_, id)| **id == l.id)
                            .map(|(n, _)| MapView {
                                target: t.iqn.clone(),
                                lun: *n,
                            })
                    })
                    .collect(),
            ),
            None => (0, 0, Vec::new()),
        };
        LunView {
            id: l.id,
            name: l.name.clone(),
            size_bytes: l.size_bytes,
            size: format_size(l.size_bytes),
            block_size: l.block_size,
            ec: l.policy.ec.to_string(),
            k: l.policy.ec.k,
            m: l.policy.ec.m,
            spread: l.policy.spread.as_str(),
            sites: l.policy.sites.clone(),
            regions: l.policy.regions.clone(),
            naa: hex(&l.naa),
            serial: l.serial.clone(),
            extent_bytes: l.extent_bytes(),
            extents_total: l.extents(),
            extents_allocated: allocated,
            extents_degraded: degraded,
            mapped,
            created: rfc3339_ms(l.created_ms),
            created_ms: l.created_ms,
        }
    }
}

/// A LUN number of a target.
#[derive(Serialize, Clone, Debug)]
pub struct TargetLunView {
    pub lun: u16,
    pub name: String,
    pub id: u64,
    pub size_bytes: u64,
}

/// CHAP as shown: the user names, never the secrets.
#[derive(Serialize, Clone, Debug)]
pub struct ChapView {
    pub user: String,
    pub mutual_user: Option<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct TargetView {
    pub iqn: String,
    pub luns: Vec<TargetLunView>,
    /// Initiators allowed to log in; empty: any initiator.
    pub acl: Vec<String>,
    pub chap: Option<ChapView>,
    pub created: String,
    pub created_ms: u64,
}

impl TargetView {
    pub fn new(t: &Target, luns: &[Lun]) -> TargetView {
        TargetView {
            iqn: t.iqn.clone(),
            luns: t
                .luns
                .iter()
                .map(|(n, id)| {
                    let l = luns.iter().find(|l| l.id == *id);
                    TargetLunView {
                        lun: *n,
                        name: l.map_or_else(|| format!("(LUN id {id})"), |l| l.name.clone()),
                        id: *id,
                        size_bytes: l.map_or(0, |l| l.size_bytes),
                    }
                })
                .collect(),
            acl: t.acl.clone(),
            chap: t.chap.as_ref().map(|c| ChapView {
                user: c.user.clone(),
                mutual_user: c.mutual.as_ref().map(|(u, _)| u.clone()),
            }),
            created: rfc3339_ms(t.created_ms),
            created_ms: t.created_ms,
        }
    }

    /// `one-way (user alice)`, `mutual (alice / target-1)` or `none`.
    pub fn chap_text(&self) -> String {
        match &self.chap {
            None => "none".into(),
            Some(ChapView {
                user,
                mutual_user: None,
            }) => format!("one-way (user {user})"),
            Some(ChapView {
                user,
                mutual_user: Some(m),
            }) => format!("mutual (user {user}, target user {m})"),
        }
    }
}

/// A node's lease as the CLI's clock sees it (leases are stamped with the
/// metadata leader's clock: keep clocks in step, e.g. with NTP).
#[derive(Serialize, Clone, Debug)]
pub struct LeaseView {
    pub expires_ms: u64,
    pub valid: bool,
    /// Time left if valid, time since expiry if not.
    pub for_ms: u64,
}

impl LeaseView {
    pub fn new(l: &Lease, now_ms: u64) -> LeaseView {
        LeaseView {
            expires_ms: l.expires_ms,
            valid: l.expires_ms > now_ms,
            for_ms: l.expires_ms.abs_diff(now_ms),
        }
    }

    pub fn text(lease: Option<&LeaseView>) -> String {
        match lease {
            None => "no lease".into(),
            Some(l) if l.valid => format!("lease valid for {}", format_ms(l.for_ms)),
            Some(l) => format!("lease expired {} ago", format_ms(l.for_ms)),
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct NodeView {
    pub id: String,
    /// in, draining, out or removed.
    pub admin: &'static str,
    pub lease: Option<LeaseView>,
    /// leader, voter or learner of the metadata group; none otherwise.
    pub metadata: Option<&'static str>,
    pub added: String,
    pub added_ms: u64,
}

impl NodeView {
    pub fn new(n: &NodeEntry, s: &Summary, c: Option<&ClusterInfo>, now_ms: u64) -> NodeView {
        let lease = s
            .leases
            .iter()
            .find(|l| l.node == n.id)
            .map(|l| LeaseView::new(l, now_ms));
        let metadata = c.and_then(|c| {
            if c.leader.as_ref() == Some(&n.id) {
                Some("leader")
            } else if c.voters.contains(&n.id) {
                Some("voter")
            } else if c.learners.contains(&n.id) {
                Some("learner")
            } else {
                None
            }
        });
        NodeView {
            id: n.id.to_string(),
            admin: n.admin.as_str(),
            lease,
            metadata,
            added: rfc3339_ms(n.added_ms),
            added_ms: n.added_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "SIZE", "EC"],
            &[
                vec!["db".into(), "20 GiB".into(), "2+1".into()],
                vec!["a-longer-name".into(), "1 TiB".into(), "4+1".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME           SIZE    EC\n\
             db             20 GiB  2+1\n\
             a-longer-name  1 TiB   4+1\n"
        );
    }

    #[test]
    fn leases() {
        let l = Lease {
            node: fabric::NodeId::new("cs-1").unwrap(),
            expires_ms: 10_000,
        };
        let text = |now| LeaseView::text(Some(&LeaseView::new(&l, now)));
        assert_eq!(text(5_800), "lease valid for 4.2 s");
        assert_eq!(text(22_000), "lease expired 12 s ago");
        assert_eq!(LeaseView::text(None), "no lease");
    }
}
