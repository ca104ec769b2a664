#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcptap::fuzz::http2(data));
