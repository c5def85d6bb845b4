//! What placement refuses, in words an operator can act on.

use std::fmt;

use super::policy::{EcProfile, Spread};
use crate::identity::NodeId;

/// Everything that can make placement fail. None of these is a bug: each
/// is a policy the operator must change or a cluster that lacks nodes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("invalid EC profile {k}+{m}: {reason}")]
    InvalidProfile { k: u8, m: u8, reason: &'static str },
    #[error("{count} {what} pins, at most {max} are allowed")]
    TooManyPins {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("invalid {what} pin {name:?}: {reason}")]
    InvalidPin {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("{count} candidate nodes, at most {max} are supported")]
    TooManyCandidates { count: usize, max: usize },
    #[error("node {0} is listed twice among the candidates")]
    DuplicateCandidate(NodeId),
    #[error("no chunkserver is in {}", pin_list(.sites, .regions))]
    NothingPinned {
        sites: Vec<String>,
        regions: Vec<String>,
    },
    #[error(
        "need {needed} failure {} ({spread}) for {ec}, have {have} \
         (from {eligible} eligible nodes): {excluded}",
        if *.needed == 1 { "domain" } else { "domains" }
    )]
    TooFewDomains {
        needed: usize,
        have: usize,
        spread: Spread,
        ec: EcProfile,
        eligible: usize,
        excluded: Exclusions,
    },
    #[error("extent has {got} chunks, but {ec} has {want}")]
    WrongWidth {
        got: usize,
        want: usize,
        ec: EcProfile,
    },
    #[error("chunk {slot} does not exist in a {width}-chunk extent")]
    SlotOutOfRange { slot: usize, width: usize },
    #[error(
        "no node for chunk {slot}: all {have} eligible failure domains ({spread}) \
         already hold a chunk of the extent or only the current holder \
         (from {eligible} eligible nodes): {excluded}"
    )]
    NoReplacement {
        slot: usize,
        spread: Spread,
        have: usize,
        eligible: usize,
        excluded: Exclusions,
    },
}

fn pin_list(sites: &[String], regions: &[String]) -> String {
    let mut parts = Vec::new();
    if !sites.is_empty() {
        parts.push(format!("sites [{}]", sites.join(", ")));
    }
    if !regions.is_empty() {
        parts.push(format!("regions [{}]", regions.join(", ")));
    }
    parts.join(" and ")
}

/// Why candidate nodes were not eligible: each node is counted once, under
/// the first reason that applies, in the order of the fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    /// Outside the policy's pinned sites or regions.
    pub pinned_out: usize,
    pub removed: usize,
    pub out: usize,
    pub draining: usize,
    pub dead: usize,
    pub suspect: usize,
    /// Less than the chunk size free above the reserve.
    pub full: usize,
}

impl Exclusions {
    pub fn total(&self) -> usize {
        self.pinned_out
            + self.removed
            + self.out
            + self.draining
            + self.dead
            + self.suspect
            + self.full
    }
}

impl fmt::Display for Exclusions {
    /// `1 node dead, 2 draining`, or `no node excluded`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.pinned_out, "outside the pinned sites/regions"),
            (self.removed, "removed"),
            (self.out, "out"),
            (self.draining, "draining"),
            (self.dead, "dead"),
            (self.suspect, "suspect"),
            (self.full, "full"),
        ];
        let mut first = true;
        for (n, what) in parts {
            if n == 0 {
                continue;
            }
            if first {
                let noun = if n == 1 { "node" } else { "nodes" };
                write!(f, "{n} {noun} {what}")?;
                first = false;
            } else {
                write!(f, ", {n} {what}")?;
            }
        }
        if first {
            f.write_str("no node excluded")?;
        }
        Ok(())
    }
}
