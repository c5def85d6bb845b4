//! Parity arithmetic. The profile fixes the code of every stripe (there
//! is no per-stripe codec id: a new code needs one):
//!
//! - `m = 1` (weft's default): parity is the XOR of the row's data units.
//!   A partial write's parity update is the XOR of the data chunks'
//!   `old ⊕ new` deltas; a lost unit is the XOR of the others. (The
//!   Reed–Solomon crate's `m = 1` parity is not XOR, so it is not used
//!   here: XOR costs nothing to check by hand.)
//! - `m ≥ 2`: Reed–Solomon over GF(2⁸) with `reed-solomon-erasure` 6's
//!   systematic matrix. Parity chunk `p` is `Σ c[p][i]·d[i]`, so a write
//!   of `Δ = old ⊕ new` to data chunk `i` changes it by `c[p][i]·Δ`: the
//!   same delta update, one multiply per parity chunk. Any `k` of the
//!   `k+m` chunks rebuild the rest. The matrix is part of the on-disk
//!   format: the crate's version is pinned to 6.x for it.

use reed_solomon_erasure::galois_8::{self, ReedSolomon};

/// Why a stripe could not be coded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("a {k}+{m} profile is not supported: {why}")]
    Profile { k: u8, m: u8, why: String },
    #[error("{have} of the stripe's chunks are readable; {need} are needed to rebuild it")]
    TooFewChunks { have: usize, need: usize },
    #[error("chunk ranges of different lengths in one stripe")]
    Lengths,
}

/// The code of one profile (`k` data chunks, `m` parity chunks).
pub struct Codec {
    k: usize,
    m: usize,
    /// `None` for `m ≤ 1`.
    rs: Option<ReedSolomon>,
    /// `coef[p][i]`: parity chunk `p`'s coefficient of data chunk `i`.
    coef: Vec<Vec<u8>>,
}

