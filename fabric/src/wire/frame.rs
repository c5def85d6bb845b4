//! The frame: the unit every fabric message travels in. Sans-IO: the codec
//! turns bytes into frames and frames into bytes; it never touches a socket
//! or a clock.
//!
//! ```text
//! offset size  field         notes
//!  0      4    magic         "WEFT"
//!  4      1    version       wire version of the message header (1)
//!  5      1    frame_type    1 request, 2 response, 3 cancel
//!  6      2    kind          message kind (see kinds.rs)
//!  8      8    request_id    chosen by the caller, unique per connection
//! 16      4    deadline_ms   request: time budget left when sent; else 0
//! 20      4    flags         bit 0 ERROR: the header is an ErrorBody
//! 24      4    header_len    bytes of postcard message header that follow
//! 28      4    payload_len   bytes of raw payload after the header
//! 32      4    crc32c        CRC32C of bytes 0..32, then of the header
//! 36      header_len    message header (postcard)
//! 36+h    payload_len   payload (raw, e.g. chunk data)
//! ```
//!
//! All integers are big-endian. These first 36 bytes (the *envelope*) keep
//! this layout in every wire version, so a node can always skip a frame of a
//! newer version and answer "unsupported version" instead of dropping the
//! connection; what a version may change is the encoding of the message
//! header and the meaning of flags.
//!
//! The CRC covers the envelope and the message header, not the payload:
//! inside TLS the AEAD already protects every byte, and chunk data carries
//! its own end-to-end CRC32C per 4 KiB block that the chunk store verifies,
//! which catches more than a per-hop check would. The header CRC catches a
//! framing bug (a desynchronised stream) before a garbage length is obeyed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::kinds::Kind;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"WEFT";

/// The wire version this build writes.
pub const WIRE_VERSION: u8 = 1;

/// The oldest wire version this build reads.
pub const WIRE_VERSION_MIN: u8 = 1;

/// Size of the fixed envelope, in bytes.
pub const ENVELOPE_BYTES: usize = 36;

/// Largest message header, in bytes. Headers are small structured metadata;
/// bulk data goes in the payload, which is not postcard-decoded.
pub const HEADER_BYTES_MAX: usize = 1 << 20;

/// Largest payload, in bytes: a whole chunk write (1 MiB) with room to grow
/// to batched or larger units.
pub const PAYLOAD_BYTES_MAX: usize = 16 << 20;

/// Largest frame, in bytes. A receiver never buffers more than this for one
/// frame, whatever the lengths in an envelope say.
pub const FRAME_BYTES_MAX: usize = ENVELOPE_BYTES + HEADER_BYTES_MAX + PAYLOAD_BYTES_MAX;

/// Frame flags. Bits not defined for a version must be zero in it; a sender
/// that needs a new bit bumps the wire version.
pub mod flags {
    /// A response whose header is an [`ErrorBody`](crate::wire::ErrorBody)
    /// rather than the kind's response message.
    pub const ERROR: u32 = 1 << 0;
    /// Every bit this version defines.
    pub const KNOWN: u32 = ERROR;
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// A call: expects exactly one response with the same request id.
    Request = 1,
    /// The answer to a request.
    Response = 2,
    /// The caller gave up on a request; the receiver may stop working on it.
    Cancel = 3,
}

impl FrameType {
    fn from_u8(v: u8) -> Option<FrameType> {
        match v {
            1 => Some(FrameType::Request),
            2 => Some(FrameType::Response),
            3 => Some(FrameType::Cancel),
            _ => None,
        }
    }
}

/// Fatal framing errors: after one of these the byte stream cannot be
/// trusted, so the connection is closed (after logging why).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:02x?} (not a weft fabric stream)")]
    BadMagic([u8; 4]),
    #[error("envelope CRC mismatch: frame says {expected:#010x}, computed {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("message header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLong { len: usize, max: usize },
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLong { len: usize, max: usize },
    #[error("unknown frame type {0}")]
    BadFrameType(u8),
    #[error("undefined flag bits {0:#x} set")]
    UnknownFlags(u32),
    #[error("stream ended inside a frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One decoded (or to-be-encoded) frame of this wire version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub frame_type: FrameType,
    pub kind: Kind,
    pub request_id: u64,
    /// Request: milliseconds of budget left when sent. 0 otherwise.
    pub deadline_ms: u32,
    pub flags: u32,
    /// postcard-encoded message header (or an `ErrorBody` if `flags::ERROR`).
    pub header: Bytes,
    /// Raw payload, carried as is.
    pub payload: Bytes,
}

