//! Framing of PDUs on a byte stream: header digest, AHS, data segment,
//! padding to 4 bytes, data digest (CRC32C, RFC 7143 §11.1 and Appendix B).

use super::{Pdu, BHS_LEN};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Digests negotiated for a connection, and the receive limit we declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestConfig {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The largest data segment we accept (our MaxRecvDataSegmentLength, or
    /// the login limit before it is negotiated).
    pub max_data_segment_len: usize,
}

impl Default for DigestConfig {
    fn default() -> Self {
        DigestConfig {
            header_digest: false,
            data_digest: false,
            max_data_segment_len: crate::limits::LOGIN_DATA_SEGMENT_BYTES_MAX,
        }
    }
}

/// Why bytes could not become a PDU. Each ends the connection; the ones that
/// carry the header let the connection first send a Reject naming it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    #[error("header digest mismatch (received {received:#010x}, computed {computed:#010x})")]
    HeaderDigest { received: u32, computed: u32 },
    #[error("data digest mismatch (received {received:#010x}, computed {computed:#010x})")]
    DataDigest {
        header: Box<[u8; BHS_LEN]>,
        received: u32,
        computed: u32,
    },
    #[error("data segment of {len} bytes exceeds the {max}-byte limit")]
    DataSegmentTooLong {
        header: Box<[u8; BHS_LEN]>,
        len: usize,
        max: usize,
    },
}

/// CRC32C as iSCSI uses it: the digest goes on the wire little-endian.
fn digest(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p))
}

fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Takes one whole PDU off the front of `buf`, or returns `Ok(None)` when
/// more bytes are needed. Never panics, whatever `buf` holds.
pub fn decode(buf: &mut BytesMut, cfg: &DigestConfig) -> Result<Option<Pdu>, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let mut bhs = [0u8; BHS_LEN];
    bhs.copy_from_slice(&buf[..BHS_LEN]);
    let ahs_len = usize::from(bhs[4]) * 4;
    let data_len = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
    let hd_len = if cfg.header_digest { 4 } else { 0 };
    let dd_len = if cfg.data_digest && data_len > 0 {
        4
    } else {
        0
    };
    let header_total = BHS_LEN + ahs_len + hd_len;

    // Check the header digest before trusting any length in the header.
    if buf.len() < header_total {
        return Ok(None);
    }
    if cfg.header_digest {
        let received = u32::from_le_bytes([
            buf[header_total - 4],
            buf[header_total - 3],
            buf[header_total - 2],
            buf[header_total - 1],
        ]);
        let computed = digest(&[&buf[..BHS_LEN + ahs_len]]);
        if received != computed {
            return Err(PduError::HeaderDigest { received, computed });
        }
    }
    if data_len > cfg.max_data_segment_len {
        return Err(PduError::DataSegmentTooLong {
            header: Box::new(bhs),
            len: data_len,
            max: cfg.max_data_segment_len,
        });
    }
    let padded = data_len + pad_len(data_len);
    let total = header_total + padded + dd_len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(BHS_LEN);
    let ahs = frame.split_to(ahs_len);
    frame.advance(hd_len);
    let data_padded = frame.split_to(padded);
    if dd_len > 0 {
        let received = frame.get_u32_le();
        let computed = digest(&[&data_padded]);
        if received != computed {
            return Err(PduError::DataDigest {
                header: Box::new(bhs),
                received,
                computed,
            });
        }
    }
    Ok(Some(Pdu {
        bhs,
        ahs,
        data: data_padded.slice(..data_len),
    }))
}

