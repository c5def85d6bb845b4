//! Choosing the nodes of an extent: weighted rendezvous hashing over
//! failure domains.
//!
//! Every eligible node gets a score per extent, `weight / -ln(u)` with `u`
//! from a fixed hash of (extent key, node id). The extent goes to the
//! `k+m` highest-scoring nodes whose failure domains are all different
//! (greedy by score, skipping used domains — the same as taking the best
//! node of each domain, then the best `k+m` domains). Because scores
//! depend only on the key, the node and its weight, adding a node changes
//! only the extents where the new node scores into the top `k+m`.
//!
//! **Weights.** A node's share of chunks should follow its free capacity
//! (its room above the reserve, times the performance factor in [½, 1]).
//! Taking the top `n = k+m` of exponential races does not give that
//! directly: a node holds at most one chunk of an extent, so a big node's
//! later chances are spent while small nodes keep theirs, and big nodes
//! end up with less than their share (up to 7 % off at 4+1 and 16 % at
//! 8+1 with 20 nodes of 1–4× free space; more with fewer nodes). So
//! weights are corrected once per candidate set: a domain that should
//! hold the fraction `p = n·W_D/W` of extents gets the rate
//! `1 − (1 − p)^(1/n)` — exact for `n = 1`, and what makes
//! `P(in top n) ≈ 1 − (1 − rate/Σrate)^n` equal `p`. Measured error
//! ≤ 1–2 % over N = 8…50 nodes, n = 1…9 (see `docs/placement.md`). Inside
//! a domain, nodes split the domain's rate by their own weight (the best
//! of several exponential races is one race of the summed rate, won by
//! each in proportion to its rate).
//!
//! **Positions.** The chosen nodes are ordered into chunk positions by a
//! second, independent hash of (key, node): every chosen node is equally
//! likely to hold any position, so parity (positions `k..k+m`) lands on
//! each node in proportion to the chunks it holds, whatever its weight.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::candidate::Candidate;
use super::domain::failure_domain;
use super::error::{Exclusions, PlacementError};
use super::hash::{exp, key_hash, ln, node_hash, pair_hash, score, slot_hash};
use super::policy::{EcProfile, Policy, Spread};
use super::ExtentKey;
use crate::gossip::state::Availability;
use crate::identity::NodeId;
use crate::metadata::AdminState;

/// Most candidates one placement looks at: as many nodes as a gossip view
/// holds.
pub const CANDIDATES_MAX: usize = crate::gossip::message::NODES_MAX;
/// Largest fraction of extents one failure domain is asked to hold. A
/// domain with more than `1/(k+m)` of the free capacity cannot get its
/// share (one chunk per extent at most): it is capped here and gets a
/// chunk of nearly every extent.
pub const DOMAIN_SHARE_MAX: f64 = 0.99;
/// Below this share `1 − (1 − p)^(1/n)` is computed as `p/n` (same value
/// to 1e-6, without the cancellation).
const DOMAIN_SHARE_LINEAR: f64 = 1e-6;

/// A node that may take a chunk.
#[derive(Clone, Debug)]
struct Eligible {
    node: NodeId,
    /// `node_hash` of the id.
    hash: u64,
    /// Corrected rendezvous weight (> 0).
    weight: f64,
    domain: u32,
}

/// Why a node may not take a chunk; the order is the order of counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exclusion {
    PinnedOut,
    Removed,
    Out,
    Draining,
    Dead,
    Suspect,
    Full,
}

fn exclusion(c: &Candidate, policy: &Policy, chunk_bytes: u64) -> Option<Exclusion> {
    if !policy.admits(&c.location.site, &c.location.region) {
        return Some(Exclusion::PinnedOut);
    }
    match c.admin {
        AdminState::Removed => return Some(Exclusion::Removed),
        AdminState::Out => return Some(Exclusion::Out),
        AdminState::Draining => return Some(Exclusion::Draining),
        AdminState::In => {}
    }
    match c.availability {
        Availability::Dead => return Some(Exclusion::Dead),
        Availability::Suspect => return Some(Exclusion::Suspect),
        Availability::Alive => {}
    }
    if c.room_bytes() < chunk_bytes.max(1) {
        return Some(Exclusion::Full);
    }
    None
}

impl Exclusions {
    fn count(&mut self, why: Exclusion) {
        let n = match why {
            Exclusion::PinnedOut => &mut self.pinned_out,
            Exclusion::Removed => &mut self.removed,
            Exclusion::Out => &mut self.out,
            Exclusion::Draining => &mut self.draining,
            Exclusion::Dead => &mut self.dead,
            Exclusion::Suspect => &mut self.suspect,
            Exclusion::Full => &mut self.full,
        };
        *n += 1;
    }
}