impl Frame {
    /// Checks the limits a receiver enforces, so a sender finds out before
    /// the frame goes on the wire.
    pub fn check_limits(&self) -> Result<(), WireError> {
        if self.header.len() > HEADER_BYTES_MAX {
            return Err(WireError::HeaderTooLong {
                len: self.header.len(),
                max: HEADER_BYTES_MAX,
            });
        }
        if self.payload.len() > PAYLOAD_BYTES_MAX {
            return Err(WireError::PayloadTooLong {
                len: self.payload.len(),
                max: PAYLOAD_BYTES_MAX,
            });
        }
        if self.flags & !flags::KNOWN != 0 {
            return Err(WireError::UnknownFlags(self.flags & !flags::KNOWN));
        }
        Ok(())
    }

    /// Writes the envelope and message header (not the payload) into `dst`.
    /// A writer then sends the payload straight from its `Bytes`, so 1 MiB
    /// of chunk data is never copied into a staging buffer.
    pub fn encode_head(&self, dst: &mut BytesMut) -> Result<(), WireError> {
        self.check_limits()?;
        // Lengths fit in u32: both limits are far below 4 GiB.
        let header_len = self.header.len() as u32;
        let payload_len = self.payload.len() as u32;
        dst.reserve(ENVELOPE_BYTES + self.header.len());
        let start = dst.len();
        dst.put_slice(&MAGIC);
        dst.put_u8(WIRE_VERSION);
        dst.put_u8(self.frame_type as u8);
        dst.put_u16(self.kind.0);
        dst.put_u64(self.request_id);
        dst.put_u32(self.deadline_ms);
        dst.put_u32(self.flags);
        dst.put_u32(header_len);
        dst.put_u32(payload_len);
        let crc = envelope_crc(&dst[start..start + 32], &self.header);
        dst.put_u32(crc);
        dst.put_slice(&self.header);
        Ok(())
    }
}

fn envelope_crc(envelope32: &[u8], header: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(envelope32), header)
}

/// A frame whose envelope is sound but that this node cannot interpret: a
/// newer (or too old) wire version. It has been skipped; a request gets an
/// "unsupported version" error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub version: u8,
    /// Raw: a newer version may define frame types we don't know.
    pub frame_type: u8,
    pub kind: Kind,
    pub request_id: u64,
}

/// What the decoder yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    Frame(Frame),
    Unsupported(Unsupported),
}

/// Envelope fields, read before the body is buffered.
#[derive(Clone, Copy, Debug)]
struct Envelope {
    version: u8,
    frame_type: u8,
    kind: u16,
    request_id: u64,
    deadline_ms: u32,
    flags: u32,
    header_len: usize,
    payload_len: usize,
    crc: u32,
}

fn read_envelope(b: &[u8]) -> Result<Envelope, WireError> {
    // The caller guarantees b.len() >= ENVELOPE_BYTES; `get` keeps this
    // panic-free even if that ever stops being true.
    let mut buf = b
        .get(..ENVELOPE_BYTES)
        .ok_or(WireError::Truncated(b.len()))?;
    let mut magic = [0u8; 4];
    buf.copy_to_slice(&mut magic);
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = buf.get_u8();
    let frame_type = buf.get_u8();
    let kind = buf.get_u16();
    let request_id = buf.get_u64();
    let deadline_ms = buf.get_u32();
    let flags = buf.get_u32();
    let header_len = buf.get_u32() as usize;
    let payload_len = buf.get_u32() as usize;
    let crc = buf.get_u32();
    // Lengths are checked before the CRC, which needs the header bytes.
    if header_len > HEADER_BYTES_MAX {
        return Err(WireError::HeaderTooLong {
            len: header_len,
            max: HEADER_BYTES_MAX,
        });
    }
    if payload_len > PAYLOAD_BYTES_MAX {
        return Err(WireError::PayloadTooLong {
            len: payload_len,
            max: PAYLOAD_BYTES_MAX,
        });
    }
    Ok(Envelope {
        version,
        frame_type,
        kind,
        request_id,
        deadline_ms,
        flags,
        header_len,
        payload_len,
        crc,
    })
}