/// Writes the header part (BHS, AHS, header digest) into `out` and returns
/// the trailer (padding and data digest) that must follow `pdu.data`.
/// The data segment itself is not copied, so large reads go out zero-copy.
pub fn encode_header(pdu: &Pdu, cfg: &DigestConfig, out: &mut BytesMut) -> Trailer {
    let start = out.len();
    out.put_slice(&pdu.bhs);
    out.put_slice(&pdu.ahs);
    if cfg.header_digest {
        let crc = digest(&[&out[start..]]);
        out.put_u32_le(crc);
    }
    let pad = pad_len(pdu.data.len());
    let mut trailer = Trailer {
        bytes: [0; 8],
        len: pad,
    };
    if cfg.data_digest && !pdu.data.is_empty() {
        let crc = digest(&[&pdu.data, &[0u8; 3][..pad]]);
        trailer.bytes[pad..pad + 4].copy_from_slice(&crc.to_le_bytes());
        trailer.len += 4;
    }
    trailer
}

/// Padding and data digest that follow a data segment on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Trailer {
    bytes: [u8; 8],
    len: usize,
}

impl Trailer {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The whole PDU as one buffer (tests and small PDUs).
pub fn encode(pdu: &Pdu, cfg: &DigestConfig) -> Bytes {
    let mut out = BytesMut::with_capacity(BHS_LEN + pdu.ahs.len() + pdu.data.len() + 16);
    let trailer = encode_header(pdu, cfg, &mut out);
    out.put_slice(&pdu.data);
    out.put_slice(trailer.as_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Opcode;
    use proptest::prelude::*;

    fn sample(data_len: usize, ahs_words: usize) -> Pdu {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.set_itt(0x1234).set_word20(4096);
        p.set_ahs(Bytes::from(vec![0xa5; ahs_words * 4]));
        p.set_data(Bytes::from(
            (0..data_len).map(|i| i as u8).collect::<Vec<_>>(),
        ));
        p
    }

    fn cfg(h: bool, d: bool) -> DigestConfig {
        DigestConfig {
            header_digest: h,
            data_digest: d,
            max_data_segment_len: 1 << 20,
        }
    }

    #[test]
    fn round_trip_with_and_without_digests() {
        for (h, d) in [(false, false), (true, false), (false, true), (true, true)] {
            for len in [0, 1, 3, 4, 5, 8191] {
                let pdu = sample(len, 1);
                let wire = encode(&pdu, &cfg(h, d));
                assert_eq!(wire.len() % 4, 0);
                // Byte at a time: never a PDU before all bytes are there.
                let mut buf = BytesMut::new();
                for (i, b) in wire.iter().enumerate() {
                    buf.put_u8(*b);
                    let got = decode(&mut buf, &cfg(h, d)).unwrap();
                    if i + 1 < wire.len() {
                        assert!(got.is_none());
                    } else {
                        assert_eq!(got.unwrap(), pdu);
                    }
                }
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn known_crc32c_vector() {
        // RFC 3720 B.4: 32 bytes of zeroes.
        assert_eq!(digest(&[&[0u8; 32]]), 0x8a9136aa);
    }

    #[test]
    fn bad_digests_are_errors() {
        let pdu = sample(100, 0);
        let mut wire = BytesMut::from(&encode(&pdu, &cfg(true, true))[..]);
        wire[60] ^= 1; // in the data segment
        assert!(matches!(
            decode(&mut wire.clone(), &cfg(true, true)),
            Err(PduError::DataDigest { .. })
        ));
        wire[3] ^= 1; // in the BHS
        assert!(matches!(
            decode(&mut wire, &cfg(true, true)),
            Err(PduError::HeaderDigest { .. })
        ));
    }

    #[test]
    fn oversized_data_segment_is_refused_before_buffering() {
        let mut p = Pdu::new(Opcode::DataOut);
        p.bhs[5] = 0xff; // 16 MiB claimed, nothing sent
        let mut buf = BytesMut::from(&p.bhs[..]);
        assert!(matches!(
            decode(&mut buf, &cfg(false, false)),
            Err(PduError::DataSegmentTooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), h: bool, d: bool) {
            let mut buf = BytesMut::from(&bytes[..]);
            let c = DigestConfig { header_digest: h, data_digest: d, max_data_segment_len: 256 };
            while let Ok(Some(_)) = decode(&mut buf, &c) {}
        }
    }
}
