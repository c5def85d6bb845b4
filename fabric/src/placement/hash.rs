//! The fixed hash behind rendezvous scores, and a logarithm made only of
//! exactly rounded IEEE 754 operations.
//!
//! Both are part of the placement format: the same extent key and node id
//! must give the same score on every platform and in every future build
//! (a placement that changed with the compiler would move data). So no
//! `std::hash` (`DefaultHasher` is documented as unstable across releases)
//! and no `f64::ln` (libm's last bit differs between platforms).
//! `tests::scores_are_stable` pins the output.

use super::ExtentKey;

/// Seed of every hash here ("weftplac").
const SEED: u64 = 0x7765_6674_706c_6163;
/// Added between rounds so that zero words do not stay zero.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// Salt of the second, independent hash that orders the chosen nodes into
/// chunk positions.
const SLOT_SALT: u64 = 0x736c_6f74_736c_6f74;

/// splitmix64's finalizer: a bijection of `u64` with full avalanche.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A node id's hash: its bytes in little-endian 8-byte words, zero-padded,
/// length first.
pub(crate) fn node_hash(id: &[u8]) -> u64 {
    let mut h = mix64(SEED ^ id.len() as u64);
    for chunk in id.chunks(8) {
        let mut word = [0u8; 8];
        for (w, b) in word.iter_mut().zip(chunk) {
            *w = *b;
        }
        h = mix64(h ^ u64::from_le_bytes(word)).wrapping_add(GOLDEN);
    }
    mix64(h)
}

/// An extent key's hash, for choosing nodes.
pub(crate) fn key_hash(key: ExtentKey) -> u64 {
    mix64(mix64(SEED ^ key.lun).wrapping_add(GOLDEN) ^ key.index)
}

/// An extent key's hash, for ordering chosen nodes into positions.
pub(crate) fn slot_hash(key: ExtentKey) -> u64 {
    mix64(key_hash(key) ^ SLOT_SALT)
}

/// The hash of one (extent, node) pair: two rounds, so that a key and a
/// node that happen to cancel in the first still differ in the second.
pub(crate) fn pair_hash(key: u64, node: u64) -> u64 {
    mix64(mix64(key ^ node).wrapping_add(node))
}

/// The top 52 bits of `h` as a number in (0, 1): `(h >> 12) + 0.5` is
/// exact in an `f64`, so the result is never 0 and never 1.
pub(crate) fn unit(h: u64) -> f64 {
    ((h >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// The rendezvous score of a node of `weight` for pair hash `h`:
/// `weight / -ln(u)`. `-ln(u)` is an exponential variable of rate 1, so
/// the node with the highest score is node `i` with probability
/// `weight_i / Σ weight` (the minimum of exponentials of rates `w_i` is
/// `E_i / w_i`'s argmin).
pub(crate) fn score(weight: f64, h: u64) -> f64 {
    weight / -ln(unit(h))
}

/// Natural logarithm of a normal, positive `x`, from `+ - × /` only (each
/// exactly rounded, so bit-identical everywhere): `x = 2^e · m` with
/// `m` in [√½, √2), then `ln m = 2 atanh(s)`, `s = (m-1)/(m+1)`,
/// `|s| < 0.172`, as `2s(1 + s²/3 + s⁴/5 + … + s²⁰/21)` in Horner form
/// (the next term is below 3e-17 relative).
pub(crate) fn ln(x: f64) -> f64 {
    /// `1/3, 1/5, … 1/21`, rounded once, at compile time.
    const INV_ODD: [f64; 10] = [
        1.0 / 3.0,
        1.0 / 5.0,
        1.0 / 7.0,
        1.0 / 9.0,
        1.0 / 11.0,
        1.0 / 13.0,
        1.0 / 15.0,
        1.0 / 17.0,
        1.0 / 19.0,
        1.0 / 21.0,
    ];
    assert!(
        x.is_normal() && x > 0.0,
        "placement ln of {x}: callers pass (0, 1]"
    );
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut poly = 0.0;
    for c in INV_ODD.iter().rev() {
        poly = (poly + c) * s2;
    }
    e as f64 * std::f64::consts::LN_2 + 2.0 * s * (1.0 + poly)
}

/// `e^x` for `x` in [-64, 0], from `+ - × /` only: `x = j·ln 2 + r` with
/// `|r| ≤ ½ ln 2`, `e^r` summed to 20th order, `2^j` put in the exponent.
pub(crate) fn exp(x: f64) -> f64 {
    assert!((-64.0..=0.0).contains(&x), "placement exp of {x}");
    // ln 2 in two parts (fdlibm's): `j × LN2_HI` is exact for |j| < 2^20.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let j = (x / std::f64::consts::LN_2).round();
    let r = (x - j * LN2_HI) - j * LN2_LO;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..=20 {
        term *= r / f64::from(i);
        sum += term;
    }
    // j in [-93, 0]: 2^j is a normal f64.
    sum * f64::from_bits(((1023 + j as i64) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_matches_std() {
        let mut h = 1u64;
        for _ in 0..100_000 {
            h = mix64(h.wrapping_add(GOLDEN));
            let x = unit(h);
            let (ours, std) = (ln(x), x.ln());
            assert!((ours - std).abs() <= 1e-15 * std.abs(), "{x}: {ours} {std}");
        }
        for x in [
            1.0,
            0.5,
            0.25,
            1e-10,
            0.999_999,
            1.0 - f64::EPSILON,
            0.01,
            0.7,
        ] {
            assert!(
                (ln(x) - x.ln()).abs() <= 1e-15 * x.ln().abs().max(1e-300),
                "{x}"
            );
        }
        assert!(ln(1.0 - f64::EPSILON / 2.0) < 0.0);
    }

    #[test]
    fn exp_matches_std() {
        let mut h = 3u64;
        for _ in 0..100_000 {
            h = mix64(h.wrapping_add(GOLDEN));
            let x = -64.0 * unit(h);
            let (ours, std) = (exp(x), x.exp());
            assert!((ours - std).abs() <= 2e-15 * std, "{x}: {ours} {std}");
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn unit_is_open_interval() {
        assert!(unit(0) > 0.0);
        assert!(unit(u64::MAX) < 1.0);
        assert!(-ln(unit(u64::MAX)) > 0.0);
    }

    /// The balancer compares stored placements with what placement says
    /// now: a changed hash would make it move every chunk. These values
    /// must never change.
    #[test]
    fn scores_are_stable() {
        let node = node_hash(b"cs-01");
        let key = key_hash(ExtentKey { lun: 7, index: 42 });
        let h = pair_hash(key, node);
        assert_eq!(
            (node, key, h, slot_hash(ExtentKey { lun: 7, index: 42 })),
            (
                1486384280045077842,
                2025629245770701360,
                12777490959948488821,
                8048522295940831218
            )
        );
        assert_eq!(score(1e12, h).to_bits(), 4792903703751810938);
        // And a digest of many scores, so that any change to the hash or
        // the logarithm (even in the last bit) shows.
        let mut digest = 0u64;
        for i in 0..10_000u64 {
            let node = node_hash(format!("node-{i}").as_bytes());
            let key = key_hash(ExtentKey {
                lun: i % 7,
                index: i,
            });
            let s = score(1.0 + (i % 13) as f64, pair_hash(key, node));
            digest = mix64(digest ^ s.to_bits());
        }
        assert_eq!(digest, 9460803130176975048);
    }
}
