//! Placement: which `k+m` nodes hold an extent's chunks.
//!
//! A pure, deterministic function of the candidates (built from the
//! gossiped view and the catalogue's admin states), the LUN's [`Policy`]
//! and the extent's key: no clock, no randomness, no I/O, and the order of
//! the candidates does not matter. Rules, reasons and measurements:
//! `docs/placement.md`.
//!
//! - [`policy`]: [`EcProfile`], [`Spread`], [`Policy`] (stored in LUN
//!   records) and their limits.
//! - [`candidate`]: [`Candidate`] and [`candidates`] from a [`View`].
//! - [`domain`]: the failure domain of a node under a spread.
//! - [`select`]: [`Placer`], [`place`] and [`replace`] (weighted rendezvous
//!   hashing over failure domains).
//! - [`hash`]: the fixed hash and logarithm the scores are made of.
//! - [`error`]: [`PlacementError`] and the [`Exclusions`] it reports.
//!
//! [`View`]: crate::gossip::View

pub mod candidate;
pub mod domain;
pub mod error;
mod hash;
pub mod policy;
pub mod select;

use serde::{Deserialize, Serialize};

pub use candidate::{candidates, Candidate, Perf};
pub use domain::failure_domain;
pub use error::{Exclusions, PlacementError};
pub use policy::{EcProfile, Policy, Spread, K_MAX, M_MAX, WIDTH_MAX};
pub use select::{place, replace, Placer, CANDIDATES_MAX};

/// Which extent: the LUN's id and the extent's index in it. Placement
/// hashes exactly these two numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExtentKey {
    pub lun: u64,
    pub index: u64,
}