/// One candidate set and policy, prepared for many placements: the
/// eligible nodes, their domains and corrected weights. [`place`] and
/// [`replace`] build one per call; the metadata leader keeps one per view
/// and policy while it allocates a batch of extents.
#[derive(Clone, Debug)]
pub struct Placer {
    ec: EcProfile,
    spread: Spread,
    /// Sorted by (domain, node id), so one pass sees each domain's nodes
    /// together.
    eligible: Vec<Eligible>,
    eligible_domains: usize,
    /// Every candidate's domain (eligible or not), sorted by node id:
    /// `replace` must avoid the domains of the other chunks' holders even
    /// when those holders are down.
    domain_of: Vec<(NodeId, u32)>,
    excluded: Exclusions,
}

impl Placer {
    /// Checks the policy and the candidates (at most [`CANDIDATES_MAX`], no
    /// node twice, some node inside the pinning) and prepares placement of
    /// chunks of `chunk_bytes`. The result does not depend on the order of
    /// `candidates`.
    pub fn new(
        candidates: &[Candidate],
        policy: &Policy,
        chunk_bytes: u64,
    ) -> Result<Placer, PlacementError> {
        policy.check()?;
        if candidates.len() > CANDIDATES_MAX {
            return Err(PlacementError::TooManyCandidates {
                count: candidates.len(),
                max: CANDIDATES_MAX,
            });
        }
        let mut sorted: Vec<&Candidate> = candidates.iter().collect();
        sorted.sort_unstable_by(|a, b| a.node.cmp(&b.node));
        if let Some(pair) = sorted.windows(2).find(|w| w[0].node == w[1].node) {
            return Err(PlacementError::DuplicateCandidate(pair[0].node.clone()));
        }
        if policy.is_pinned()
            && !sorted
                .iter()
                .any(|c| policy.admits(&c.location.site, &c.location.region))
        {
            return Err(PlacementError::NothingPinned {
                sites: policy.sites.clone(),
                regions: policy.regions.clone(),
            });
        }

        // Domain ids in order of first appearance by node id: the same
        // candidate set always numbers its domains the same.
        let mut ids: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        let mut domain_of = Vec::with_capacity(sorted.len());
        let mut excluded = Exclusions::default();
        let mut raw = Vec::new();
        for c in &sorted {
            let next = u32::try_from(ids.len()).unwrap_or(u32::MAX);
            let d = *ids.entry(failure_domain(c, policy.spread)).or_insert(next);
            domain_of.push((c.node.clone(), d));
            match exclusion(c, policy, chunk_bytes) {
                Some(why) => excluded.count(why),
                // room ≥ 1 and factor ≥ ½: every raw weight is > 0.
                None => raw.push((*c, d, c.room_bytes() as f64 * c.perf_factor())),
            }
        }
        assert!(ids.len() <= CANDIDATES_MAX, "more domains than candidates");

        let mut domain_total = vec![0.0f64; ids.len()];
        for (_, d, w) in &raw {
            if let Some(t) = domain_total.get_mut(*d as usize) {
                *t += w;
            }
        }
        let total: f64 = domain_total.iter().sum();
        let eligible_domains = domain_total.iter().filter(|t| **t > 0.0).count();
        let n = policy.ec.width() as f64;
        let rate: Vec<f64> = domain_total
            .iter()
            .map(|&t| {
                if t <= 0.0 {
                    return 0.0;
                }
                let p = (n * t / total).min(DOMAIN_SHARE_MAX);
                if p < DOMAIN_SHARE_LINEAR {
                    p / n
                } else {
                    1.0 - exp(ln(1.0 - p) / n)
                }
            })
            .collect();
        let mut eligible: Vec<Eligible> = raw
            .into_iter()
            .map(|(c, d, w)| {
                let i = d as usize;
                let (r, t) = (rate.get(i), domain_total.get(i));
                Eligible {
                    node: c.node.clone(),
                    hash: node_hash(c.node.as_str().as_bytes()),
                    weight: match (r, t) {
                        (Some(r), Some(t)) => r * w / t,
                        _ => 0.0,
                    },
                    domain: d,
                }
            })
            .collect();
        eligible.sort_by(|a, b| (a.domain, &a.node).cmp(&(b.domain, &b.node)));

        Ok(Placer {
            ec: policy.ec,
            spread: policy.spread,
            eligible,
            eligible_domains,
            domain_of,
            excluded,
        })
    }

    /// Nodes that may take a chunk.
    pub fn eligible_nodes(&self) -> usize {
        self.eligible.len()
    }

