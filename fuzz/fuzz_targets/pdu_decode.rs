//! `pdu::decode` on arbitrary bytes.
//!
//! Input: byte 0 chooses the codec settings, the rest is the byte stream.
//!   bit 0      HeaderDigest=CRC32C
//!   bit 1      DataDigest=CRC32C
//!   bits 2..=4 max_data_segment_len, from `MAX_SEG`
//!   bits 5..=7 chunk size for the incremental pass, from `CHUNK`
//!
//! Properties:
//! - decode never panics;
//! - every decoded PDU re-encodes (`codec::encode`) into bytes that decode
//!   to an equal PDU, consuming exactly those bytes;
//! - feeding the stream in chunks gives the same PDUs and the same final
//!   error as decoding it whole.
#![no_main]

use bytes::{BufMut, BytesMut};
use iscsi_target::pdu::codec::encode;
use iscsi_target::pdu::{decode, DigestConfig, Pdu, PduError};
use libfuzzer_sys::fuzz_target;

const MAX_SEG: [usize; 8] = [0, 1, 3, 4, 64, 255, 1024, 8192];
const CHUNK: [usize; 8] = [1, 2, 3, 7, 48, 49, 512, 4096];

/// Decodes everything `buf` holds: the PDUs, then the error or `None` if it
/// stopped for lack of bytes.
fn decode_all(buf: &mut BytesMut, cfg: &DigestConfig, out: &mut Vec<Pdu>) -> Option<PduError> {
    loop {
        match decode(buf, cfg) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stream)) = data.split_first() else { return };
    let cfg = DigestConfig {
        header_digest: sel & 1 != 0,
        data_digest: sel & 2 != 0,
        max_data_segment_len: MAX_SEG[usize::from((sel >> 2) & 7)],
    };

    // Whole stream at once.
    let mut whole = Vec::new();
    let mut buf = BytesMut::from(stream);
    let whole_err = decode_all(&mut buf, &cfg, &mut whole);

    for pdu in &whole {
        assert!(pdu.data.len() <= cfg.max_data_segment_len);
        assert_eq!(pdu.data.len(), pdu.data_segment_len());
        assert_eq!(pdu.ahs.len(), pdu.total_ahs_len());
        let wire = encode(pdu, &cfg);
        assert_eq!(wire.len() % 4, 0, "encoded PDU is not padded to 4 bytes");
        let mut again = BytesMut::from(&wire[..]);
        match decode(&mut again, &cfg) {
            Ok(Some(p)) => assert_eq!(&p, pdu, "PDU does not round-trip"),
            other => panic!("re-encoded PDU does not decode: {other:?}"),
        }
        assert!(again.is_empty(), "re-encoded PDU left {} bytes", again.len());
    }

    // The same stream in chunks, as a socket delivers it.
    let chunk = CHUNK[usize::from(sel >> 5)];
    let mut pieces = Vec::new();
    let mut buf = BytesMut::new();
    let mut piece_err = None;
    for part in stream.chunks(chunk) {
        buf.put_slice(part);
        piece_err = decode_all(&mut buf, &cfg, &mut pieces);
        if piece_err.is_some() {
            break;
        }
    }
    assert_eq!(pieces, whole, "chunked decoding differs from whole decoding");
    assert_eq!(piece_err, whole_err, "chunked decoding ends differently");
});
