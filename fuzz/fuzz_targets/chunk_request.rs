//! Chunkserver requests from untrusted bytes: the postcard header of every
//! chunk message kind and the checks on its ranges and sizes must return
//! typed errors, never panic.
//!
//! Layout: [kind low nibble][payload bytes: u32 BE][postcard header...].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let kind = 0x0300 | u16::from(data[0] & 0x0f);
    let payload = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let _ = chunkserver::service::decode_request_for_fuzz(kind, &data[5..], payload);
});