    /// Failure domains with at least one eligible node.
    pub fn eligible_domains(&self) -> usize {
        self.eligible_domains
    }

    /// Why the other candidates were left out.
    pub fn excluded(&self) -> Exclusions {
        self.excluded
    }

    /// Bytes this placer holds (for sizing; node ids counted by length).
    pub fn memory_bytes(&self) -> usize {
        let ids: usize = self
            .eligible
            .iter()
            .map(|e| e.node.as_str().len())
            .chain(self.domain_of.iter().map(|(n, _)| n.as_str().len()))
            .sum();
        std::mem::size_of::<Placer>()
            + self.eligible.capacity() * std::mem::size_of::<Eligible>()
            + self.domain_of.capacity() * std::mem::size_of::<(NodeId, u32)>()
            + ids
    }

    /// The `k+m` nodes of extent `key`: position `i < k` holds data chunk
    /// `i`, positions `k..k+m` hold parity. Distinct nodes in distinct
    /// failure domains, or [`PlacementError::TooFewDomains`].
    pub fn place(&self, key: ExtentKey) -> Result<Vec<NodeId>, PlacementError> {
        let n = self.ec.width();
        if self.eligible_domains < n {
            return Err(PlacementError::TooFewDomains {
                needed: n,
                have: self.eligible_domains,
                spread: self.spread,
                ec: self.ec,
                eligible: self.eligible.len(),
                excluded: self.excluded,
            });
        }
        let kh = key_hash(key);
        // The best node of each domain, offered to a top-n list as each
        // domain's run of nodes ends.
        let mut top: Vec<(f64, usize)> = Vec::with_capacity(n + 1);
        let mut run: Option<(u32, f64, usize)> = None;
        for (i, e) in self.eligible.iter().enumerate() {
            let s = score(e.weight, pair_hash(kh, e.hash));
            run = match run {
                Some((d, best, bi)) if d == e.domain => {
                    // Ties keep the lower index (the lower node id).
                    if s > best {
                        Some((d, s, i))
                    } else {
                        Some((d, best, bi))
                    }
                }
                Some((_, best, bi)) => {
                    offer(&mut top, n, (best, bi));
                    Some((e.domain, s, i))
                }
                None => Some((e.domain, s, i)),
            };
        }
        if let Some((_, best, bi)) = run {
            offer(&mut top, n, (best, bi));
        }
        assert_eq!(top.len(), n, "fewer domain winners than eligible domains");

        // Positions: ordered by a second hash, independent of the score.
        let sh = slot_hash(key);
        let mut chosen: Vec<(u64, usize)> = top
            .iter()
            .filter_map(|&(_, i)| Some((pair_hash(sh, self.eligible.get(i)?.hash), i)))
            .collect();
        chosen.sort_unstable();
        Ok(chosen
            .into_iter()
            .filter_map(|(_, i)| Some(self.eligible.get(i)?.node.clone()))
            .collect())
    }

    /// A node for chunk `slot` of extent `key`, now held by `current`
    /// (after a failure, or to drain the holder): the best-scoring eligible
    /// node that is not in `current` and not in the failure domain of any
    /// other chunk's holder. (The holder's own domain is allowed: another
    /// disk of the same machine keeps the spread.) A holder that is not
    /// among the candidates at all has no known domain; only its id is
    /// avoided.
    pub fn replace(
        &self,
        key: ExtentKey,
        current: &[NodeId],
        slot: usize,
    ) -> Result<NodeId, PlacementError> {
        let width = self.ec.width();
        if current.len() != width {
            return Err(PlacementError::WrongWidth {
                got: current.len(),
                want: width,
                ec: self.ec,
            });
        }
        if slot >= width {
            return Err(PlacementError::SlotOutOfRange { slot, width });
        }
        let used: Vec<u32> = current
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != slot)
            .filter_map(|(_, node)| self.domain(node))
            .collect();
        let kh = key_hash(key);
        let mut best: Option<(f64, &Eligible)> = None;
        for e in &self.eligible {
            if used.contains(&e.domain) || current.contains(&e.node) {
                continue;
            }
            let s = score(e.weight, pair_hash(kh, e.hash));
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, e));
            }
        }
        match best {
            Some((_, e)) => Ok(e.node.clone()),
            None => Err(PlacementError::NoReplacement {
                slot,
                spread: self.spread,
                have: self.eligible_domains,
                eligible: self.eligible.len(),
                excluded: self.excluded,
            }),
        }
    }

    fn domain(&self, node: &NodeId) -> Option<u32> {
        let i = self.domain_of.binary_search_by(|(n, _)| n.cmp(node)).ok()?;
        self.domain_of.get(i).map(|&(_, d)| d)
    }
}

