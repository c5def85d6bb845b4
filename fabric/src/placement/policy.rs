//! A LUN's placement policy: its erasure-coding profile, the failure domain
//! its chunks spread over, and optional pinning to sites or regions.
//!
//! Stored in the catalogue inside the LUN record (postcard), so the field
//! order and the enum variant order below *are* the format: new fields go
//! at the end (with a new record version in the catalogue), variants are
//! only appended. `tests::policy_encoding_is_stable` pins the bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::PlacementError;

/// Most data chunks per extent.
pub const K_MAX: u8 = 16;
/// Most parity chunks per extent.
pub const M_MAX: u8 = 4;
/// Most chunks per extent (`K_MAX + M_MAX`).
pub const WIDTH_MAX: usize = K_MAX as usize + M_MAX as usize;
/// Most site names, and most region names, one policy may pin to.
pub const PINS_MAX: usize = 16;
/// Longest site or region name, in bytes.
pub const PIN_BYTES_MAX: usize = 64;

/// An erasure-coding profile: `k` data chunks and `m` parity chunks per
/// extent (`k+0` is plain striping, `1+m` is `m+1`-way replication).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EcProfile {
    pub k: u8,
    pub m: u8,
}

impl EcProfile {
    /// A checked profile.
    pub fn new(k: u8, m: u8) -> Result<EcProfile, PlacementError> {
        let p = EcProfile { k, m };
        p.check()?;
        Ok(p)
    }

    /// `k` in 1..=[`K_MAX`], `m` in 0..=[`M_MAX`].
    pub fn check(&self) -> Result<(), PlacementError> {
        let reason = if self.k == 0 {
            "k must be at least 1"
        } else if self.k > K_MAX {
            "k must be at most 16"
        } else if self.m > M_MAX {
            "m must be at most 4"
        } else {
            return Ok(());
        };
        Err(PlacementError::InvalidProfile {
            k: self.k,
            m: self.m,
            reason,
        })
    }

    /// Chunks per extent: `k + m`.
    pub fn width(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }
}

impl fmt::Display for EcProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

/// The failure domain no two chunks of one extent may share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Spread {
    /// One chunk per machine (`Location::host`, or the node id when a node
    /// has no host label).
    #[default]
    Host,
    /// One chunk per rack (`Location::site` + `Location::rack`).
    Rack,
    /// One chunk per site (`Location::region` + `Location::site`).
    Site,
}

impl Spread {
    pub fn as_str(self) -> &'static str {
        match self {
            Spread::Host => "host",
            Spread::Rack => "rack",
            Spread::Site => "site",
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an extent's chunks may go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub ec: EcProfile,
    pub spread: Spread,
    /// Only nodes in these sites (`Location::site`); empty: any site.
    pub sites: Vec<String>,
    /// Only nodes in these regions (`Location::region`); empty: any region.
    /// With both lists set a node must match both.
    pub regions: Vec<String>,
}

impl Policy {
    /// `k+m` spread over hosts, no pinning.
    pub fn new(ec: EcProfile) -> Policy {
        Policy {
            ec,
            spread: Spread::Host,
            sites: Vec::new(),
            regions: Vec::new(),
        }
    }

    /// The profile is valid and the pin lists are within their limits
    /// (what the catalogue checks before it stores a LUN).
    pub fn check(&self) -> Result<(), PlacementError> {
        self.ec.check()?;
        check_pins("site", &self.sites)?;
        check_pins("region", &self.regions)
    }

    /// Whether a node at `site` in `region` passes the pinning.
    pub fn admits(&self, site: &str, region: &str) -> bool {
        (self.sites.is_empty() || self.sites.iter().any(|s| s == site))
            && (self.regions.is_empty() || self.regions.iter().any(|r| r == region))
    }

    /// Whether the policy pins at all.
    pub fn is_pinned(&self) -> bool {
        !self.sites.is_empty() || !self.regions.is_empty()
    }
}

fn check_pins(what: &'static str, names: &[String]) -> Result<(), PlacementError> {
    if names.len() > PINS_MAX {
        return Err(PlacementError::TooManyPins {
            what,
            count: names.len(),
            max: PINS_MAX,
        });
    }
    for (i, name) in names.iter().enumerate() {
        let reason = if name.is_empty() {
            "empty"
        } else if name.len() > PIN_BYTES_MAX {
            "longer than 64 bytes"
        } else if names.iter().take(i).any(|n| n == name) {
            "listed twice"
        } else {
            continue;
        };
        return Err(PlacementError::InvalidPin {
            what,
            name: name.clone(),
            reason,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per profile: `(k, m, Ok(width) or the error's text)`.
    #[test]
    fn profiles() {
        let table: &[(u8, u8, Result<usize, &str>)] = &[
            (1, 0, Ok(1)),
            (4, 1, Ok(5)),
            (16, 4, Ok(20)),
            (0, 1, Err("invalid EC profile 0+1: k must be at least 1")),
            (17, 1, Err("invalid EC profile 17+1: k must be at most 16")),
            (4, 5, Err("invalid EC profile 4+5: m must be at most 4")),
        ];
        for (k, m, want) in table {
            let got = EcProfile::new(*k, *m)
                .map(|p| p.width())
                .map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(String::from), "{k}+{m}");
        }
    }

    #[test]
    fn pins() {
        let mut p = Policy::new(EcProfile { k: 2, m: 1 });
        assert!(p.check().is_ok());
        p.sites = vec!["a".into(), "a".into()];
        assert_eq!(
            p.check().map_err(|e| e.to_string()),
            Err("invalid site pin \"a\": listed twice".into())
        );
        p.sites = vec![String::new()];
        assert!(p.check().is_err());
        p.sites = vec!["x".repeat(PIN_BYTES_MAX + 1)];
        assert!(p.check().is_err());
        p.sites = (0..=PINS_MAX).map(|i| format!("s{i}")).collect();
        assert_eq!(
            p.check().map_err(|e| e.to_string()),
            Err("17 site pins, at most 16 are allowed".into())
        );
        p.sites = vec!["a".into(), "b".into()];
        p.regions = vec!["eu".into()];
        assert!(p.admits("b", "eu"));
        assert!(!p.admits("b", "us"));
        assert!(!p.admits("c", "eu"));
    }

    /// The policy is stored inside LUN records: a change of field or variant
    /// order must fail here, not silently misread a stored LUN.
    #[test]
    fn policy_encoding_is_stable() {
        let p = Policy {
            ec: EcProfile { k: 4, m: 1 },
            spread: Spread::Rack,
            sites: vec!["ab".into()],
            regions: vec![],
        };
        let bytes = postcard::to_stdvec(&p).unwrap();
        assert_eq!(bytes, [4, 1, 1, 1, 2, b'a', b'b', 0]);
        let back: Policy = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(postcard::to_stdvec(&Spread::Site).unwrap(), [2]);
    }
}
