//! Failure domains: which nodes fail together, as far as a policy cares.

use super::candidate::Candidate;
use super::policy::Spread;

/// The failure domain of `c` under `spread`, as two labels:
///
/// - `Host`: the host label, or the node id when the node has none (so a
///   test cluster of unlabelled nodes on one machine still spreads; a
///   host label equal to another node's id is the same domain, which can
///   only merge domains, never split one);
/// - `Rack`: site and rack (nodes without labels share one rack);
/// - `Site`: region and site.
pub fn failure_domain(c: &Candidate, spread: Spread) -> (&str, &str) {
    let l = &c.location;
    match spread {
        Spread::Host if l.host.is_empty() => (c.node.as_str(), ""),
        Spread::Host => (l.host.as_str(), ""),
        Spread::Rack => (l.site.as_str(), l.rack.as_str()),
        Spread::Site => (l.region.as_str(), l.site.as_str()),
    }
}