/// Keeps `top` the best `n` of what it was offered, best first; higher
/// score wins, ties go to the lower index.
fn offer(top: &mut Vec<(f64, usize)>, n: usize, item: (f64, usize)) {
    let better = |a: &(f64, usize), b: &(f64, usize)| match a.0.total_cmp(&b.0) {
        Ordering::Equal => a.1 < b.1,
        o => o == Ordering::Greater,
    };
    if top.len() == n && top.last().is_none_or(|last| !better(&item, last)) {
        return;
    }
    let at = top
        .iter()
        .position(|t| better(&item, t))
        .unwrap_or(top.len());
    top.insert(at, item);
    top.truncate(n);
}

/// The `k+m` nodes of extent `key` under `policy`, from `candidates` (any
/// order): see [`Placer::place`].
pub fn place(
    candidates: &[Candidate],
    policy: &Policy,
    key: ExtentKey,
    chunk_bytes: u64,
) -> Result<Vec<NodeId>, PlacementError> {
    Placer::new(candidates, policy, chunk_bytes)?.place(key)
}

/// A new node for chunk `slot` of extent `key` held by `current`: see
/// [`Placer::replace`].
pub fn replace(
    candidates: &[Candidate],
    policy: &Policy,
    key: ExtentKey,
    chunk_bytes: u64,
    current: &[NodeId],
    slot: usize,
) -> Result<NodeId, PlacementError> {
    Placer::new(candidates, policy, chunk_bytes)?.replace(key, current, slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::state::{Capacity, Location};

    const GIB: u64 = 1 << 30;

    /// A cluster from a spec: one node per word, `id:host:rack:site:state`,
    /// state one of ok, dead, suspect, draining, out, removed, full; empty
    /// labels allowed (`cs-1::::ok`).
    fn cluster(spec: &str) -> Vec<Candidate> {
        spec.split_whitespace()
            .map(|w| {
                let f: Vec<&str> = w.split(':').collect();
                assert_eq!(f.len(), 5, "{w}");
                let (mut admin, mut availability, mut used) =
                    (AdminState::In, Availability::Alive, 0);
                match f[4] {
                    "ok" => {}
                    "dead" => availability = Availability::Dead,
                    "suspect" => availability = Availability::Suspect,
                    "draining" => admin = AdminState::Draining,
                    "out" => admin = AdminState::Out,
                    "removed" => admin = AdminState::Removed,
                    "full" => used = 100 * GIB - GIB,
                    other => panic!("state {other}"),
                }
                Candidate {
                    node: NodeId::new(f[0]).unwrap(),
                    admin,
                    availability,
                    capacity: Capacity {
                        bytes_total: 100 * GIB,
                        bytes_used: used,
                        bytes_reserved: 0,
                        chunks: 0,
                    },
                    reserve_bytes: GIB,
                    location: Location {
                        region: "eu".into(),
                        site: f[3].into(),
                        rack: f[2].into(),
                        host: f[1].into(),
                        lat_long: None,
                    },
                    perf: None,
                }
            })
            .collect()
    }

    fn policy(k: u8, m: u8, spread: Spread, sites: &[&str]) -> Policy {
        Policy {
            ec: EcProfile { k, m },
            spread,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            regions: Vec::new(),
        }
    }

    /// Places extent (1, 0) and returns the node ids joined by spaces, or
    /// the error's text.
    fn placed(spec: &str, policy: &Policy) -> String {
        match place(
            &cluster(spec),
            policy,
            ExtentKey { lun: 1, index: 0 },
            16 << 20,
        ) {
            Ok(nodes) => nodes
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors() {
        let four = "a:h1:r1:s1:ok b:h2:r1:s1:ok c:h3:r2:s1:dead d:h4:r2:s2:draining";
        let table: &[(&str, Policy, &str)] = &[
            (
                four,
                policy(3, 1, Spread::Host, &[]),
                "need 4 failure domains (host) for 3+1, have 2 (from 2 eligible nodes): \
                 1 node draining, 1 dead",
            ),
            (
                "a:h1:r1:s1:ok b:h1:r1:s1:ok c:h2:r1:s1:ok",
                policy(2, 1, Spread::Host, &[]),
                "need 3 failure domains (host) for 2+1, have 2 (from 3 eligible nodes): \
                 no node excluded",
            ),
            (
                "a:h1:r1:s1:ok b:h2:r1:s1:ok c:h3:r2:s1:ok",
                policy(2, 1, Spread::Rack, &[]),
                "need 3 failure domains (rack) for 2+1, have 2 (from 3 eligible nodes): \
                 no node excluded",
            ),
            (
                "a:h1:r1:s1:full b:h2:r1:s2:suspect c:h3:r2:s3:out d:h4:r2:s4:removed",
                policy(1, 0, Spread::Site, &[]),
                "need 1 failure domain (site) for 1+0, have 0 (from 0 eligible nodes): \
                 1 node removed, 1 out, 1 suspect, 1 full",
            ),
            (
                four,
                policy(1, 1, Spread::Host, &["s2", "s3"]),
                "need 2 failure domains (host) for 1+1, have 0 (from 0 eligible nodes): \
                 3 nodes outside the pinned sites/regions, 1 draining",
            ),
            (
                four,
                policy(1, 1, Spread::Host, &["s9"]),
                "no chunkserver is in sites [s9]",
            ),
            (four, policy(0, 1, Spread::Host, &[]), "invalid EC profile 0+1: k must be at least 1"),
            (four, policy(2, 7, Spread::Host, &[]), "invalid EC profile 2+7: m must be at most 4"),
            ("", policy(1, 0, Spread::Host, &[]), "need 1 failure domain (host) for 1+0, have 0 (from 0 eligible nodes): no node excluded"),
            (
                "a:h1:r1:s1:ok a:h2:r1:s1:ok",
                policy(1, 0, Spread::Host, &[]),
                "node a is listed twice among the candidates",
            ),
        ];
        for (spec, policy, want) in table {
            assert_eq!(placed(spec, policy), *want, "{spec} {policy:?}");
        }
    }

    /// Unlabelled nodes (one machine, a test cluster) are one host each;
    /// under rack spread they are all one rack.
    #[test]
    fn unlabelled_nodes_spread_by_id() {
        let spec = "a::::ok b::::ok c::::ok";
        let got = placed(spec, &policy(2, 1, Spread::Host, &[]));
        let mut sorted: Vec<&str> = got.split(' ').collect();
        sorted.sort_unstable();
        assert_eq!(sorted, ["a", "b", "c"]);
        assert!(placed(spec, &policy(1, 1, Spread::Rack, &[])).starts_with("need 2"));
    }

    #[test]
    fn replace_errors() {
        let c = cluster("a:h1:r1:s1:ok b:h2:r1:s1:ok c:h3:r1:s1:ok d:h3:r1:s1:ok");
        let p = policy(2, 1, Spread::Host, &[]);
        let key = ExtentKey { lun: 1, index: 0 };
        let id = |s: &str| NodeId::new(s).unwrap();
        let current = [id("a"), id("b"), id("c")];
        let text = |r: Result<NodeId, PlacementError>| match r {
            Ok(n) => n.to_string(),
            Err(e) => e.to_string(),
        };
        // c's host-mate d keeps the spread.
        assert_eq!(text(replace(&c, &p, key, 1, &current, 2)), "d");
        assert_eq!(
            text(replace(&c, &p, key, 1, &current, 0)),
            "no node for chunk 0: all 3 eligible failure domains (host) already hold a chunk \
             of the extent or only the current holder (from 4 eligible nodes): no node excluded"
        );
        assert_eq!(
            text(replace(&c, &p, key, 1, &current, 3)),
            "chunk 3 does not exist in a 3-chunk extent"
        );
        assert_eq!(
            text(replace(&c, &p, key, 1, &current[..2], 0)),
            "extent has 2 chunks, but 2+1 has 3"
        );
        // A holder unknown to the candidates: only its id is avoided.
        let current = [id("a"), id("b"), id("zz")];
        assert_eq!(text(replace(&c, &p, key, 1, &current, 2)).len(), 1);
    }

    /// Sizes in the simulation's terms: the placer of 1,000 nodes stays
    /// small, and placing works at the candidate limit.
    #[test]
    fn limits() {
        let spec: String = (0..=CANDIDATES_MAX)
            .map(|i| format!("n{i}:h{i}:r:s:ok "))
            .collect();
        let mut c = cluster(&spec);
        assert!(placed(&spec, &policy(4, 1, Spread::Host, &[])).starts_with("1025 candidate nodes"));
        c.pop();
        let placer = Placer::new(&c, &policy(16, 4, Spread::Host, &[]), 1).unwrap();
        assert_eq!(
            placer
                .place(ExtentKey {
                    lun: u64::MAX,
                    index: u64::MAX
                })
                .unwrap()
                .len(),
            20
        );
        assert!(placer.memory_bytes() < 200 * CANDIDATES_MAX);
    }
}