/// The frame codec. Stateless apart from the envelope of a frame whose body
/// is still arriving (so it is parsed once, not on every read).
#[derive(Debug, Default)]
pub struct FrameCodec {
    pending: Option<Envelope>,
}

impl FrameCodec {
    pub fn new() -> FrameCodec {
        FrameCodec::default()
    }

    /// Bytes of the frame in progress still missing (0 when between frames).
    /// Lets a reader reserve a whole 1 MiB body at once.
    pub fn missing_bytes(&self, buffered: usize) -> usize {
        match &self.pending {
            Some(env) => {
                (ENVELOPE_BYTES + env.header_len + env.payload_len).saturating_sub(buffered)
            }
            None => ENVELOPE_BYTES.saturating_sub(buffered),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Inbound;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, WireError> {
        let env = match self.pending {
            Some(env) => env,
            None => {
                if src.len() < ENVELOPE_BYTES {
                    return Ok(None);
                }
                let env = read_envelope(src)?;
                self.pending = Some(env);
                env
            }
        };
        let total = ENVELOPE_BYTES + env.header_len + env.payload_len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        self.pending = None;
        let mut frame = src.split_to(total);
        let header_end = ENVELOPE_BYTES + env.header_len;
        let actual = envelope_crc(
            frame.get(..32).unwrap_or_default(),
            frame.get(ENVELOPE_BYTES..header_end).unwrap_or_default(),
        );
        if actual != env.crc {
            return Err(WireError::CrcMismatch {
                expected: env.crc,
                actual,
            });
        }
        if !(WIRE_VERSION_MIN..=WIRE_VERSION).contains(&env.version) {
            return Ok(Some(Inbound::Unsupported(Unsupported {
                version: env.version,
                frame_type: env.frame_type,
                kind: Kind(env.kind),
                request_id: env.request_id,
            })));
        }
        let frame_type =
            FrameType::from_u8(env.frame_type).ok_or(WireError::BadFrameType(env.frame_type))?;
        if env.flags & !flags::KNOWN != 0 {
            return Err(WireError::UnknownFlags(env.flags & !flags::KNOWN));
        }
        frame.advance(ENVELOPE_BYTES);
        let header = frame.split_to(env.header_len).freeze();
        let payload = frame.freeze();
        Ok(Some(Inbound::Frame(Frame {
            frame_type,
            kind: Kind(env.kind),
            request_id: env.request_id,
            deadline_ms: env.deadline_ms,
            flags: env.flags,
            header,
            payload,
        })))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, WireError> {
        match self.decode(buf)? {
            Some(item) => Ok(Some(item)),
            None if buf.is_empty() => Ok(None),
            None => Err(WireError::Truncated(buf.len())),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    /// Encodes a whole frame into `dst` (payload copied). The RPC writer uses
    /// [`Frame::encode_head`] instead, to avoid that copy.
    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        frame.encode_head(dst)?;
        dst.extend_from_slice(&frame.payload);
        Ok(())
    }
}

/// Fuzz entry point: decodes frames from `data` until it is used up or an
/// error occurs, and decodes every known message header it finds. Never
/// panics (that is the property fuzzed). Returns how many frames decoded.
pub fn decode_frame_for_fuzz(data: &[u8]) -> Result<usize, WireError> {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(data);
    let mut n = 0;
    while let Some(item) = codec.decode_eof(&mut buf)? {
        if let Inbound::Frame(frame) = &item {
            super::messages::decode_any_header_for_fuzz(frame);
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame {
            frame_type: FrameType::Request,
            kind: Kind(0x0201),
            request_id: 0x0102_0304_0506_0708,
            deadline_ms: 1500,
            flags: 0,
            header: Bytes::from_static(b"\x01\x02\x03"),
            payload: Bytes::from_static(b"payload"),
        }
    }

    fn encode(f: &Frame) -> BytesMut {
        let mut b = BytesMut::new();
        FrameCodec::new().encode(f.clone(), &mut b).unwrap();
        b
    }

    /// Golden bytes of a version-1 frame: a change to the format breaks this
    /// test, which is the point (bump the version instead).
    #[test]
    fn golden_v1() {
        let b = encode(&sample());
        let expect_prefix: &[u8] = &[
            b'W', b'E', b'F', b'T', 1, 1, 0x02, 0x01, // magic, version, type, kind
            1, 2, 3, 4, 5, 6, 7, 8, // request id
            0, 0, 0x05, 0xdc, // deadline 1500 ms
            0, 0, 0, 0, // flags
            0, 0, 0, 3, // header len
            0, 0, 0, 7, // payload len
        ];
        assert_eq!(&b[..32], expect_prefix);
        assert_eq!(&b[36..], b"\x01\x02\x03payload");
        let crc = u32::from_be_bytes([b[32], b[33], b[34], b[35]]);
        assert_eq!(
            crc,
            crc32c::crc32c_append(crc32c::crc32c(&b[..32]), b"\x01\x02\x03")
        );
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let f = sample();
        let b = encode(&f);
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        for (i, byte) in b.iter().enumerate() {
            buf.put_u8(*byte);
            let got = codec.decode(&mut buf).unwrap();
            if i + 1 < b.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got, Some(Inbound::Frame(f.clone())));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn flipped_byte_is_refused() {
        let b = encode(&sample());
        // Flipping any envelope or header byte is caught, by magic, lengths,
        // type or CRC; payload bytes are the AEAD's and the chunk CRC's job.
        for i in 0..(ENVELOPE_BYTES + 3) {
            let mut t = b.clone();
            t[i] ^= 0x10;
            let r = FrameCodec::new().decode_eof(&mut t);
            assert!(
                !matches!(r, Ok(Some(Inbound::Frame(ref f))) if *f == sample()),
                "byte {i}: {r:?}"
            );
            assert!(r.is_err(), "byte {i}: {r:?}");
        }
    }

    #[test]
    fn truncated_is_an_error_at_eof() {
        let b = encode(&sample());
        for cut in 1..b.len() {
            let mut t = BytesMut::from(&b[..cut]);
            let r = FrameCodec::new().decode_eof(&mut t);
            assert!(
                matches!(r, Err(WireError::Truncated(_))),
                "cut {cut}: {r:?}"
            );
        }
    }

    #[test]
    fn newer_version_is_skipped_not_fatal() {
        let mut b = encode(&sample());
        b[4] = WIRE_VERSION + 1;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..32]), b"\x01\x02\x03");
        b[32..36].copy_from_slice(&crc.to_be_bytes());
        // Followed by a normal frame, which must still decode.
        b.extend_from_slice(&encode(&sample()));
        let mut codec = FrameCodec::new();
        let first = codec.decode(&mut b).unwrap();
        assert_eq!(
            first,
            Some(Inbound::Unsupported(Unsupported {
                version: WIRE_VERSION + 1,
                frame_type: 1,
                kind: Kind(0x0201),
                request_id: 0x0102_0304_0506_0708,
            }))
        );
        assert_eq!(
            codec.decode(&mut b).unwrap(),
            Some(Inbound::Frame(sample()))
        );
    }

    #[test]
    fn oversized_lengths_are_refused_before_buffering() {
        let mut b = encode(&sample());
        b[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
        let r = FrameCodec::new().decode(&mut b);
        assert!(matches!(r, Err(WireError::PayloadTooLong { .. })), "{r:?}");
        let mut b = encode(&sample());
        b[24..28].copy_from_slice(&((HEADER_BYTES_MAX + 1) as u32).to_be_bytes());
        let r = FrameCodec::new().decode(&mut b);
        assert!(matches!(r, Err(WireError::HeaderTooLong { .. })), "{r:?}");
    }

    #[test]
    fn sender_checks_limits() {
        let mut f = sample();
        f.payload = Bytes::from(vec![0u8; PAYLOAD_BYTES_MAX + 1]);
        assert!(f.encode_head(&mut BytesMut::new()).is_err());
        let mut f = sample();
        f.flags = 0x80;
        assert!(f.encode_head(&mut BytesMut::new()).is_err());
    }
}
