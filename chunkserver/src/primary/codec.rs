//! Parity arithmetic. With one parity chunk (`k+1`, weft's default) the
//! parity of a row is the XOR of its data units: a partial write's parity
//! update is then the XOR of the data chunks' `old ⊕ new` deltas, and a
//! lost unit is the XOR of the others. Profiles with `m > 1` (Reed–Solomon)
//! are refused by the data path until their delta update is built.

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
}
