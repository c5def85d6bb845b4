//! Property tests of the frame codec: round trips, and never panicking on
//! arbitrary bytes.

use bytes::{Bytes, BytesMut};
use fabric::wire::{
    decode_frame_for_fuzz, flags, Frame, FrameCodec, FrameType, Inbound, Kind, ENVELOPE_BYTES,
};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![
            Just(FrameType::Request),
            Just(FrameType::Response),
            Just(FrameType::Cancel)
        ],
        any::<u16>(),
        any::<u64>(),
        any::<u32>(),
        prop_oneof![Just(0u32), Just(flags::ERROR)],
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..5000),
    )
        .prop_map(
            |(frame_type, kind, request_id, deadline_ms, flags, header, payload)| Frame {
                frame_type,
                kind: Kind(kind),
                request_id,
                deadline_ms,
                flags,
                header: Bytes::from(header),
                payload: Bytes::from(payload),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of frames survives encoding, arbitrary splitting into
    /// reads, and decoding.
    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(arb_frame(), 1..5),
                         cuts in proptest::collection::vec(1usize..3000, 0..20)) {
        let mut wire = BytesMut::new();
        let mut codec = FrameCodec::new();
        for f in &frames {
            codec.encode(f.clone(), &mut wire).unwrap();
        }
        let wire = wire.freeze();
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        let mut pos = 0;
        let mut cuts = cuts.into_iter();
        while pos < wire.len() {
            let n = cuts.next().unwrap_or(wire.len()).min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                got.push(item);
            }
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        let want: Vec<Inbound> = frames.into_iter().map(Inbound::Frame).collect();
        prop_assert_eq!(got, want);
    }

    /// Random bytes never panic the decoder.
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_frame_for_fuzz(&data);
    }

    /// Nor do frames with a valid magic and CRC but random fields, which
    /// get past the first checks.
    #[test]
    fn plausible_envelopes_never_panic(mut env in proptest::collection::vec(any::<u8>(), ENVELOPE_BYTES),
                                        tail in proptest::collection::vec(any::<u8>(), 0..600),
                                        small_lens in any::<bool>()) {
        env[..4].copy_from_slice(b"WEFT");
        if small_lens {
            // Lengths that fit in the tail, so the body gets decoded.
            let h = (env[27] as usize % 64).min(tail.len());
            let p = (env[31] as usize % 64).min(tail.len() - h);
            env[24..28].copy_from_slice(&(h as u32).to_be_bytes());
            env[28..32].copy_from_slice(&(p as u32).to_be_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&env[..32]), &tail[..h]);
            env[32..36].copy_from_slice(&crc.to_be_bytes());
        }
        let mut data = env;
        data.extend_from_slice(&tail);
        let _ = decode_frame_for_fuzz(&data);
    }
}