impl Codec {
    pub fn new(k: u8, m: u8) -> Result<Codec, CodecError> {
        let bad = |why: &str| CodecError::Profile {
            k,
            m,
            why: why.to_owned(),
        };
        let (ku, mu) = (usize::from(k), usize::from(m));
        if k == 0 {
            return Err(bad("no data chunk"));
        }
        if m <= 1 {
            return Ok(Codec {
                k: ku,
                m: mu,
                rs: None,
                coef: vec![vec![1; ku]; mu],
            });
        }
        rs_cpu_check().map_err(|why| bad(&why))?;
        let rs = ReedSolomon::new(ku, mu).map_err(|e| bad(&format!("{e:?}")))?;
        // Each data chunk's coefficients: the parity of a unit vector.
        let mut coef = vec![vec![0u8; ku]; mu];
        for i in 0..ku {
            let mut parity = vec![[0u8; 1]; mu];
            rs.encode_single_sep(i, &[1u8], &mut parity)
                .map_err(|e| bad(&format!("{e:?}")))?;
            for (row, out) in coef.iter_mut().zip(&parity) {
                row[i] = out[0];
            }
        }
        Ok(Codec {
            k: ku,
            m: mu,
            rs: Some(rs),
            coef,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn m(&self) -> usize {
        self.m
    }

    /// The `m` parity units of data units `data` (all of one length).
    pub fn parity(&self, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, CodecError> {
        let n = data.first().map_or(0, |d| d.len());
        if data.len() != self.k || data.iter().any(|d| d.len() != n) {
            return Err(CodecError::Lengths);
        }
        let mut parity = vec![vec![0u8; n]; self.m];
        match &self.rs {
            None => {
                for p in &mut parity {
                    for d in data {
                        xor_into(p, d);
                    }
                }
            }
            Some(rs) => rs
                .encode_sep(data, &mut parity)
                .map_err(|_| CodecError::Lengths)?,
        }
        Ok(parity)
    }

    /// `acc ^= c[p][i]·delta`: what a change `delta` (`old ⊕ new`) of data
    /// chunk `i` does to parity chunk `p` (both 0-based among their kind).
    pub fn fold_delta(&self, p: usize, i: usize, delta: &[u8], acc: &mut [u8]) {
        let c = self
            .coef
            .get(p)
            .and_then(|row| row.get(i))
            .copied()
            .unwrap_or(0);
        let n = acc.len().min(delta.len());
        match c {
            0 => {}
            1 => xor_into(&mut acc[..n], &delta[..n]),
            c => galois_8::mul_slice_xor(c, &delta[..n], &mut acc[..n]),
        }
    }

    /// Data unit `out` as each parity unit present in `stripe` (the
    /// stripe's `k+m` units over one range; `out` and absent parity
    /// `None`) gives it with the other data units, if at least two do and
    /// all give the same: the stripe is then consistent whatever `out`
    /// held. `None` if they disagree (one parity unit took a change another
    /// did not, or a data unit took one no parity did) or fewer than two
    /// parity units are present: nothing can tell.
    pub fn solve_if_agreed(&self, stripe: &[Option<Vec<u8>>], out: usize) -> Option<Vec<u8>> {
        let present: Vec<usize> = (self.k..self.k + self.m)
            .filter(|p| stripe.get(*p).is_some_and(Option::is_some))
            .collect();
        if out >= self.k || present.len() < 2 {
            return None;
        }
        let mut solved: Option<Vec<u8>> = None;
        for &p in &present {
            let mut shards: Vec<Option<Vec<u8>>> = stripe
                .iter()
                .enumerate()
                .map(|(s, d)| {
                    if (s < self.k && s != out) || s == p {
                        d.clone()
                    } else {
                        None
                    }
                })
                .collect();
            self.rebuild(&mut shards).ok()?;
            let x = shards.get_mut(out).and_then(Option::take)?;
            match &solved {
                None => solved = Some(x),
                Some(y) if *y == x => {}
                Some(_) => return None,
            }
        }
        solved
    }

    /// Fills every `None` of `shards` (the stripe's `k+m` units over one
    /// range, data then parity) from the others: at least `k` must be
    /// present, all of one length.
    pub fn rebuild(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), CodecError> {
        let have = shards.iter().filter(|s| s.is_some()).count();
        if shards.len() != self.k + self.m || have < self.k {
            return Err(CodecError::TooFewChunks { have, need: self.k });
        }
        if have == shards.len() {
            return Ok(());
        }
        let n = shards.iter().flatten().next().map_or(0, |s| s.len());
        if shards.iter().flatten().any(|s| s.len() != n) {
            return Err(CodecError::Lengths);
        }
        match &self.rs {
            None => {
                // m ≤ 1 and at least k present: exactly one is missing.
                let mut acc = vec![0u8; n];
                for s in shards.iter().flatten() {
                    xor_into(&mut acc, s);
                }
                if let Some(slot) = shards.iter_mut().find(|s| s.is_none()) {
                    *slot = Some(acc);
                }
                Ok(())
            }
            Some(rs) => rs
                .reconstruct(shards)
                .map_err(|_| CodecError::TooFewChunks { have, need: self.k }),
        }
    }
}

/// `reed-solomon-erasure`'s C kernel is built for AVX2 (`-march=haswell`)
/// whatever the target says, and is not chosen at run time: on a CPU
/// without it a Reed–Solomon profile would die of SIGILL, so it is
/// refused with this reason instead.
fn rs_cpu_check() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx2") {
        return Err("Reed–Solomon (m > 1) needs a CPU with AVX2 in this build".into());
    }
    Ok(())
}

/// `acc ^= src` over the shorter of the two.
pub fn xor_into(acc: &mut [u8], src: &[u8]) {
    let n = acc.len().min(src.len());
    let (a8, a_rest) = acc[..n].split_at_mut(n - n % 8);
    let (s8, s_rest) = src[..n].split_at(n - n % 8);
    for (a, s) in a8.chunks_exact_mut(8).zip(s8.chunks_exact(8)) {
        let mut x = [0u8; 8];
        x.copy_from_slice(a);
        let mut y = [0u8; 8];
        y.copy_from_slice(s);
        a.copy_from_slice(&(u64::from_ne_bytes(x) ^ u64::from_ne_bytes(y)).to_ne_bytes());
    }
    for (a, s) in a_rest.iter_mut().zip(s_rest) {
        *a ^= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_solved_only_when_every_parity_chunk_agrees() {
        let (k, m, n) = (3usize, 2usize, 64usize);
        let c = Codec::new(k as u8, m as u8).unwrap();
        let data: Vec<Vec<u8>> = (0..k)
            .map(|i| (0..n).map(|x| (x * 31 + i * 7 + 1) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
        let parity = c.parity(&refs).unwrap();
        let stripe = |data: &[Vec<u8>], parity: &[Vec<u8>]| -> Vec<Option<Vec<u8>>> {
            data.iter().chain(parity).cloned().map(Some).collect()
        };
        // Consistent, chunk 1 out: both parity chunks give its contents.
        let mut s = stripe(&data, &parity);
        s[1] = None;
        assert_eq!(c.solve_if_agreed(&s, 1), Some(data[1].clone()));
        // Chunk 0 took a write whose delta reached the first parity chunk
        // only: they disagree on chunk 1.
        let mut d2 = data.clone();
        d2[0][5] ^= 0x5a;
        let mut p2 = parity.clone();
        let mut delta = vec![0u8; n];
        delta[5] = 0x5a;
        c.fold_delta(0, 0, &delta, &mut p2[0]);
        let mut s = stripe(&d2, &p2);
        s[1] = None;
        assert_eq!(
            c.solve_if_agreed(&s, 1),
            None,
            "one parity chunk missed a delta"
        );
        // The same write reached no parity chunk: they agree with each
        // other but not with chunk 0, and still disagree on chunk 1.
        let mut s = stripe(&d2, &parity);
        s[1] = None;
        assert_eq!(
            c.solve_if_agreed(&s, 1),
            None,
            "a data chunk took a write no parity did"
        );
        // With both deltas the stripe is consistent again.
        c.fold_delta(1, 0, &delta, &mut p2[1]);
        let mut s = stripe(&d2, &p2);
        s[1] = None;
        assert_eq!(c.solve_if_agreed(&s, 1), Some(data[1].clone()));
        // One parity chunk present: nothing to compare.
        s[4] = None;
        assert_eq!(c.solve_if_agreed(&s, 1), None);
    }

    #[test]
    fn xor_is_its_own_inverse_at_every_length() {
        for n in [0usize, 1, 7, 8, 9, 4096, 4099] {
            let a: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let b: Vec<u8> = (0..n).map(|i| (i * 13 + 1) as u8).collect();
            let mut x = a.clone();
            xor_into(&mut x, &b);
            assert!(x.iter().zip(&a).zip(&b).all(|((x, a), b)| *x == a ^ b));
            xor_into(&mut x, &b);
            assert_eq!(x, a);
        }
    }

    fn units(k: usize, n: usize, seed: usize) -> Vec<Vec<u8>> {
        (0..k)
            .map(|i| {
                (0..n)
                    .map(|j| ((i + 1) * 31 + j * 7 + seed) as u8)
                    .collect()
            })
            .collect()
    }

    /// For every profile: parity updated by deltas equals parity
    /// recomputed, and any `m` lost units come back from the rest.
    #[test]
    fn deltas_match_recomputed_parity_and_any_m_losses_rebuild() {
        for (k, m) in [(1u8, 1u8), (3, 1), (2, 2), (3, 2), (4, 2), (4, 3)] {
            let c = Codec::new(k, m).unwrap();
            let (ku, mu) = (k as usize, m as usize);
            let old = units(ku, 4100, 1);
            let refs: Vec<&[u8]> = old.iter().map(|u| &u[..]).collect();
            let mut parity = c.parity(&refs).unwrap();
            // Data unit 0 changes; its parity moves by its delta.
            let mut new = old.clone();
            for (j, b) in new[0].iter_mut().enumerate().skip(100).take(700) {
                *b ^= (j as u8).wrapping_mul(3) | 1;
            }
            let mut delta = old[0].clone();
            xor_into(&mut delta, &new[0]);
            for (p, par) in parity.iter_mut().enumerate() {
                c.fold_delta(p, 0, &delta, par);
            }
            let refs: Vec<&[u8]> = new.iter().map(|u| &u[..]).collect();
            assert_eq!(parity, c.parity(&refs).unwrap(), "{k}+{m}");
            let stripe: Vec<Vec<u8>> = new.iter().chain(parity.iter()).cloned().collect();
            // Every set of m lost units, as a bit mask over the width.
            let w = ku + mu;
            for mask in 0u32..(1 << w) {
                if mask.count_ones() as usize != mu {
                    continue;
                }
                let mut shards: Vec<Option<Vec<u8>>> = stripe
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (mask & (1 << i) == 0).then(|| s.clone()))
                    .collect();
                c.rebuild(&mut shards).unwrap();
                let back: Vec<Vec<u8>> = shards.into_iter().flatten().collect();
                assert_eq!(back, stripe, "{k}+{m}, lost {mask:b}");
            }
            // One more loss than m cannot be rebuilt.
            let mut shards: Vec<Option<Vec<u8>>> = stripe.iter().cloned().map(Some).collect();
            for s in shards.iter_mut().take(mu + 1) {
                *s = None;
            }
            assert!(matches!(
                c.rebuild(&mut shards),
                Err(CodecError::TooFewChunks { .. })
            ));
        }
    }

    #[test]
    fn one_parity_chunk_is_plain_xor() {
        let c = Codec::new(3, 1).unwrap();
        let d = units(3, 64, 5);
        let refs: Vec<&[u8]> = d.iter().map(|u| &u[..]).collect();
        let mut x = d[0].clone();
        xor_into(&mut x, &d[1]);
        xor_into(&mut x, &d[2]);
        assert_eq!(c.parity(&refs).unwrap(), vec![x]);
    }
}
