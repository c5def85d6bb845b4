//! Panic-free reading of CDBs and parameter lists.
//!
//! Both come from the initiator, so every access is bounds-checked: reading
//! past the end of a CDB yields zero bits (the BHS always carries 16 CDB
//! bytes, so a short CDB is one padded with zeroes), while parameter-list
//! parsers check lengths first and use [`Buf::get`].

use super::sense::SenseReason;
use super::table;

/// A big-endian byte buffer whose out-of-range reads return zero.
#[derive(Debug, Clone, Copy)]
pub struct Buf<'a>(pub &'a [u8]);

impl<'a> Buf<'a> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn u8(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    pub fn bit(&self, i: usize, bit: u8) -> bool {
        self.u8(i) & (1 << bit) != 0
    }

    fn be(&self, i: usize, n: usize) -> u64 {
        (0..n).fold(0u64, |acc, k| (acc << 8) | u64::from(self.u8(i + k)))
    }

    pub fn be16(&self, i: usize) -> u16 {
        self.be(i, 2) as u16
    }

    pub fn be24(&self, i: usize) -> u32 {
        self.be(i, 3) as u32
    }

    pub fn be32(&self, i: usize) -> u32 {
        self.be(i, 4) as u32
    }

    pub fn be64(&self, i: usize) -> u64 {
        self.be(i, 8)
    }

    /// `len` bytes at `i`, or None if the buffer is shorter.
    pub fn get(&self, i: usize, len: usize) -> Option<&'a [u8]> {
        self.0.get(i..i.checked_add(len)?)
    }
}

/// Puts a big-endian integer into the low `n` bytes of `out`.
pub fn put_be(out: &mut Vec<u8>, v: u64, n: usize) {
    for k in (0..n).rev() {
        out.push((v >> (8 * k)) as u8);
    }
}

/// Fuzzing entry point: runs the command lookup and the CDB-bit checks that
/// precede dispatch, on arbitrary bytes, without touching a device. A
/// cargo-fuzz target calls it as `let _ = parse_cdb_for_fuzz(data);`; the
/// property is that it returns (Ok or a sense reason) and never panics.
/// The full `ScsiTarget::execute` path is covered by the proptest in
/// `scsi::tests`.
pub fn parse_cdb_for_fuzz(cdb: &[u8]) -> Result<&'static str, SenseReason> {
    let spec = table::lookup(cdb)?;
    table::check_cdb_bits(spec, cdb)?;
    let b = Buf(cdb);
    // Exercise the field decoders too.
    let _ = super::rw::decode_lba_len(b);
    let _ = table::allocation_length(spec, b);
    Ok(spec.name)
}
