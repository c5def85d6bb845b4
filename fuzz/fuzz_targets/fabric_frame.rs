//! Fabric frames and message headers from untrusted bytes: decoding must
//! return errors, never panic (fabric::wire).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fabric::decode_frame_for_fuzz(data);
});
